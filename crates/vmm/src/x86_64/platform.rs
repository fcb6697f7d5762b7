//! The x86_64 side of building a VM: the in-kernel irqchip and PIT, legacy
//! devices on port I/O (COM1, i8042, ACPI PM), ACPI tables, the Linux boot
//! protocols and each vCPU's CPUID/MSR/register setup.

use std::fs::File;
use std::sync::{Arc, Mutex};

use arch::x86_64::{acpi, boot, e820, layout, regs};
use devices::acpi_pm::AcpiPm;
use devices::i8042::I8042;
use devices::serial::SerialDevice;
use devices::Bus;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use super::describe_registers;
use super::{setup_vcpu, HostCpu};
use crate::config::{Payload, VmConfig};
use crate::exit::ExitSignal;
use crate::pci_segment::PciSegment;
use crate::{Error, Result};

pub use arch::x86_64::layout::MemoryLayout;

/// First GSI for MSI routes (0-23 are IOAPIC pins).
pub const MSI_GSI_START: u32 = layout::MSI_GSI_START;
/// The serial port's GSI.
pub const SERIAL_GSI: u32 = layout::COM1_IRQ;
/// PCI ECAM base.
pub const PCI_ECAM_START: u64 = layout::PCI_ECAM_START;
/// 32-bit PCI MMIO window.
pub const PCI_MMIO32: (u64, u64) = (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
/// Whether PCI configuration is also reachable through ports 0xcf8/0xcfc.
pub const PCI_CONFIG_PORTS: bool = true;
/// Ports whose writes KVM queues instead of exiting (`coalesced_io`):
/// CONFIG_ADDRESS (0xcf8-0xcfb), a latch read back only through an exit.
/// (0xcf9 lies inside; Caravel gives it no meaning, so nothing is delayed.)
pub const COALESCED_PORTS: &[(u16, u32)] = &[(0xcf8, 4)];

/// The device ID an MSI carries: none on x86 (the IOAPIC/LAPIC path needs none).
pub fn msi_devid(_devfn: pci::DevFn) -> Option<u32> {
    None
}

/// What the platform keeps for the life of the VM.
pub struct Platform {
    host: HostCpu,
}

/// Most vCPUs this platform supports (the MADT uses 8-bit APIC IDs).
pub fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus().min(254)
}

/// Creates what must exist before vCPUs and devices (irqchip, PIT).
pub fn setup_vm(kvm: &Kvm, vm: &VmFd) -> Result<()> {
    super::setup_vm(kvm, vm)
}

fn open_payload_file(path: &std::path::Path, option: &'static str) -> Result<File> {
    File::open(path)
        .map_err(|e| Error::config(option, format!("cannot open {}: {e}", path.display())))
}

/// Puts COM1, the i8042 (reset) and the ACPI PM block on the port bus.
pub fn legacy_devices(
    pio: &Bus,
    _mmio: &Bus,
    serial: Arc<Mutex<SerialDevice>>,
    exit: Arc<ExitSignal>,
) -> Result<()> {
    let insert = |dev, base: u16, len: u16, what: &str| {
        pio.insert(dev, u64::from(base), u64::from(len))
            .map_err(|e| Error::Memory(format!("cannot place {what}: {e}")))
    };
    insert(serial, layout::COM1_PORT, 8, "COM1")?;
    insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        layout::I8042_DATA_PORT,
        5,
        "i8042",
    )?;
    let pm = AcpiPm::new(exit, acpi::S5_SLEEP_TYPE, layout::ACPI_RESET_VALUE);
    insert(
        Arc::new(Mutex::new(pm)),
        layout::ACPI_PM_PORT,
        layout::ACPI_PM_PORT_LEN,
        "ACPI PM",
    )?;
    Ok(())
}

