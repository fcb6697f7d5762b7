//! The state of an x86_64 VM besides guest memory, for save and restore
//! into a new VM built from the same configuration: every vCPU (MP state,
//! registers, segment and control registers, XSAVE, XCRs, debug registers,
//! LAPIC, MSRs, pending events), the in-kernel irqchip (PIC master and
//! slave, IOAPIC), the PIT and the KVM clock. Plain serde data with a
//! version (kvm-bindings' own serde).
//!
//! Save order, with every vCPU parked: per vCPU MP state first (it makes the
//! LAPIC accept pending events), events last; then the PIT, the clock and
//! the irqchip. Restore order (`research/snapshot-migration.md` §8):
//! per vCPU MP state, REGS, SREGS, XSAVE, XCRS, DEBUGREGS, LAPIC (after
//! SREGS, which restore the APIC base; before the MSRs, so the TSC deadline
//! sticks), MSRs with IA32_TSC_DEADLINE last, VCPU_EVENTS; then PIT2,
//! CLOCK, PIC master, PIC slave, IOAPIC.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of [`VmState`]'s layout.
pub const STATE_VERSION: u32 = 1;
/// `MSR_IA32_TSC_DEADLINE`: restored after `MSR_IA32_TSC`.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// One vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// `KVM_GET_MP_STATE`.
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state (`KVM_GET_XSAVE`, 4 KiB).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lists that reads back: (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs, SIPI.
    pub events: kvm_vcpu_events,
}

/// Everything but guest memory and device models.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// `STATE_VERSION` when saved.
    pub version: u32,
    /// Per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The in-kernel PIT.
    pub pit: kvm_pit_state2,
    /// The KVM clock (kvmclock's base).
    pub clock: kvm_clock_data,
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::Snapshot(format!("{what}: {e}"))
}

/// Refuses a host whose XSAVE area is larger than `kvm_xsave` (dynamic
/// features such as AMX enabled with `arch_prctl`; Caravel enables none).
fn check_xsave_size(vm: &VmFd) -> Result<()> {
    let size = vm.check_extension_int(Cap::Xsave2);
    if size > 4096 {
        return Err(Error::Snapshot(format!(
            "the host's XSAVE area is {size} bytes; this snapshot format holds 4096"
        )));
    }
    Ok(())
}

/// Reads every MSR in KVM's index list that reads back, one at a time (a
/// list entry that does not read is skipped, as Cloud Hypervisor does).
fn save_msrs(vcpu: &VcpuFd, index: &[u32]) -> Vec<(u32, u64)> {
    let mut out = Vec::with_capacity(index.len());
    for &i in index {
        let Ok(mut m) = Msrs::from_entries(&[kvm_msr_entry {
            index: i,
            ..Default::default()
        }]) else {
            continue;
        };
        if vcpu.get_msrs(&mut m) == Ok(1) {
            out.push((i, m.as_slice()[0].data));
        }
    }
    out
}

fn restore_msrs(vcpu: &VcpuFd, msrs: &[(u32, u64)]) -> Result<()> {
    // The deadline compares with the guest TSC: write it after IA32_TSC.
    let (last, first): (Vec<_>, Vec<_>) =
        msrs.iter().partition(|(i, _)| *i == MSR_IA32_TSC_DEADLINE);
    for &(i, v) in first.into_iter().chain(last) {
        let m = Msrs::from_entries(&[kvm_msr_entry {
            index: i,
            data: v,
            ..Default::default()
        }])
        .map_err(|e| Error::Snapshot(format!("MSR {i:#x}: {e:?}")))?;
        match vcpu.set_msrs(&m) {
            Ok(1) => {}
            Ok(_) | Err(_) => {
                return Err(Error::Snapshot(format!(
                    "KVM_SET_MSRS refused MSR {i:#x} = {v:#x}"
                )))
            }
        }
    }
    Ok(())
}

/// Saves paused vCPUs (each with its last exit completed) and the VM's
/// irqchip, PIT and clock.
pub fn save(vm: &VmFd, vcpus: &[VcpuFd]) -> Result<VmState> {
    check_xsave_size(vm)?;
    let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
    let index = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut states = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let mp_state = v.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
        states.push(VcpuState {
            mp_state,
            regs: v.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: v.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            xsave: v.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?,
            xcrs: v.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            debugregs: v.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            lapic: v.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?,
            msrs: save_msrs(v, index.as_slice()),
            events: v
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
        });
    }
    let mut irqchips = Vec::new();
    for chip_id in [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ] {
        let mut c = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        irqchips.push(c);
    }
    Ok(VmState {
        version: STATE_VERSION,
        vcpus: states,
        irqchips,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
    })
}

/// Restores `st` into a VM built from the same configuration (same vCPU
/// count, CPUID set) whose guest memory already holds the saved memory.
pub fn restore(vm: &VmFd, vcpus: &[VcpuFd], st: &VmState) -> Result<()> {
    if st.version != STATE_VERSION {
        return Err(Error::Snapshot(format!(
            "state version {} is not the {STATE_VERSION} this Caravel reads",
            st.version
        )));
    }
    if st.vcpus.len() != vcpus.len() {
        return Err(Error::Snapshot(format!(
            "the snapshot has {} vCPUs, this VM {}",
            st.vcpus.len(),
            vcpus.len()
        )));
    }
    check_xsave_size(vm)?;
    for (v, s) in vcpus.iter().zip(&st.vcpus) {
        v.set_mp_state(s.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        v.set_regs(&s.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        v.set_sregs(&s.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        // SAFETY: `s.xsave` is a whole `kvm_xsave` (4096 bytes) and the host's
        // XSAVE area is no larger (checked above), so KVM reads inside it.
        unsafe { v.set_xsave(&s.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        v.set_xcrs(&s.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        v.set_debug_regs(&s.debugregs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        v.set_lapic(&s.lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
        restore_msrs(v, &s.msrs)?;
        v.set_vcpu_events(&s.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    }
    vm.set_pit2(&st.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    let mut clock = st.clock;
    // Only the clock value is set; flags describe the saved reading.
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    for c in &st.irqchips {
        vm.set_irqchip(c).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
