//! The state of an aarch64 VM besides guest memory, for save and restore
//! into a new VM: every vCPU's registers (`KVM_GET_REG_LIST`) and power
//! state, the GICv3 distributor, redistributors and CPU interfaces, and
//! the ITS (whose tables KVM writes into guest memory).
//!
//! Restore order, after guest memory: vCPU registers (MPIDR among them),
//! the distributor, the redistributors' SGI/PPI registers, the ITS with the
//! redistributors' LPI registers (`Platform::restore_its`), and the CPU
//! interfaces last. Not carried: level-triggered interrupt line levels
//! (`KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO`; every Caravel interrupt is
//! edge-triggered or an MSI) and device models (see `Vm::snapshot`).

use kvm_bindings::{kvm_mp_state, RegList};
use kvm_ioctls::VcpuFd;

use super::platform::{gic_err, gic_set, ItsState, Platform, GIC_NR_IRQS};
use crate::{Error, Result};

/// One vCPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    /// Every register KVM lists, with its bytes.
    pub regs: Vec<(u64, Vec<u8>)>,
    /// `KVM_GET_MP_STATE` (running or powered off by PSCI).
    pub mp_state: u32,
}

/// The GICv3 without the ITS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GicState {
    /// Distributor registers: (offset, value).
    pub dist: Vec<(u64, u32)>,
    /// Per vCPU: SGI/PPI registers of its redistributor.
    pub redist: Vec<Vec<(u64, u32)>>,
    /// Per vCPU: CPU interface system registers (KVM sysreg encoding, value).
    pub cpu_sysregs: Vec<Vec<(u64, u64)>>,
}

/// Everything but guest memory and device models.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// Per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// The GIC.
    pub gic: GicState,
    /// The ITS and the redistributors' LPI registers.
    pub its: ItsState,
}

/// The most registers kvm-bindings' `RegList` holds (KVM lists about 270
/// per vCPU on Linux 6.1 without SVE).
const MAX_REGS: usize = 500;
/// `KVM_DEV_ARM_VGIC_GRP_DIST_REGS`
const GRP_DIST_REGS: u32 = 1;
/// `KVM_DEV_ARM_VGIC_GRP_REDIST_REGS`
const GRP_REDIST_REGS: u32 = 5;
/// `KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS`
const GRP_CPU_SYSREGS: u32 = 6;

fn reg_bytes(id: u64) -> usize {
    1 << ((id >> 52) & 0xf)
}

fn kvm_err(what: String) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Io {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// Saves a stopped vCPU.
pub fn save_vcpu(vcpu: &VcpuFd) -> Result<VcpuState> {
    let mut list =
        RegList::new(MAX_REGS).map_err(|e| Error::Snapshot(format!("register list: {e:?}")))?;
    vcpu.get_reg_list(&mut list)
        .map_err(kvm_err("KVM_GET_REG_LIST".into()))?;
    let mut regs = Vec::with_capacity(list.as_slice().len());
    for &id in list.as_slice() {
        let mut bytes = vec![0u8; reg_bytes(id)];
        vcpu.get_one_reg(id, &mut bytes)
            .map_err(kvm_err(format!("KVM_GET_ONE_REG({id:#x})")))?;
        regs.push((id, bytes));
    }
    let mp_state = vcpu
        .get_mp_state()
        .map_err(kvm_err("KVM_GET_MP_STATE".into()))?
        .mp_state;
    Ok(VcpuState { regs, mp_state })
}

/// Restores a vCPU that has not run.
pub fn restore_vcpu(vcpu: &VcpuFd, st: &VcpuState) -> Result<()> {
    for (id, bytes) in &st.regs {
        if bytes.len() != reg_bytes(*id) {
            return Err(Error::Snapshot(format!(
                "register {id:#x}: {} bytes, KVM wants {}",
                bytes.len(),
                reg_bytes(*id)
            )));
        }
        vcpu.set_one_reg(*id, bytes)
            .map_err(kvm_err(format!("KVM_SET_ONE_REG({id:#x})")))?;
    }
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: st.mp_state,
    })
    .map_err(kvm_err("KVM_SET_MP_STATE".into()))
}

