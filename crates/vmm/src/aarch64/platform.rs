//! The aarch64 side of building a VM.
//!
//! * vCPUs: `KVM_ARM_PREFERRED_TARGET` + PSCI 0.2; all but the first start
//!   powered off, and the guest starts them with PSCI `CPU_ON` (handled in
//!   KVM). PSCI `SYSTEM_OFF`/`SYSTEM_RESET` reach Caravel as
//!   `KVM_EXIT_SYSTEM_EVENT`.
//! * Interrupts: the in-kernel GICv3 (distributor, one redistributor per
//!   vCPU) and its ITS; PCI MSIs carry the requester ID as ITS device ID.
//! * The UART is a PL011 on MMIO (SPI 1); there are no port-I/O devices.
//! * Boot: an arm64 `Image` at the start of RAM, the initramfs below the
//!   device tree, which sits in the last 2 MiB of RAM; x0 = its address.

use std::fs::File;
use std::sync::{Arc, Mutex};

use arch::aarch64::fdt::{self, FdtConfig};
use arch::aarch64::layout::{self, align_up};
use arch::aarch64::regs;
use devices::serial::SerialDevice;
use devices::Bus;
use its::kvm::{DeviceAttrs, KvmIts};
use kvm_bindings::{
    kvm_create_device, kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{Cap, DeviceFd, Kvm, VcpuFd, VmFd};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{Payload, VmConfig};
use crate::exit::ExitSignal;
use crate::pci_segment::PciSegment;
use crate::{Error, Result};

pub use arch::aarch64::layout::MemoryLayout;

/// First GSI for MSI routes (0..32 are SPIs).
pub const MSI_GSI_START: u32 = layout::MSI_GSI_START;
/// The UART's GSI (= its SPI).
pub const SERIAL_GSI: u32 = layout::UART_SPI;
/// PCI ECAM base.
pub const PCI_ECAM_START: u64 = layout::PCI_ECAM_START;
/// 32-bit PCI MMIO window.
pub const PCI_MMIO32: (u64, u64) = (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
/// No port I/O on arm64.
pub const PCI_CONFIG_PORTS: bool = false;
/// Ports whose writes KVM queues instead of exiting: none (no port I/O).
pub const COALESCED_PORTS: &[(u16, u32)] = &[];
/// `KVM_DEV_TYPE_ARM_VGIC_V3`
const DEV_TYPE_VGIC_V3: u32 = 7;
/// Interrupts the distributor handles: SGIs, PPIs and 96 SPIs.
pub(crate) const GIC_NR_IRQS: u64 = 128;

/// The device ID an MSI carries through the ITS: the requester ID (bus 0).
pub fn msi_devid(devfn: pci::DevFn) -> Option<u32> {
    Some(u32::from(devfn.0))
}

/// The GIC and ITS, kept for the VM's life and for ITS save/restore.
pub struct Platform {
    /// The GICv3 device.
    pub gic: DeviceFd,
    /// The ITS.
    pub its: KvmIts<DeviceFd>,
    /// Each vCPU's MPIDR_EL1 (read at boot).
    pub mpidrs: Vec<u64>,
}

/// `KVM_DEV_ARM_VGIC_GRP_REDIST_REGS`
const GRP_REDIST_REGS: u32 = 5;
const GICR_CTLR: u64 = 0x0;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;

/// One redistributor's LPI registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedistState {
    /// MPIDR affinity of its vCPU.
    pub mpidr: u64,
    /// GICR_PROPBASER
    pub propbaser: u64,
    /// GICR_PENDBASER
    pub pendbaser: u64,
    /// GICR_CTLR (EnableLPIs is bit 0)
    pub ctlr: u32,
}

/// The ITS and redistributor state a snapshot carries besides guest memory
/// (the device, collection and ITT tables and the pending tables are in
/// guest memory, written by the save).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItsState {
    /// The ITS registers.
    pub regs: its::ItsRegs,
    /// Per vCPU.
    pub redist: Vec<RedistState>,
}

