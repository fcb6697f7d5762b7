//! `sregs`: the kernel's set_sregs_test. KVM_SET_SREGS must accept every
//! CR4 bit KVM supports (before and after KVM_SET_CPUID2), reject the others
//! and invalid CR0/APIC_BASE values, and leave the state unchanged when it
//! rejects.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use super::{host_backend, Case, Diag};
use crate::check::{CaseResult, Failure, IoctlContext};
use crate::harness::TestVm;
use crate::{check, check_eq};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case { name: "sregs.supported_cr4_accepted", about: "every CR4 bit KVM_GET_SUPPORTED_CPUID implies is accepted, before and after KVM_SET_CPUID2", run: supported_cr4_accepted },
    Case { name: "sregs.unsupported_cr4_rejected", about: "CR4 bits KVM does not advertise, and reserved ones, are rejected; state unchanged", run: unsupported_cr4_rejected },
    Case { name: "sregs.invalid_cr0_rejected", about: "CR0 bits 63:32, NW without CD and PG without PE are rejected; state unchanged", run: invalid_cr0_rejected },
    Case { name: "sregs.invalid_apic_base_rejected", about: "APIC_BASE with x2APIC but not xAPIC enabled is rejected; a valid one is accepted", run: invalid_apic_base_rejected },
];

/// CR4 bits that depend on a CPUID feature: (name, bit, leaf, subleaf,
/// register 0..3 = EAX..EDX, feature bit). The kernel test's list.
const CONDITIONAL_CR4: &[(&str, u32, u32, u32, usize, u32)] = &[
    ("UMIP", 11, 7, 0, 2, 2),
    ("LA57", 12, 7, 0, 2, 16),
    ("VMXE", 13, 1, 0, 2, 5),
    ("SMXE", 14, 1, 0, 2, 6),
    ("FSGSBASE", 16, 7, 0, 1, 0),
    ("PCIDE", 17, 1, 0, 2, 17),
    ("OSXSAVE", 18, 1, 0, 2, 26),
    ("SMEP", 20, 7, 0, 1, 7),
    ("SMAP", 21, 7, 0, 1, 20),
    ("PKE", 22, 7, 0, 2, 3),
];
/// VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT: always supported.
const BASE_CR4: u64 = 0x7ff;
/// Bits no KVM supports: reserved, Key Locker (19), UINTR (25), and 63:33.
const RESERVED_CR4: &[u32] = &[15, 19, 25, 26, 27, 29, 30, 31];

fn cpuid_bit(cpuid: &CpuId, leaf: u32, sub: u32, reg: usize, bit: u32) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == leaf && e.index == sub)
        .is_some_and(|e| [e.eax, e.ebx, e.ecx, e.edx][reg] & (1 << bit) != 0)
}

fn supported(kvm: &Kvm) -> Result<(u64, CpuId), Failure> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .ctx("KVM_GET_SUPPORTED_CPUID")?;
    let mut cr4 = BASE_CR4;
    for &(_, bit, leaf, sub, reg, feat) in CONDITIONAL_CR4 {
        if cpuid_bit(&cpuid, leaf, sub, reg, feat) {
            cr4 |= 1 << bit;
        }
    }
    Ok((cr4, cpuid))
}

fn set_cr4_all(vcpu: &VcpuFd, cr4: u64, when: &str) -> CaseResult {
    let mut sregs = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
    sregs.cr0 = 0;
    sregs.cr4 |= cr4;
    let want = sregs.cr4;
    if let Err(e) = vcpu.set_sregs(&sregs) {
        // Which bits, one at a time over the reset value.
        let base = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
        let refused: Vec<String> = (0..64)
            .filter(|b| cr4 & (1 << b) != 0)
            .filter(|b| {
                let mut one = base;
                one.cr0 = 0;
                one.cr4 |= 1 << b;
                vcpu.set_sregs(&one).is_err()
            })
            .map(|b| b.to_string())
            .collect();
        let _ = vcpu.set_sregs(&base);
        return Err(Failure::Fail(format!(
            "{when}: KVM_SET_SREGS refused the supported CR4 bits {want:#x}: {e} \
             (alone, bits [{}] are refused)",
            refused.join(", ")
        )));
    }
    check_eq!(
        vcpu.get_sregs().ctx("KVM_GET_SREGS")?.cr4,
        want,
        "{when}: CR4 read back"
    );
    Ok(())
}