/// Creates the vCPUs (their state is set in [`boot`]).
pub fn create_vcpus(kvm: &Kvm, vm: &VmFd, nr: u8) -> Result<(Vec<VcpuFd>, Platform)> {
    let host = HostCpu::probe(kvm)?;
    let vcpus = (0..nr)
        .map(|id| {
            vm.create_vcpu(u64::from(id))
                .map_err(Error::kvm("KVM_CREATE_VCPU"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((vcpus, Platform { host }))
}

/// Writes the ACPI tables and the payload, and sets every vCPU up.
pub fn boot(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_layout: &MemoryLayout,
    pci: &PciSegment,
    vcpus: &[VcpuFd],
    platform: &mut Platform,
) -> Result<()> {
    let acpi_cfg = acpi::AcpiConfig {
        nr_vcpus: u32::from(cfg.cpus.boot_vcpus),
        dsdt_extra: pci::aml::dsdt(pci.layout()),
        extra_tables: vec![pci::aml::mcfg(
            pci.layout(),
            acpi::OEM_ID,
            acpi::OEM_TABLE_ID,
        )],
    };
    let (mode, entry) = load_payload(cfg, mem, mem_layout, &acpi_cfg)?;
    let nr = vcpus.len() as u8;
    for (id, vcpu) in vcpus.iter().enumerate() {
        let boot = (id == 0).then_some((mode, entry));
        setup_vcpu(vcpu, &platform.host, id as u8, nr, boot)?;
    }
    Ok(())
}

/// Sets every vCPU up as [`boot`] does (CPUID and the vCPU's fixed setup)
/// but loads nothing: a restore brings memory and registers.
pub fn prepare_restore(vcpus: &[VcpuFd], platform: &mut Platform) -> Result<()> {
    let nr = vcpus.len() as u8;
    for (id, vcpu) in vcpus.iter().enumerate() {
        setup_vcpu(vcpu, &platform.host, id as u8, nr, None)?;
    }
    Ok(())
}

/// Loads the kernel (or raw test code) and writes every boot structure.
fn load_payload(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_layout: &layout::MemoryLayout,
    acpi_cfg: &acpi::AcpiConfig,
) -> Result<(regs::EntryMode, u64)> {
    let acpi_tables = acpi::build(acpi_cfg).map_err(|e| Error::Memory(e.to_string()))?;
    let too_small = |what: &str| {
        Error::config(
            "--memory",
            format!(
                "size={} is too small to hold the {what}",
                arch::format_size(cfg.memory.size)
            ),
        )
    };
    acpi_tables
        .write(mem)
        .map_err(|_| too_small("ACPI tables"))?;

    match &cfg.payload {
        Payload::Raw(raw) => {
            regs::write_boot_tables(mem, regs::EntryMode::Linux64)
                .map_err(|_| too_small("page tables"))?;
            for (addr, bytes) in &raw.segments {
                mem.write_slice(bytes, GuestAddress(*addr))
                    .map_err(|_| too_small("test code"))?;
            }
            Ok((regs::EntryMode::Linux64, raw.entry))
        }
        Payload::Linux(linux) => {
            let mut kernel_file = open_payload_file(&linux.kernel, "--kernel")?;
            let kernel = boot::load_kernel(mem, &mut kernel_file).map_err(|e| match e {
                boot::BootError::KernelTooBig(m) => Error::config(
                    "--memory",
                    format!("the kernel does not fit ({m}); give the guest more memory"),
                ),
                e => Error::config("--kernel", format!("{}: {e}", linux.kernel.display())),
            })?;
            let initramfs = match &linux.initramfs {
                Some(path) => {
                    let mut f = open_payload_file(path, "--initramfs")?;
                    Some(
                        boot::load_initramfs(mem, mem_layout, &kernel, &mut f)
                            .map_err(|e| Error::config("--initramfs", e.to_string()))?,
                    )
                }
                None => None,
            };
            boot::write_cmdline(mem, &linux.cmdline, kernel.cmdline_max())
                .map_err(|e| Error::config("--cmdline", e.to_string()))?;
            regs::write_boot_tables(mem, kernel.mode).map_err(|_| too_small("page tables"))?;
            let map = e820::build(mem_layout);
            let info = boot::BootInfo {
                kernel: &kernel,
                cmdline_len: linux.cmdline.len(),
                initramfs,
                e820: &map,
                rsdp: acpi_tables.rsdp_addr(),
            };
            match kernel.mode {
                regs::EntryMode::Pvh => boot::write_pvh_start_info(mem, &info),
                regs::EntryMode::Linux64 => boot::write_zero_page(mem, &info),
            }
            .map_err(|e| Error::Memory(e.to_string()))?;
            Ok((kernel.mode, kernel.entry))
        }
    }
}

/// The console UART: COM1: a 16550A (`console=ttyS0`).
pub fn serial_device(
    interrupt: vmm_sys_util::eventfd::EventFd,
    input_wanted: Arc<vmm_sys_util::eventfd::EventFd>,
    out: devices::serial::SerialOutput,
) -> SerialDevice {
    SerialDevice::new(interrupt, input_wanted, out)
}
