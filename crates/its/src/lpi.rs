//! The redistributor side of LPIs: the shared configuration table
//! (GICR_PROPBASER), each PE's pending table (GICR_PENDBASER) and
//! GICR_CTLR.EnableLPIs, and per-LPI state as KVM keeps it (one pending
//! latch, one target PE, the cached enable bit and priority per INTID).

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::regs::{
    pendbaser_addr, propbaser_addr, propbaser_id_bits, LPI_BASE, LPI_ID_BITS, PENDBASER_PTZ,
};

/// Per-LPI state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lpi {
    /// Target PE (None while its collection is not mapped).
    pub target: Option<u32>,
    /// Pending latch.
    pub pending: bool,
    /// Enable bit from the configuration table, as last read.
    pub enabled: bool,
    /// Priority from the configuration table, as last read.
    pub priority: u8,
    refs: u32,
}

/// One redistributor's LPI registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redistributor {
    /// GICR_CTLR.EnableLPIs
    pub enable_lpis: bool,
    /// GICR_PENDBASER
    pub pendbaser: u64,
}

/// The LPI side of the GIC for a number of PEs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lpis {
    /// GICR_PROPBASER (KVM shares one value between all redistributors).
    pub propbaser: u64,
    rds: Vec<Redistributor>,
    irqs: BTreeMap<u32, Lpi>,
    delivered: Vec<(u32, u32)>,
    /// PEs with interrupts masked (a CPU-side state, like PSTATE.I): their
    /// LPIs stay pending until unmasked.
    masked: Vec<bool>,
}

/// Configuration byte bit 0: enabled.
pub const LPI_PROP_ENABLED: u8 = 1;

impl Lpis {
    /// `nr_pes` redistributors with LPIs disabled.
    pub fn new(nr_pes: usize) -> Self {
        Self {
            propbaser: 0,
            rds: vec![Redistributor::default(); nr_pes],
            irqs: BTreeMap::new(),
            delivered: Vec::new(),
            masked: vec![false; nr_pes],
        }
    }

    /// Number of PEs.
    pub fn nr_pes(&self) -> usize {
        self.rds.len()
    }

    /// Redistributor `pe`.
    pub fn rd(&self, pe: u32) -> Option<&Redistributor> {
        self.rds.get(pe as usize)
    }

    /// State of `lpi`, if mapped.
    pub fn lpi(&self, lpi: u32) -> Option<&Lpi> {
        self.irqs.get(&lpi)
    }

