//! KVM's in-kernel vITS (`KVM_DEV_TYPE_ARM_VGIC_ITS`), driven through device
//! attributes.
//!
//! The sequencing (create, base address, init, save, restore in KVM's
//! documented order, reset) is written against [`DeviceAttrs`], so that the
//! ioctl order is tested with a mock on any architecture; the implementation
//! for `kvm_ioctls::DeviceFd` exists on aarch64 only.
//!
//! Restore order (Documentation/virt/kvm/devices/arm-vgic-its.rst): guest
//! memory and vCPUs, then the redistributors, then the ITS base address, then
//! GITS_CBASER, the other registers (IIDR, CREADR, CWRITER, BASERn),
//! RESTORE_TABLES, and GITS_CTLR last. Before restoring, [`KvmIts::restore_checked`]
//! decodes the saved tables with this crate's codec and refuses a bad snapshot
//! with a readable reason instead of KVM's EINVAL or EFAULT.

use vm_memory::GuestMemory;

use crate::its::ItsRegs;
use crate::regs::*;
use crate::tables;

/// `KVM_DEV_TYPE_ARM_VGIC_ITS`
pub const DEV_TYPE_ITS: u32 = 8;
/// `KVM_DEV_ARM_VGIC_GRP_ADDR`
pub const GRP_ADDR: u32 = 0;
/// `KVM_VGIC_ITS_ADDR_TYPE`
pub const ITS_ADDR_TYPE: u64 = 4;
/// `KVM_DEV_ARM_VGIC_GRP_CTRL`
pub const GRP_CTRL: u32 = 4;
/// `KVM_DEV_ARM_VGIC_CTRL_INIT`
pub const CTRL_INIT: u64 = 0;
/// `KVM_DEV_ARM_ITS_SAVE_TABLES`
pub const ITS_SAVE_TABLES: u64 = 1;
/// `KVM_DEV_ARM_ITS_RESTORE_TABLES`
pub const ITS_RESTORE_TABLES: u64 = 2;
/// `KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES` (on the GICv3 device)
pub const SAVE_PENDING_TABLES: u64 = 3;
/// `KVM_DEV_ARM_ITS_CTRL_RESET`
pub const ITS_CTRL_RESET: u64 = 4;
/// `KVM_DEV_ARM_VGIC_GRP_ITS_REGS`
pub const GRP_ITS_REGS: u32 = 8;
/// `KVM_MSI_VALID_DEVID`
pub const MSI_VALID_DEVID: u32 = 1;

/// Device attribute access (`KVM_SET_DEVICE_ATTR` / `KVM_GET_DEVICE_ATTR`).
pub trait DeviceAttrs {
    /// Sets `group`/`attr`, passing a pointer to `value` when there is one.
    fn set(&self, group: u32, attr: u64, value: Option<u64>) -> Result<(), i32>;
    /// Reads a 64-bit attribute.
    fn get(&self, group: u32, attr: u64) -> Result<u64, i32>;
}

/// Why a KVM ITS operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvmItsError {
    /// An attribute access failed with `errno`.
    #[error("{what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Attr {
        /// The operation.
        what: &'static str,
        /// errno
        errno: i32,
    },
    /// The snapshot's tables are inconsistent: not restored.
    #[error("refusing to restore the ITS: {0}")]
    BadSnapshot(String),
}

fn attr(what: &'static str) -> impl FnOnce(i32) -> KvmItsError {
    move |errno| KvmItsError::Attr { what, errno }
}

/// The registers saved, in the order they are restored (after CBASER, which
/// resets CREADR, and before the tables).
pub const RESTORE_ORDER: [u64; 4] = [GITS_IIDR, GITS_CBASER, GITS_CREADR, GITS_CWRITER];

/// A vITS on a KVM VM.
pub struct KvmIts<D> {
    dev: D,
}

impl<D: DeviceAttrs> KvmIts<D> {
    /// Places the ITS frame at `base` (64 KiB aligned) and initialises it.
    pub fn init(dev: D, base: u64) -> Result<Self, KvmItsError> {
        dev.set(GRP_ADDR, ITS_ADDR_TYPE, Some(base))
            .map_err(attr("setting the ITS base address"))?;
        dev.set(GRP_CTRL, CTRL_INIT, None)
            .map_err(attr("KVM_DEV_ARM_VGIC_CTRL_INIT"))?;
        Ok(Self { dev })
    }

