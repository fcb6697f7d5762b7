//! Reading a vCPU's whole state through the ioctls and through
//! `kvm_run->s.regs`, and MSRs by index.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs, Msrs, KVM_SYNC_X86_VALID_FIELDS};
use kvm_ioctls::VcpuFd;

use crate::check::{Failure, IoctlContext};

/// IA32_EFER
pub const MSR_EFER: u32 = 0xc000_0080;
/// IA32_APIC_BASE
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_PAT
pub const MSR_PAT: u32 = 0x277;

/// Reads `indices` with KVM_GET_MSRS.
pub fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<u64>, Failure> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries)
        .map_err(|e| Failure::Fail(format!("cannot build the MSR list: {e:?}")))?;
    let n = vcpu.get_msrs(&mut msrs).ctx("KVM_GET_MSRS")?;
    if n != indices.len() {
        let missing = indices.get(n).copied().unwrap_or(0);
        return Err(Failure::Fail(format!(
            "KVM_GET_MSRS read {n} of {} MSRs (stopped at {missing:#x})",
            indices.len()
        )));
    }
    Ok(msrs.as_slice().iter().map(|e| e.data).collect())
}

/// `kvm_run->s.regs` as KVM_RUN with `immediate_exit` stores it: KVM_RUN
/// returns EINTR at once and fills every valid part.
pub fn sync_regs_now(vcpu: &mut VcpuFd) -> Result<(kvm_regs, kvm_sregs), Failure> {
    {
        let run = vcpu.get_kvm_run();
        run.kvm_valid_regs = u64::from(KVM_SYNC_X86_VALID_FIELDS);
        run.kvm_dirty_regs = 0;
        run.immediate_exit = 1;
    }
    let r = vcpu.run().map(|_| ());
    vcpu.get_kvm_run().immediate_exit = 0;
    vcpu.get_kvm_run().kvm_valid_regs = 0;
    crate::check::expect_errno(r, libc::EINTR, "KVM_RUN with immediate_exit")?;
    let s = vcpu.sync_regs();
    Ok((s.regs, s.sregs))
}
