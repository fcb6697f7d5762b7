//! One idle VM held for the whole run.
//!
//! Creating the first KVM VM of a host enables kernel static keys (KVM's
//! preempt notifiers, which patch `__schedule`) and a vCPU without an
//! in-kernel LAPIC enables `kvm_has_noapic_vcpu`; destroying the last one
//! disables them again. Each enable or disable live-patches kernel code
//! with `text_poke_bp` (an INT3 over the site, an IPI to every CPU, the new
//! bytes). The suite runs every case in a fresh process with a fresh VM, so
//! without a VM that outlives the cases the kernel patches its scheduler
//! twice per case. Under QEMU's multi-threaded TCG with nested SVM (the
//! rig's outer VM at 2 vCPUs) that patching wedged the outer VM: both vCPUs
//! looping through `asm_exc_int3`/`exc_int3` on a patched site in
//! `__schedule` (docs/selftests.md). Holding one VM with one LAPIC-less
//! vCPU keeps those keys on for the whole run, so cases create and destroy
//! VMs without any code patching.

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// The held VM; dropping it releases the VM and its vCPU.
pub struct Keeper {
    _vcpu: VcpuFd,
    _vm: VmFd,
}

impl Keeper {
    /// Creates the idle VM and its vCPU, or says why it could not.
    pub fn hold() -> Result<Self, String> {
        let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        Ok(Self {
            _vcpu: vcpu,
            _vm: vm,
        })
    }
}
