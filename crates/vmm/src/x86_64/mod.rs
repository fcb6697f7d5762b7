//! KVM setup specific to x86_64: the in-kernel irqchip and PIT, and each
//! vCPU's CPUID, MSRs, LAPIC and boot registers.
//!
//! Caravel uses KVM's full in-kernel irqchip (PIC, IOAPIC, LAPIC) rather than a
//! split irqchip: legacy interrupts reach the IOAPIC through irqfds without a
//! userspace IOAPIC, and under nesting every avoided exit counts. MSIs are
//! added as GSI routes on top of KVM's default IOAPIC routes.

use arch::x86_64::cpuid::{self, CpuidConfig};
use arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use arch::x86_64::msr;
use arch::x86_64::regs::{self, EntryMode};
use kvm_bindings::{
    kvm_msr_entry, kvm_pit_config, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use crate::{Error, Result};

pub mod platform;
pub mod snapshot;

/// Host facts read once per VM.
pub struct HostCpu {
    supported_cpuid: CpuId,
    msr_index_list: Vec<u32>,
    tsc_deadline: bool,
}

impl HostCpu {
    /// Reads the supported CPUID and MSR list.
    pub fn probe(kvm: &Kvm) -> Result<Self> {
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(Self {
            supported_cpuid,
            msr_index_list,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        })
    }
}

/// Creates the platform pieces that must exist before vCPUs.
pub fn setup_vm(kvm: &Kvm, vm: &VmFd) -> Result<()> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(Error::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    // Port 0x61 (speaker) is then handled in the kernel as well.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// LVT LINT0 register offset in the LAPIC page.
const APIC_LVT0: usize = 0x350;
/// LVT LINT1 register offset.
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as std::os::raw::c_char;
    }
}

/// Configures vCPU `id` of `nr`: CPUID (set before any MSR, as KVM wants),
/// boot MSRs, LINT0 = ExtINT and LINT1 = NMI. vCPU 0 also gets the entry state;
/// the others wait for INIT/SIPI from the guest.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    host: &HostCpu,
    id: u8,
    nr: u8,
    boot: Option<(EntryMode, u64)>,
) -> Result<()> {
    let mut entries = host.supported_cpuid.as_slice().to_vec();
    cpuid::normalize(
        &mut entries,
        &CpuidConfig {
            cpu_id: id,
            nr_vcpus: nr,
            tsc_deadline: host.tsc_deadline,
        },
    );
    let cpuid =
        CpuId::from_entries(&entries).map_err(|_| Error::Memory("CPUID table too large".into()))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;

    let wanted: Vec<kvm_msr_entry> = msr::boot_msrs()
        .into_iter()
        .filter(|(index, _)| host.msr_index_list.contains(index))
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&wanted).map_err(|_| Error::Memory("MSR list too large".into()))?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if set != wanted.len() {
        // KVM stops at the first MSR it refuses; report which one.
        log::warn!(
            "vCPU {id}: KVM accepted {set} of {} boot MSRs (first refused: {:#x})",
            wanted.len(),
            wanted.get(set).map_or(0, |m| m.index)
        );
    }

    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(Error::kvm("KVM_SET_LAPIC"))?;

    if let Some((mode, entry)) = boot {
        let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        regs::setup_sregs(&mut sregs, mode);
        vcpu.set_sregs(&sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::boot_regs(mode, entry))
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(Error::kvm("KVM_SET_FPU"))?;
    }
    Ok(())
}

/// A register dump for crash reports.
pub fn describe_registers(vcpu: &VcpuFd) -> String {
    let mut out = String::new();
    if let Ok(r) = vcpu.get_regs() {
        out += &format!(
            "  rip={:#018x} rsp={:#018x} rflags={:#010x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x}\n",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
        );
    }
    if let Ok(s) = vcpu.get_sregs() {
        out += &format!(
            "  cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} efer={:#x}\n  cs={:#06x} (base {:#x}, l={} db={}) ss={:#06x}\n",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.cs.l, s.cs.db, s.ss.selector
        );
    }
    out
}