/// Distributor registers of the SPIs (the redistributors hold SGIs and
/// PPIs): control, then per-interrupt state, then routing.
fn dist_offsets() -> Vec<u64> {
    let irqs = GIC_NR_IRQS;
    let mut v = vec![0x0]; // GICD_CTLR
                           // (base, bits per interrupt): IGROUPR, ISENABLER, ISPENDR, ISACTIVER,
                           // IPRIORITYR, ICFGR, IGRPMODR
    for (base, bits) in [
        (0x080, 1),
        (0x100, 1),
        (0x200, 1),
        (0x300, 1),
        (0x400, 8),
        (0xc00, 2),
        (0xd00, 1),
    ] {
        let (first, end) = (32 * bits / 8, irqs * bits / 8);
        v.extend((first..end).step_by(4).map(|off| base + off));
    }
    for irq in 32..irqs {
        let irouter = 0x6000 + 8 * irq;
        v.extend([irouter, irouter + 4]);
    }
    v
}

/// SGI/PPI registers in a redistributor's SGI frame (offsets from RD_base):
/// IGROUPR0, ISENABLER0, ISPENDR0, ISACTIVER0, IPRIORITYR0-7, ICFGR0-1,
/// IGRPMODR0.
fn redist_offsets() -> Vec<u64> {
    let mut v = vec![0x1_0080, 0x1_0100, 0x1_0200, 0x1_0300];
    v.extend((0..8).map(|i| 0x1_0400 + 4 * i));
    v.extend([0x1_0c00, 0x1_0c04, 0x1_0d00]);
    v
}

const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// ICC_SRE_EL1 and ICC_CTLR_EL1 first (they shape the others).
const ICC_REGS: [(u64, &str); 15] = [
    (sysreg(3, 0, 12, 12, 5), "ICC_SRE_EL1"),
    (sysreg(3, 0, 12, 12, 4), "ICC_CTLR_EL1"),
    (sysreg(3, 0, 12, 12, 6), "ICC_IGRPEN0_EL1"),
    (sysreg(3, 0, 12, 12, 7), "ICC_IGRPEN1_EL1"),
    (sysreg(3, 0, 4, 6, 0), "ICC_PMR_EL1"),
    (sysreg(3, 0, 12, 8, 3), "ICC_BPR0_EL1"),
    (sysreg(3, 0, 12, 12, 3), "ICC_BPR1_EL1"),
    (sysreg(3, 0, 12, 8, 4), "ICC_AP0R0_EL1"),
    (sysreg(3, 0, 12, 8, 5), "ICC_AP0R1_EL1"),
    (sysreg(3, 0, 12, 8, 6), "ICC_AP0R2_EL1"),
    (sysreg(3, 0, 12, 8, 7), "ICC_AP0R3_EL1"),
    (sysreg(3, 0, 12, 9, 0), "ICC_AP1R0_EL1"),
    (sysreg(3, 0, 12, 9, 1), "ICC_AP1R1_EL1"),
    (sysreg(3, 0, 12, 9, 2), "ICC_AP1R2_EL1"),
    (sysreg(3, 0, 12, 9, 3), "ICC_AP1R3_EL1"),
];

fn icc_regs() -> impl Iterator<Item = (u64, &'static str)> {
    ICC_REGS.into_iter()
}

impl Platform {
    /// Saves the distributor, redistributors (SGI/PPI part) and CPU
    /// interfaces. The vCPUs must be stopped.
    pub fn save_gic(&self) -> Result<GicState> {
        use its::kvm::DeviceAttrs;
        let mut dist = Vec::new();
        for off in dist_offsets() {
            let v = DeviceAttrs::get(&self.gic, GRP_DIST_REGS, off)
                .map_err(gic_err(format!("reading GICD register {off:#x}")))?;
            dist.push((off, v as u32));
        }
        let mut redist = Vec::with_capacity(self.mpidrs.len());
        let mut cpu_sysregs = Vec::with_capacity(self.mpidrs.len());
        for &mpidr in &self.mpidrs {
            let mut r = Vec::new();
            for off in redist_offsets() {
                let v = DeviceAttrs::get(&self.gic, GRP_REDIST_REGS, Self::redist_attr(mpidr, off))
                    .map_err(gic_err(format!("reading GICR register {off:#x}")))?;
                r.push((off, v as u32));
            }
            redist.push(r);
            let mut c = Vec::new();
            for (reg, name) in icc_regs() {
                match DeviceAttrs::get(&self.gic, GRP_CPU_SYSREGS, Self::redist_attr(mpidr, reg)) {
                    Ok(v) => c.push((reg, v)),
                    // Active-priority registers past the implemented
                    // priority bits do not exist.
                    Err(libc::EINVAL) if name.contains("_AP") => {}
                    Err(errno) => return Err(gic_err(format!("reading {name}"))(errno)),
                }
            }
            cpu_sysregs.push(c);
        }
        Ok(GicState {
            dist,
            redist,
            cpu_sysregs,
        })
    }