    /// The underlying device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    fn reg(&self, offset: u64) -> Result<u64, KvmItsError> {
        self.dev
            .get(GRP_ITS_REGS, offset)
            .map_err(attr("reading an ITS register"))
    }

    fn set_reg(&self, offset: u64, v: u64) -> Result<(), KvmItsError> {
        self.dev
            .set(GRP_ITS_REGS, offset, Some(v))
            .map_err(attr("writing an ITS register"))
    }

    /// Snapshot with vCPUs paused: `gic` is the GICv3 device (its pending
    /// tables are flushed first), then ITS_SAVE_TABLES writes the tables into
    /// guest memory, then the registers are read.
    pub fn save(&self, gic: &impl DeviceAttrs) -> Result<ItsRegs, KvmItsError> {
        gic.set(GRP_CTRL, SAVE_PENDING_TABLES, None)
            .map_err(attr("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES"))?;
        self.dev
            .set(GRP_CTRL, ITS_SAVE_TABLES, None)
            .map_err(attr("KVM_DEV_ARM_ITS_SAVE_TABLES"))?;
        let mut baser = [0u64; 8];
        for (n, b) in baser.iter_mut().enumerate() {
            *b = self.reg(GITS_BASER + 8 * n as u64)?;
        }
        Ok(ItsRegs {
            iidr: self.reg(GITS_IIDR)? as u32,
            cbaser: self.reg(GITS_CBASER)?,
            creadr: self.reg(GITS_CREADR)?,
            cwriter: self.reg(GITS_CWRITER)?,
            baser,
            ctlr: self.reg(GITS_CTLR)? as u32,
        })
    }

    /// Restores into a fresh vITS (redistributors already restored, except
    /// GICR_CTLR which goes last, after this).
    pub fn restore(&self, regs: &ItsRegs) -> Result<(), KvmItsError> {
        let values = [u64::from(regs.iidr), regs.cbaser, regs.creadr, regs.cwriter];
        for (off, v) in RESTORE_ORDER.iter().zip(values) {
            self.set_reg(*off, v)?;
        }
        for (n, b) in regs.baser.iter().enumerate() {
            self.set_reg(GITS_BASER + 8 * n as u64, *b)?;
        }
        self.dev
            .set(GRP_CTRL, ITS_RESTORE_TABLES, None)
            .map_err(attr("KVM_DEV_ARM_ITS_RESTORE_TABLES"))?;
        self.set_reg(GITS_CTLR, u64::from(regs.ctlr))
    }

    /// [`KvmIts::restore`] after decoding the saved tables in `mem` for
    /// `nr_pes` PEs and LPIs below `max_lpi`: an inconsistent snapshot is
    /// refused before KVM sees it.
    pub fn restore_checked<M: GuestMemory>(
        &self,
        regs: &ItsRegs,
        mem: &M,
        nr_pes: usize,
        max_lpi: u32,
    ) -> Result<(), KvmItsError> {
        let rev = (regs.iidr >> 12) & 0xf;
        if rev != ABI_REV {
            return Err(KvmItsError::BadSnapshot(format!(
                "table ABI revision {rev}, this Caravel knows revision {ABI_REV}"
            )));
        }
        let d = tables::decode(regs, nr_pes, max_lpi, mem);
        if let Some(first) = d.issues.first() {
            return Err(KvmItsError::BadSnapshot(first.clone()));
        }
        self.restore(regs)
    }

    /// KVM_DEV_ARM_ITS_CTRL_RESET.
    pub fn reset(&self) -> Result<(), KvmItsError> {
        self.dev
            .set(GRP_CTRL, ITS_CTRL_RESET, None)
            .map_err(attr("KVM_DEV_ARM_ITS_CTRL_RESET"))
    }
}

/// An MSI as KVM wants it with an ITS: the translater address, the EventID
/// as data, and the requester ID as device ID (`KVM_MSI_VALID_DEVID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItsMsi {
    /// Guest-physical doorbell (ITS base + 0x10040).
    pub address: u64,
    /// EventID.
    pub data: u32,
    /// DeviceID (PCI requester ID: bus << 8 | devfn).
    pub devid: u32,
    /// Always [`MSI_VALID_DEVID`].
    pub flags: u32,
}