    /// Every mapped LPI.
    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Lpi)> {
        self.irqs.iter()
    }

    /// Masks or unmasks interrupts on `pe` (the PE's own state, not the
    /// GIC's). Unmasking delivers what is pending and enabled for it.
    pub fn set_masked(&mut self, pe: u32, masked: bool) {
        if let Some(m) = self.masked.get_mut(pe as usize) {
            *m = masked;
        }
        if !masked {
            self.deliver_pending_on(pe);
        }
    }

    /// Deliveries since the last call, as `(pe, intid)`, in order.
    pub fn take_delivered(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.delivered)
    }

    /// Largest LPI INTID + 1 the configuration table covers.
    pub fn max_lpi(&self) -> u32 {
        1 << propbaser_id_bits(self.propbaser).min(LPI_ID_BITS)
    }

    /// Guest write of GICR_PROPBASER (ignored while any PE has LPIs enabled,
    /// since KVM shares one table between all of them).
    pub fn write_propbaser(&mut self, v: u64) {
        if self.rds.iter().all(|r| !r.enable_lpis) {
            self.propbaser = v;
        }
    }

    /// Guest write of GICR_PENDBASER of `pe` (ignored while its LPIs are on).
    pub fn write_pendbaser(&mut self, pe: u32, v: u64) {
        if let Some(rd) = self.rds.get_mut(pe as usize) {
            if !rd.enable_lpis {
                rd.pendbaser = v;
            }
        }
    }

    /// Guest write of GICR_CTLR.EnableLPIs of `pe`. On 0 -> 1 with PTZ clear,
    /// the pending table is read into the LPIs that target the PE, and
    /// whatever is pending and enabled is delivered. Turning LPIs off is not
    /// allowed once on (KVM does not support it) and is ignored.
    pub fn write_enable_lpis<M: GuestMemory>(&mut self, pe: u32, on: bool, mem: &M) {
        let Some(rd) = self.rds.get_mut(pe as usize) else {
            return;
        };
        if !on || rd.enable_lpis {
            return;
        }
        rd.enable_lpis = true;
        let pendbaser = rd.pendbaser;
        if pendbaser & PENDBASER_PTZ == 0 {
            let table = pendbaser_addr(pendbaser);
            for (&intid, irq) in self.irqs.iter_mut().filter(|(_, i)| i.target == Some(pe)) {
                let mut b = [0u8; 1];
                if mem
                    .read_slice(&mut b, GuestAddress(table + u64::from(intid / 8)))
                    .is_ok()
                {
                    irq.pending = b[0] & (1 << (intid % 8)) != 0;
                }
            }
        }
        self.deliver_pending_on(pe);
    }

    /// Tries to deliver every LPI targeting `pe`.
    fn deliver_pending_on(&mut self, pe: u32) {
        let targets: Vec<u32> = self
            .irqs
            .iter()
            .filter(|(_, i)| i.target == Some(pe))
            .map(|(n, _)| *n)
            .collect();
        for intid in targets {
            self.try_deliver(intid);
        }
    }

    fn read_config<M: GuestMemory>(&self, intid: u32, mem: &M) -> Option<u8> {
        let addr = propbaser_addr(self.propbaser) + u64::from(intid - LPI_BASE);
        mem.read_obj::<u8>(GuestAddress(addr)).ok()
    }

    /// An ITE now names `intid` (reads its configuration if it is new).
    pub(crate) fn add_ref<M: GuestMemory>(&mut self, intid: u32, target: Option<u32>, mem: &M) {
        let cfg = self.read_config(intid, mem).unwrap_or(0);
        let e = self.irqs.entry(intid).or_insert(Lpi {
            target: None,
            pending: false,
            enabled: cfg & LPI_PROP_ENABLED != 0,
            priority: cfg & 0xfc,
            refs: 0,
        });
        e.refs += 1;
        if target.is_some() {
            e.target = target;
        }
    }

    /// An ITE no longer names `intid`; the last reference drops its state.
    pub(crate) fn drop_ref(&mut self, intid: u32) {
        if let Some(e) = self.irqs.get_mut(&intid) {
            e.refs -= 1;
            if e.refs == 0 {
                self.irqs.remove(&intid);
            }
        }
    }

    /// Points `intid` at `pe` (pending state moves with it).
    pub(crate) fn set_target(&mut self, intid: u32, pe: u32) {
        if let Some(e) = self.irqs.get_mut(&intid) {
            e.target = Some(pe);
        }
        self.try_deliver(intid);
    }

    /// Moves every LPI targeting `from` to `to`.
    pub(crate) fn move_all(&mut self, from: u32, to: u32) {
        let ids: Vec<u32> = self
            .irqs
            .iter()
            .filter(|(_, i)| i.target == Some(from))
            .map(|(n, _)| *n)
            .collect();
        for id in ids {
            self.set_target(id, to);
        }
    }

    /// Whether `pe` accepts LPIs.
    pub fn lpis_enabled(&self, pe: u32) -> bool {
        self.rds.get(pe as usize).is_some_and(|r| r.enable_lpis)
    }

    /// Sets the pending latch and delivers if possible.
    pub(crate) fn set_pending(&mut self, intid: u32) {
        if let Some(e) = self.irqs.get_mut(&intid) {
            e.pending = true;
        }
        self.try_deliver(intid);
    }

    /// Clears the pending latch.
    pub(crate) fn clear_pending(&mut self, intid: u32) {
        if let Some(e) = self.irqs.get_mut(&intid) {
            e.pending = false;
        }
    }

    /// Re-reads the configuration byte (INV, INVALL) and delivers if it is
    /// now enabled and pending.
    pub(crate) fn update_config<M: GuestMemory>(&mut self, intid: u32, mem: &M) {
        let cfg = self.read_config(intid, mem);
        if let (Some(cfg), Some(e)) = (cfg, self.irqs.get_mut(&intid)) {
            e.enabled = cfg & LPI_PROP_ENABLED != 0;
            e.priority = cfg & 0xfc;
        }
        self.try_deliver(intid);
    }

    /// Re-reads every LPI that targets `pe` (INVALL).
    pub(crate) fn update_config_of_pe<M: GuestMemory>(&mut self, pe: u32, mem: &M) {
        let ids: Vec<u32> = self
            .irqs
            .iter()
            .filter(|(_, i)| i.target == Some(pe))
            .map(|(n, _)| *n)
            .collect();
        for id in ids {
            self.update_config(id, mem);
        }
    }

    /// Delivery: pending, enabled, and the target PE has LPIs on. The PE takes
    /// the interrupt at once (delivery is the acknowledgement).
    fn try_deliver(&mut self, intid: u32) {
        let Some(e) = self.irqs.get_mut(&intid) else {
            return;
        };
        let Some(pe) = e.target else { return };
        let masked = self.masked.get(pe as usize).copied().unwrap_or(true);
        if e.pending
            && e.enabled
            && !masked
            && self.rds.get(pe as usize).is_some_and(|r| r.enable_lpis)
        {
            e.pending = false;
            self.delivered.push((pe, intid));
        }
    }

    /// KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES: writes each LPI's pending bit
    /// into its target PE's pending table.
    pub fn save_pending_tables<M: GuestMemory>(&self, mem: &M) -> Result<(), u64> {
        for (&intid, e) in &self.irqs {
            let Some(rd) = e.target.and_then(|pe| self.rds.get(pe as usize)) else {
                continue;
            };
            let addr = GuestAddress(pendbaser_addr(rd.pendbaser) + u64::from(intid / 8));
            let mut b: u8 = mem.read_obj(addr).map_err(|_| addr.0)?;
            if e.pending {
                b |= 1 << (intid % 8);
            } else {
                b &= !(1 << (intid % 8));
            }
            mem.write_obj(b, addr).map_err(|_| addr.0)?;
        }
        Ok(())
    }

    /// The redistributor registers of every PE (for snapshots).
    pub fn redistributors(&self) -> Vec<Redistributor> {
        self.rds.clone()
    }
}