/// LPI INTIDs KVM's vGIC supports: 16 ID bits.
pub const MAX_LPI: u32 = 1 << 16;

fn its_err(what: &str) -> impl FnOnce(its::kvm::KvmItsError) -> Error + '_ {
    move |e| Error::Io {
        what: format!("ITS {what}"),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Platform {
    /// A redistributor register: `attr` = MPIDR affinity << 32 | offset;
    /// KVM moves 32 bits at a time, so 64-bit registers take two accesses.
    pub(crate) fn redist_attr(mpidr: u64, offset: u64) -> u64 {
        ((mpidr & 0xff_00ff_ffff & 0xffff_ffff) << 32) | offset
    }

    fn redist_get64(&self, mpidr: u64, offset: u64) -> Result<u64> {
        let lo = self.redist_get32(mpidr, offset)?;
        let hi = self.redist_get32(mpidr, offset + 4)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    fn redist_get32(&self, mpidr: u64, offset: u64) -> Result<u32> {
        self.gic
            .get(GRP_REDIST_REGS, Self::redist_attr(mpidr, offset))
            .map(|v| v as u32)
            .map_err(gic_err(format!("reading GICR register {offset:#x}")))
    }

    fn redist_set32(&self, mpidr: u64, offset: u64, v: u32) -> Result<()> {
        gic_set(
            &self.gic,
            GRP_REDIST_REGS,
            Self::redist_attr(mpidr, offset),
            Some(u64::from(v)),
            "redistributor register",
        )
    }

    /// Saves the ITS (vCPUs stopped): KVM flushes the pending LPIs into the
    /// pending tables and writes the ITS tables into guest memory; the
    /// registers come back.
    pub fn save_its(&self) -> Result<ItsState> {
        let mut redist = Vec::with_capacity(self.mpidrs.len());
        for &mpidr in &self.mpidrs {
            redist.push(RedistState {
                mpidr,
                propbaser: self.redist_get64(mpidr, GICR_PROPBASER)?,
                pendbaser: self.redist_get64(mpidr, GICR_PENDBASER)?,
                ctlr: self.redist_get32(mpidr, GICR_CTLR)?,
            });
        }
        let regs = self.its.save(&self.gic).map_err(its_err("save"))?;
        Ok(ItsState { regs, redist })
    }

    /// Restores into this (fresh) VM, whose guest memory already holds the
    /// snapshot's, in KVM's documented order: redistributors (LPIs enabled
    /// last), then the ITS registers with CBASER first, the tables (decoded
    /// and checked by the its codec first), GITS_CTLR last.
    pub fn restore_its<M: vm_memory::GuestMemory>(&self, st: &ItsState, mem: &M) -> Result<()> {
        if st.redist.len() != self.mpidrs.len() {
            return Err(Error::Memory(format!(
                "the ITS snapshot has {} redistributors, this VM {} vCPUs",
                st.redist.len(),
                self.mpidrs.len()
            )));
        }
        for r in &st.redist {
            for (off, v) in [(GICR_PROPBASER, r.propbaser), (GICR_PENDBASER, r.pendbaser)] {
                self.redist_set32(r.mpidr, off, v as u32)?;
                self.redist_set32(r.mpidr, off + 4, (v >> 32) as u32)?;
            }
        }
        for r in &st.redist {
            self.redist_set32(r.mpidr, GICR_CTLR, r.ctlr)?;
        }
        self.its
            .restore_checked(&st.regs, mem, self.mpidrs.len(), MAX_LPI)
            .map_err(its_err("restore"))
    }
}

/// Most vCPUs: as many redistributors as fit before the UART.
pub fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus().min(layout::MAX_VCPUS as usize)
}

/// Checks what Caravel needs; nothing to create before the vCPUs.
pub fn setup_vm(kvm: &Kvm, _vm: &VmFd) -> Result<()> {
    for (cap, name) in [
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::ArmPsci02, "KVM_CAP_ARM_PSCI_0_2"),
        (Cap::OneReg, "KVM_CAP_ONE_REG"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(())
}

/// Puts the UART on the MMIO bus.
pub fn legacy_devices(
    _pio: &Bus,
    mmio: &Bus,
    serial: Arc<Mutex<SerialDevice>>,
    _exit: Arc<ExitSignal>,
) -> Result<()> {
    mmio.insert(serial, layout::UART_START, layout::UART_SIZE)
        .map_err(|e| Error::Memory(format!("cannot place the UART: {e}")))
}

/// Turns a failed GIC attribute access (an errno) into an error saying `what`.
pub(crate) fn gic_err(what: String) -> impl FnOnce(i32) -> Error {
    move |errno| Error::Io {
        what: format!("GICv3 {what}"),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

pub(crate) fn gic_set(
    dev: &DeviceFd,
    group: u32,
    attr: u64,
    value: Option<u64>,
    what: &str,
) -> Result<()> {
    dev.set(group, attr, value)
        .map_err(gic_err(what.to_string()))
}

/// Creates and initialises the vCPUs, then the GICv3 and its ITS (the GIC
/// needs every vCPU to exist before it is initialised).
pub fn create_vcpus(_kvm: &Kvm, vm: &VmFd, nr: u8) -> Result<(Vec<VcpuFd>, Platform)> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(Error::kvm("KVM_ARM_PREFERRED_TARGET"))?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    let mut vcpus = Vec::with_capacity(usize::from(nr));
    for id in 0..nr {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let mut k = kvi;
        if id > 0 {
            k.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        vcpu.vcpu_init(&k)
            .map_err(Error::kvm("KVM_ARM_VCPU_INIT"))?;
        vcpus.push(vcpu);
    }
    let mut dev = kvm_create_device {
        type_: DEV_TYPE_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm
        .create_device(&mut dev)
        .map_err(Error::kvm("KVM_CREATE_DEVICE(VGIC_V3)"))?;
    gic_set(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        Some(layout::GIC_DIST_START),
        "distributor address",
    )?;
    gic_set(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        Some(layout::GIC_REDIST_START),
        "redistributor address",
    )?;
    gic_set(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        Some(GIC_NR_IRQS),
        "number of interrupts",
    )?;
    let mut its_dev = kvm_create_device {
        type_: its::kvm::DEV_TYPE_ITS,
        fd: 0,
        flags: 0,
    };
    let its_fd = vm
        .create_device(&mut its_dev)
        .map_err(Error::kvm("KVM_CREATE_DEVICE(VGIC_ITS)"))?;
    let its = KvmIts::init(its_fd, layout::GIC_ITS_START).map_err(|e| Error::Io {
        what: "the ITS".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    gic_set(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        None,
        "initialisation",
    )?;
    Ok((
        vcpus,
        Platform {
            gic,
            its,
            mpidrs: Vec::new(),
        },
    ))
}

fn open_payload_file(path: &std::path::Path, option: &'static str) -> Result<File> {
    File::open(path)
        .map_err(|e| Error::config(option, format!("cannot open {}: {e}", path.display())))
}

fn too_small(cfg: &VmConfig, what: &str) -> Error {
    Error::config(
        "--memory",
        format!(
            "size={} is too small to hold the {what}",
            arch::format_size(cfg.memory.size)
        ),
    )
}

/// Loads the payload, writes the device tree and sets the boot vCPU up.
pub fn boot(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_layout: &MemoryLayout,
    pci: &PciSegment,
    vcpus: &[VcpuFd],
    platform: &mut Platform,
) -> Result<()> {
    let fdt_addr = mem_layout.fdt_start();
    let (entry, cmdline, initrd) = match &cfg.payload {
        Payload::Raw(raw) => {
            for (addr, bytes) in &raw.segments {
                mem.write_slice(bytes, GuestAddress(*addr))
                    .map_err(|_| too_small(cfg, "test code"))?;
            }
            (raw.entry, String::new(), None)
        }
        Payload::Linux(linux) => {
            let mut kernel = open_payload_file(&linux.kernel, "--kernel")?;
            let loaded = linux_loader::loader::pe::PE::load(
                mem,
                Some(GuestAddress(layout::KERNEL_START)),
                &mut kernel,
                None,
            )
            .map_err(|e| {
                Error::config(
                    "--kernel",
                    format!("{}: not an arm64 Image: {e}", linux.kernel.display()),
                )
            })?;
            let kernel_end = loaded.kernel_end;
            let initrd = match &linux.initramfs {
                Some(path) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        Error::config(
                            "--initramfs",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    let size = bytes.len() as u64;
                    let start = fdt_addr
                        .checked_sub(align_up(size, 0x1000))
                        .map(|s| s & !0xfff);
                    let start = start
                        .filter(|&s| s >= align_up(kernel_end, 0x20_0000))
                        .ok_or_else(|| too_small(cfg, "kernel, initramfs and device tree"))?;
                    mem.write_slice(&bytes, GuestAddress(start))
                        .map_err(|_| too_small(cfg, "initramfs"))?;
                    Some((start, size))
                }
                None => None,
            };
            if fdt_addr < kernel_end {
                return Err(too_small(cfg, "kernel and device tree"));
            }
            (loaded.kernel_load.0, linux.cmdline.clone(), initrd)
        }
    };
    prepare_restore(vcpus, platform)?;
    let mpidrs = platform.mpidrs.clone();
    let dtb = fdt::build(&FdtConfig {
        mpidrs,
        layout: *mem_layout,
        cmdline,
        initrd,
        pci_last_bus: pci.layout().last_bus,
    })
    .map_err(|e| Error::Memory(format!("device tree: {e}")))?;
    mem.write_slice(&dtb, GuestAddress(fdt_addr))
        .map_err(|_| too_small(cfg, "device tree"))?;
    let boot = vcpus
        .first()
        .ok_or_else(|| Error::config("--cpus", "at least one vCPU"))?;
    for (id, value) in regs::boot_regs(entry, fdt_addr) {
        boot.set_one_reg(id, &value.to_le_bytes())
            .map_err(Error::kvm("KVM_SET_ONE_REG"))?;
    }
    Ok(())
}

/// What [`boot`] records about the vCPUs (their MPIDRs, which the GIC's
/// save and restore use), without loading anything: a restore brings
/// memory and registers.
pub fn prepare_restore(vcpus: &[VcpuFd], platform: &mut Platform) -> Result<()> {
    let mut mpidrs = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let mut b = [0u8; 8];
        v.get_one_reg(regs::MPIDR_EL1, &mut b)
            .map_err(Error::kvm("KVM_GET_ONE_REG(MPIDR_EL1)"))?;
        mpidrs.push(u64::from_le_bytes(b));
    }
    platform.mpidrs = mpidrs;
    Ok(())
}

/// A register dump for crash reports.
pub fn describe_registers(vcpu: &VcpuFd) -> String {
    let get = |id: u64| {
        let mut b = [0u8; 8];
        vcpu.get_one_reg(id, &mut b)
            .map(|_| u64::from_le_bytes(b))
            .ok()
    };
    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v:#018x}"));
    format!(
        "  pc={} pstate={}\n  x0={} x1={} x2={} x3={}\n",
        show(get(regs::PC)),
        show(get(regs::PSTATE)),
        show(get(regs::x(0))),
        show(get(regs::x(1))),
        show(get(regs::x(2))),
        show(get(regs::x(3))),
    )
}

/// The console UART: A PL011 (`console=ttyAMA0`), as on QEMU's `virt`.
pub fn serial_device(
    interrupt: vmm_sys_util::eventfd::EventFd,
    input_wanted: Arc<vmm_sys_util::eventfd::EventFd>,
    out: devices::serial::SerialOutput,
) -> SerialDevice {
    SerialDevice::new_pl011(interrupt, input_wanted, out)
}
