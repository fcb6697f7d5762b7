//! Hardware access: MMIO, system registers, the UART, PSCI and the counter.

use core::arch::asm;
use core::fmt::{self, Write};

use crate::layout::UART_START;

// Device registers are accessed with plain LDR/STR from inline assembly:
// the compiler could otherwise pick a load pair or a writeback addressing
// mode, which leave no instruction syndrome for KVM to emulate the access
// (KVM_RUN then fails with ENOSYS).

/// Reads a 32-bit device register.
pub fn read32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: callers pass register addresses of Caravel's memory map (GIC,
    // ITS), identity-mapped as device memory by boot.s.
    unsafe { asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

/// Writes a 32-bit device register.
pub fn write32(addr: u64, v: u32) {
    // SAFETY: as in `read32`.
    unsafe { asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// Reads a 64-bit device register.
pub fn read64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: as in `read32`.
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

/// Writes a 64-bit device register.
pub fn write64(addr: u64, v: u64) {
    // SAFETY: as in `read32`.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// Reads a system register by name.
#[macro_export]
macro_rules! read_sysreg {
    ($r:literal) => {{
        let v: u64;
        // SAFETY: reading a system register has no memory effects.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $r), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

/// Writes a system register by name, then synchronises the context.
#[macro_export]
macro_rules! write_sysreg {
    ($r:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the registers written (GIC CPU interface) control interrupt
        // delivery only, never this program's memory.
        unsafe { core::arch::asm!(concat!("msr ", $r, ", {}"), "isb", in(reg) v, options(nostack)) };
    }};
}

/// Orders memory writes before a following device access.
pub fn dsb() {
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack)) }
}

/// The CPU's index (boot.s keeps it in TPIDR_EL1).
pub fn cpu_index() -> usize {
    read_sysreg!("tpidr_el1") as usize
}

/// Unmasks IRQs.
pub fn enable_irqs() {
    // SAFETY: the IRQ vector (boot.s) saves what it clobbers.
    unsafe { asm!("msr daifclr, #2", options(nostack)) }
}

/// Waits for an interrupt.
pub fn wfi() {
    // SAFETY: only suspends the CPU.
    unsafe { asm!("wfi", options(nostack)) }
}

/// Microseconds since the counter started (the virtual counter survives
/// migration: the host restores its offset).
pub fn now_us() -> u64 {
    let freq = read_sysreg!("cntfrq_el0").max(1);
    let cnt = read_sysreg!("cntvct_el0");
    ((cnt as u128) * 1_000_000 / freq as u128) as u64
}

/// Spins for `us` microseconds.
pub fn delay_us(us: u64) {
    let end = now_us() + us;
    while now_us() < end {
        core::hint::spin_loop();
    }
}

/// PL011 data register.
const UART_DR: u64 = UART_START;
/// PL011 flag register: TXFF (bit 5), RXFE (bit 4).
const UART_FR: u64 = UART_START + 0x18;

fn uart_putc(c: u8) {
    while read32(UART_FR) & (1 << 5) != 0 {}
    write32(UART_DR, u32::from(c));
}

/// Waits for a byte on the UART.
pub fn uart_getc() -> u8 {
    while read32(UART_FR) & (1 << 4) != 0 {
        delay_us(1000);
    }
    read32(UART_DR) as u8
}

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(uart_putc);
        Ok(())
    }
}

/// Prints a line on the UART.
pub fn println(args: fmt::Arguments) {
    let _ = Uart.write_fmt(args);
    uart_putc(b'\n');
}

/// A PSCI call through HVC (SMCCC).
pub fn psci(fid: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: u64;
    // SAFETY: an SMCCC call to KVM's PSCI; the registers it may clobber are
    // declared; it touches no memory of this program.
    unsafe {
        asm!("hvc #0",
            inout("x0") fid => ret, inout("x1") a1 => _, inout("x2") a2 => _,
            inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
            out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack))
    }
    ret as i64
}

/// PSCI CPU_ON (64-bit): starts `mpidr` at `entry` with x0 = `context`.
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> i64 {
    psci(0xc400_0003, mpidr, entry, context)
}

/// PSCI SYSTEM_OFF: the VMM ends the VM.
pub fn system_off() -> ! {
    psci(0x8400_0008, 0, 0, 0);
    loop {
        wfi();
    }
}