    /// Restores the distributor and the redistributors' SGI/PPI registers
    /// (before the ITS).
    pub fn restore_gic_dist_redist(&self, st: &GicState) -> Result<()> {
        self.check_vcpu_count(st.redist.len(), "redistributors")?;
        for &(off, v) in &st.dist {
            self.gic_set_attr(GRP_DIST_REGS, off, u64::from(v), || {
                format!("GICD register {off:#x}")
            })?;
        }
        for (&mpidr, regs) in self.mpidrs.iter().zip(&st.redist) {
            for &(off, v) in regs {
                self.gic_set_attr(
                    GRP_REDIST_REGS,
                    Self::redist_attr(mpidr, off),
                    u64::from(v),
                    || format!("GICR register {off:#x}"),
                )?;
            }
        }
        Ok(())
    }

    /// Restores the CPU interfaces (last).
    pub fn restore_gic_cpu_interfaces(&self, st: &GicState) -> Result<()> {
        self.check_vcpu_count(st.cpu_sysregs.len(), "CPU interfaces")?;
        for (&mpidr, regs) in self.mpidrs.iter().zip(&st.cpu_sysregs) {
            for &(reg, v) in regs {
                self.gic_set_attr(GRP_CPU_SYSREGS, Self::redist_attr(mpidr, reg), v, || {
                    format!("ICC register {reg:#x}")
                })?;
            }
        }
        Ok(())
    }

    fn check_vcpu_count(&self, n: usize, what: &str) -> Result<()> {
        if n == self.mpidrs.len() {
            return Ok(());
        }
        Err(Error::Snapshot(format!(
            "it has {n} {what}, this VM {} vCPUs",
            self.mpidrs.len()
        )))
    }

    fn gic_set_attr(&self, group: u32, attr: u64, v: u64, what: impl Fn() -> String) -> Result<()> {
        gic_set(
            &self.gic,
            group,
            attr,
            Some(v),
            &format!("restoring {}", what()),
        )
    }

    /// The whole state besides guest memory; `vcpus` stopped, in order.
    pub fn save(&self, vcpus: &[VcpuFd]) -> Result<VmState> {
        let vcpus = vcpus.iter().map(save_vcpu).collect::<Result<Vec<_>>>()?;
        // The ITS save makes KVM flush pending LPIs; the GIC read after it.
        let its = self.save_its()?;
        let gic = self.save_gic()?;
        Ok(VmState { vcpus, gic, its })
    }

    /// Restores `st` into this VM (built from the same configuration, not
    /// run) whose guest memory already holds the snapshot's.
    pub fn restore<M: vm_memory::GuestMemory>(
        &self,
        vcpus: &[VcpuFd],
        st: &VmState,
        mem: &M,
    ) -> Result<()> {
        self.check_vcpu_count(st.vcpus.len(), "vCPUs")?;
        for (vcpu, s) in vcpus.iter().zip(&st.vcpus) {
            restore_vcpu(vcpu, s)?;
        }
        self.restore_gic_dist_redist(&st.gic)?;
        self.restore_its(&st.its, mem)?;
        self.restore_gic_cpu_interfaces(&st.gic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributor_registers_cover_the_spis_only() {
        let offs = dist_offsets();
        assert_eq!(offs[0], 0);
        // 96 SPIs: 3 words per 1-bit register, 24 priority words, 6 config
        // words, two words of IROUTER each.
        assert_eq!(offs.len(), 1 + 3 * 5 + 24 + 6 + 2 * 96);
        assert!(offs.contains(&0x104) && !offs.contains(&0x100));
        assert!(offs.contains(&0x420) && !offs.contains(&0x41c));
        assert!(offs.contains(&(0x6000 + 8 * 32)) && !offs.contains(&(0x6000 + 8 * 31)));
        assert_eq!(redist_offsets().len(), 4 + 8 + 3);
    }

    #[test]
    fn icc_encodings_match_the_kernel_sysreg_ids() {
        // ICC_PMR_EL1 = S3_0_C4_C6_0, ICC_SRE_EL1 = S3_0_C12_C12_5.
        assert_eq!(sysreg(3, 0, 4, 6, 0), 0xc230);
        assert_eq!(sysreg(3, 0, 12, 12, 5), 0xc665);
        assert_eq!(icc_regs().count(), 15);
        assert_eq!(reg_bytes(0x6030_0000_0010_0000), 8);
        assert_eq!(reg_bytes(0x6040_0000_0010_0054), 16);
    }
}