/// The MSI for `event` from requester `devid` through the ITS at `its_base`.
pub fn msi(its_base: u64, devid: u32, event: u32) -> ItsMsi {
    ItsMsi {
        address: its_base + GITS_TRANSLATER,
        data: event,
        devid,
        flags: MSI_VALID_DEVID,
    }
}

#[cfg(target_arch = "aarch64")]
mod device_fd {
    use kvm_bindings::kvm_device_attr;
    use kvm_ioctls::DeviceFd;

    use super::DeviceAttrs;

    impl DeviceAttrs for DeviceFd {
        fn set(&self, group: u32, attr: u64, value: Option<u64>) -> Result<(), i32> {
            let v = value.unwrap_or(0);
            let a = kvm_device_attr {
                flags: 0,
                group,
                attr,
                addr: if value.is_some() {
                    &v as *const u64 as u64
                } else {
                    0
                },
            };
            self.set_device_attr(&a).map_err(|e| e.errno())
        }

        fn get(&self, group: u32, attr: u64) -> Result<u64, i32> {
            let mut v: u64 = 0;
            let mut a = kvm_device_attr {
                flags: 0,
                group,
                attr,
                addr: &mut v as *mut u64 as u64,
            };
            // SAFETY: `addr` points at `v`, a live u64 KVM writes at most 8
            // bytes into for these attributes (ITS registers are read as u64).
            unsafe { self.get_device_attr(&mut a) }.map_err(|e| e.errno())?;
            Ok(v)
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn constants_match_kvm_bindings() {
            use kvm_bindings::*;
            assert_eq!(
                super::super::DEV_TYPE_ITS,
                kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS
            );
            assert_eq!(
                u64::from(super::super::GRP_CTRL),
                u64::from(KVM_DEV_ARM_VGIC_GRP_CTRL)
            );
            assert_eq!(
                super::super::ITS_SAVE_TABLES,
                u64::from(KVM_DEV_ARM_ITS_SAVE_TABLES)
            );
            assert_eq!(
                super::super::ITS_RESTORE_TABLES,
                u64::from(KVM_DEV_ARM_ITS_RESTORE_TABLES)
            );
            assert_eq!(
                super::super::ITS_CTRL_RESET,
                u64::from(KVM_DEV_ARM_ITS_CTRL_RESET)
            );
            assert_eq!(
                u64::from(super::super::GRP_ITS_REGS),
                u64::from(KVM_DEV_ARM_VGIC_GRP_ITS_REGS)
            );
            assert_eq!(
                super::super::SAVE_PENDING_TABLES,
                u64::from(KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES)
            );
            assert_eq!(
                super::super::ITS_ADDR_TYPE,
                u64::from(KVM_VGIC_ITS_ADDR_TYPE)
            );
            assert_eq!(super::super::MSI_VALID_DEVID, KVM_MSI_VALID_DEVID);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// One recorded access: set ('s') or get ('g'), group, attr, value.
    type Access = (char, u32, u64, Option<u64>);

    /// Records every attribute access.
    #[derive(Default)]
    struct Mock {
        log: RefCell<Vec<Access>>,
        fail: Option<(u32, u64)>,
    }

    impl DeviceAttrs for Mock {
        fn set(&self, group: u32, attr: u64, value: Option<u64>) -> Result<(), i32> {
            self.log.borrow_mut().push(('s', group, attr, value));
            if self.fail == Some((group, attr)) {
                return Err(22);
            }
            Ok(())
        }
        fn get(&self, group: u32, attr: u64) -> Result<u64, i32> {
            self.log.borrow_mut().push(('g', group, attr, None));
            Ok(attr * 2)
        }
    }

    #[test]
    fn init_sets_the_base_then_initialises() {
        let its = KvmIts::init(Mock::default(), 0x808_0000).unwrap();
        assert_eq!(
            *its.device().log.borrow(),
            vec![
                ('s', GRP_ADDR, ITS_ADDR_TYPE, Some(0x808_0000)),
                ('s', GRP_CTRL, CTRL_INIT, None)
            ]
        );
    }

    #[test]
    fn save_flushes_pending_tables_then_its_tables_then_reads_registers() {
        let its = KvmIts::init(Mock::default(), 0).unwrap();
        its.device().log.borrow_mut().clear();
        let gic = Mock::default();
        let regs = its.save(&gic).unwrap();
        assert_eq!(
            *gic.log.borrow(),
            vec![('s', GRP_CTRL, SAVE_PENDING_TABLES, None)]
        );
        let log = its.device().log.borrow();
        assert_eq!(
            log[0],
            ('s', GRP_CTRL, ITS_SAVE_TABLES, None),
            "tables are written before registers are read"
        );
        assert!(log[1..].iter().all(|e| e.0 == 'g' && e.1 == GRP_ITS_REGS));
        assert_eq!(regs.cbaser, GITS_CBASER * 2);
        assert_eq!(regs.baser[7], (GITS_BASER + 56) * 2);
    }

    #[test]
    fn restore_follows_kvms_documented_order() {
        let its = KvmIts::init(Mock::default(), 0).unwrap();
        its.device().log.borrow_mut().clear();
        let regs = ItsRegs {
            iidr: IIDR,
            cbaser: 1,
            creadr: 2,
            cwriter: 3,
            baser: [10, 11, 12, 13, 14, 15, 16, 17],
            ctlr: 1,
        };
        its.restore(&regs).unwrap();
        let log: Vec<(u32, u64, Option<u64>)> = its
            .device()
            .log
            .borrow()
            .iter()
            .map(|e| (e.1, e.2, e.3))
            .collect();
        let mut want = vec![
            (GRP_ITS_REGS, GITS_IIDR, Some(u64::from(IIDR))),
            (GRP_ITS_REGS, GITS_CBASER, Some(1)),
            (GRP_ITS_REGS, GITS_CREADR, Some(2)),
            (GRP_ITS_REGS, GITS_CWRITER, Some(3)),
        ];
        for n in 0..8u64 {
            want.push((GRP_ITS_REGS, GITS_BASER + 8 * n, Some(10 + n)));
        }
        want.push((GRP_CTRL, ITS_RESTORE_TABLES, None));
        want.push((GRP_ITS_REGS, GITS_CTLR, Some(1)));
        assert_eq!(log, want);
        let cbaser = log.iter().position(|e| e.1 == GITS_CBASER).unwrap();
        let creadr = log.iter().position(|e| e.1 == GITS_CREADR).unwrap();
        assert!(cbaser < creadr, "CBASER resets CREADR, so it goes first");
    }

    #[test]
    fn failures_name_the_operation() {
        let m = Mock {
            fail: Some((GRP_CTRL, ITS_RESTORE_TABLES)),
            ..Default::default()
        };
        let its = KvmIts::init(m, 0).unwrap();
        let e = its
            .restore(&ItsRegs {
                iidr: IIDR,
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "KVM_DEV_ARM_ITS_RESTORE_TABLES failed: {}",
                std::io::Error::from_raw_os_error(22)
            )
        );
        let log = its.device().log.borrow();
        assert_ne!(
            log.last().unwrap().2,
            GITS_CTLR,
            "CTLR is not written after a failed restore"
        );
    }

    #[test]
    fn a_bad_snapshot_is_refused_before_kvm_sees_it() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
                .unwrap();
        let its = KvmIts::init(Mock::default(), 0).unwrap();
        its.device().log.borrow_mut().clear();
        // Collection table outside guest memory.
        let mut regs = ItsRegs {
            iidr: IIDR,
            ..Default::default()
        };
        regs.baser[0] = BASER_VALID | 0x1_0000;
        regs.baser[1] = BASER_VALID | 0x4000_0000;
        let e = its.restore_checked(&regs, &mem, 2, 1 << 14).unwrap_err();
        assert!(
            matches!(e, KvmItsError::BadSnapshot(ref m) if m.contains("outside guest memory")),
            "{e}"
        );
        assert!(
            its.device().log.borrow().is_empty(),
            "nothing was sent to KVM"
        );
        regs.iidr = IIDR | (3 << 12);
        assert!(
            matches!(its.restore_checked(&regs, &mem, 2, 1 << 14), Err(KvmItsError::BadSnapshot(m)) if m.contains("revision 3"))
        );
    }

    #[test]
    fn msi_carries_the_device_id() {
        let m = msi(0x808_0000, 0x0010, 5);
        assert_eq!(
            m,
            ItsMsi {
                address: 0x809_0040,
                data: 5,
                devid: 0x10,
                flags: MSI_VALID_DEVID
            }
        );
    }
}