fn supported_cr4_accepted(_: &mut Diag) -> CaseResult {
    let (kvm, vm) = TestVm::barebones()?;
    let (cr4, cpuid) = supported(&kvm)?;
    let vcpu = vm.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    set_cr4_all(&vcpu, cr4, "before KVM_SET_CPUID2")?;
    let vcpu = vm.create_vcpu(1).ctx("KVM_CREATE_VCPU")?;
    vcpu.set_cpuid2(&cpuid).ctx("KVM_SET_CPUID2")?;
    set_cr4_all(&vcpu, cr4, "after KVM_SET_CPUID2")
}

/// Sets `bit` in the register `reg` picks; the set must fail and change nothing.
fn rejected(
    vcpu: &VcpuFd,
    name: &str,
    apply: impl Fn(&mut kvm_bindings::kvm_sregs),
    note: &str,
) -> CaseResult {
    let before = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
    let mut sregs = before;
    apply(&mut sregs);
    if vcpu.set_sregs(&sregs).is_ok() {
        return Err(Failure::Fail(format!(
            "KVM_SET_SREGS accepted {name}{note} (host backend: {})",
            host_backend()
        )));
    }
    let after = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
    crate::check::check_same(
        &before,
        &after,
        &format!("sregs before and after the refused {name}"),
    )
}

fn unsupported_cr4_rejected(_: &mut Diag) -> CaseResult {
    let (kvm, vm) = TestVm::barebones()?;
    let (cr4, _) = supported(&kvm)?;
    // As the kernel test: on a vCPU without KVM_SET_CPUID2, CR4 already
    // holding every supported bit.
    let vcpu = vm.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    set_cr4_all(&vcpu, cr4, "setup")?;
    let mut failures = Vec::new();
    let conditional = CONDITIONAL_CR4.iter().map(|&(n, b, ..)| (n.to_string(), b));
    let reserved = RESERVED_CR4
        .iter()
        .copied()
        .chain(33..64)
        .map(|b| (format!("reserved bit {b}"), b));
    for (name, bit) in conditional.chain(reserved) {
        if cr4 & (1 << bit) != 0 {
            continue;
        }
        let note = ", which KVM_GET_SUPPORTED_CPUID does not advertise";
        if let Err(Failure::Fail(m)) = rejected(
            &vcpu,
            &format!("CR4.{name} (bit {bit})"),
            |s| s.cr4 |= 1 << bit,
            note,
        ) {
            failures.push(m);
        }
    }
    check!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn invalid_cr0_rejected(_: &mut Diag) -> CaseResult {
    let (_kvm, vm) = TestVm::barebones()?;
    let vcpu = vm.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    for bit in 32..64u32 {
        rejected(
            &vcpu,
            &format!("CR0 bit {bit}"),
            |s| s.cr0 |= 1 << bit,
            " (reserved)",
        )?;
    }
    rejected(
        &vcpu,
        "CR0.NW without CD",
        |s| s.cr0 = (s.cr0 & !(1 << 30)) | (1 << 29),
        "",
    )?;
    rejected(
        &vcpu,
        "CR0.PG without PE",
        |s| s.cr0 = (s.cr0 & !1) | (1 << 31),
        "",
    )
}

fn invalid_apic_base_rejected(_: &mut Diag) -> CaseResult {
    let (_kvm, vm) = TestVm::barebones()?;
    let vcpu = vm.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    rejected(
        &vcpu,
        "APIC_BASE 0x400 (x2APIC enabled, xAPIC disabled)",
        |s| s.apic_base = 1 << 10,
        "",
    )?;
    let mut sregs = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
    sregs.apic_base = 1 << 11;
    vcpu.set_sregs(&sregs)
        .ctx("KVM_SET_SREGS with the valid APIC_BASE 0x800")?;
    check_eq!(
        vcpu.get_sregs().ctx("KVM_GET_SREGS")?.apic_base,
        1u64 << 11,
        "apic_base read back"
    );
    Ok(())
}
