//! Caravel's `-g its`: a bare-metal arm64 guest that tests the GICv3 ITS of
//! the VM it runs in, the way kvm-unit-tests tests KVM's (its-introspection,
//! its-trigger and the three migration cases), and prints TAP on the UART.
//!
//! The test group is the command line (`/chosen/bootargs`). A migration
//! test prints `Now migrate the VM, then press a key to continue...` and
//! waits for a byte on the UART: the host saves the VM, restores it into a
//! new one and sends the key. At the end the guest powers off through PSCI.

#![no_std]
#![no_main]

mod fdt;
mod gic;
mod hw;
mod its;
mod layout;
mod tap;
mod tests;

core::arch::global_asm!(include_str!("boot.s"));

/// Most vCPUs the guest drives (stacks and statistics are sized for them).
pub const MAX_CPUS: usize = 8;

/// The Rust entry of every CPU: `cpu` is its index, `dtb` the device tree
/// (CPU 0 only).
#[unsafe(no_mangle)]
extern "C" fn rust_entry(cpu: u64, dtb: u64) -> ! {
    if cpu == 0 {
        let group = fdt::bootargs(dtb).unwrap_or(b"");
        tests::run(group);
        hw::system_off();
    }
    gic::cpu_interface_init();
    tests::secondary_online(cpu as usize);
    hw::enable_irqs();
    loop {
        hw::wfi();
    }
}

/// Any exception but an IRQ at EL1: report it and stop the VM.
#[unsafe(no_mangle)]
extern "C" fn unexpected_exception(esr: u64, elr: u64, far: u64) -> ! {
    hw::println(format_args!(
        "Bail out! CPU {}: unexpected exception ESR {esr:#x} ELR {elr:#x} FAR {far:#x}",
        hw::cpu_index()
    ));
    hw::system_off();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hw::println(format_args!("Bail out! CPU {}: {info}", hw::cpu_index()));
    hw::system_off();
}
