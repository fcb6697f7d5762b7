//! The ITS: registers, the command queue, and the translation state
//! (devices, their events, collections).
//!
//! Guest-visible behaviour follows KVM's vITS: commands are processed
//! synchronously when CWRITER (or CTLR.Enabled) is written, only while the
//! ITS is enabled; an invalid command is ignored and CREADR advances past it.
//! Unlike KVM, every ignored command is recorded with its reason in
//! [`Its::dropped`], so tests can assert why.

use std::collections::{BTreeMap, VecDeque};

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::cmd::Command;
use crate::lpi::Lpis;
use crate::regs::*;

/// An ITT entry: the LPI an event raises and its collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ite {
    /// Physical LPI INTID.
    pub lpi: u32,
    /// Collection.
    pub icid: u16,
}

/// A mapped device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// EventID bits - 1 (MAPD Size).
    pub size: u8,
    /// ITT address.
    pub itt: u64,
    /// Events.
    pub events: BTreeMap<u32, Ite>,
}

impl Device {
    /// Number of EventIDs the ITT covers.
    pub fn nr_events(&self) -> u64 {
        1 << (u32::from(self.size) + 1)
    }
}

/// Why a command was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The DeviceID is not mapped.
    UnmappedDevice(u32),
    /// The DeviceID is beyond the device table (or its level-2 page is invalid).
    DeviceOutOfRange(u32),
    /// MAPD Size above the 16 EventID bits.
    IttSizeTooLarge(u8),
    /// MAPD of an ITT that is not entirely in guest memory.
    IttOutsideMemory {
        /// DeviceID.
        device: u32,
        /// ITT address.
        itt: u64,
    },
    /// The EventID is beyond the device's ITT.
    EventOutOfRange {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// The event has no mapping.
    UnmappedEvent {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// The collection ID is beyond the collection table.
    CollectionOutOfRange(u16),
    /// The collection is not mapped to a PE.
    UnmappedCollection(u16),
    /// The PE number is not a PE of this machine.
    PeOutOfRange(u64),
    /// The LPI INTID is below 8192 or beyond the configuration table.
    LpiOutOfRange(u32),
    /// The target PE has not enabled LPIs.
    LpisDisabled(u32),
    /// A GICv4 command on this GICv3-only ITS.
    VirtualCommand(u8),
    /// Not a command.
    UnknownCommand(u8),
    /// The command could not be read from guest memory.
    Unreadable(u64),
    /// An MSI arrived while the ITS is disabled.
    ItsDisabled,
}

/// An ignored command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Queue offset of the command (or `u64::MAX` for a TRANSLATER write).
    pub offset: u64,
    /// Command number.
    pub command: u8,
    /// Why.
    pub reason: DropReason,
}

/// How many drops are remembered (the oldest go first).
pub const DROP_LOG_LEN: usize = 1024;

/// Register values a snapshot carries (KVM_DEV_ARM_VGIC_GRP_ITS_REGS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItsRegs {
    /// GITS_IIDR (its Revision is the table ABI).
    pub iidr: u32,
    /// GITS_CBASER
    pub cbaser: u64,
    /// GITS_CREADR
    pub creadr: u64,
    /// GITS_CWRITER
    pub cwriter: u64,
    /// GITS_BASER0..7
    pub baser: [u64; 8],
    /// GITS_CTLR
    pub ctlr: u32,
}

/// The interrupt translation service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Its {
    enabled: bool,
    iidr: u32,
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    baser: [u64; 8],
    pub(crate) devices: BTreeMap<u32, Device>,
    /// Collections that exist, and the PE each targets (None: not mapped).
    pub(crate) collections: BTreeMap<u16, Option<u32>>,
    dropped: VecDeque<Dropped>,
}

impl Default for Its {
    fn default() -> Self {
        Self::new()
    }
}

fn merge64(old: u64, offset: u64, data: &[u8]) -> u64 {
    match (data.len(), offset & 7) {
        (8, 0) => u64::from_le_bytes(data.try_into().unwrap_or_default()),
        (4, 0) => {
            (old & !0xffff_ffff)
                | u64::from(u32::from_le_bytes(data.try_into().unwrap_or_default()))
        }
        (4, 4) => {
            (old & 0xffff_ffff)
                | (u64::from(u32::from_le_bytes(data.try_into().unwrap_or_default())) << 32)
        }
        _ => old,
    }
}

impl Its {
    /// An ITS in its reset state.
    pub fn new() -> Self {
        let mut baser = [0u64; 8];
        for (n, b) in baser.iter_mut().enumerate() {
            *b = baser_ro(n);
        }
        Self {
            enabled: false,
            iidr: IIDR,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            baser,
            devices: BTreeMap::new(),
            collections: BTreeMap::new(),
            dropped: VecDeque::new(),
        }
    }

    /// KVM_DEV_ARM_ITS_CTRL_RESET: disabled, BASERs invalid, command queue
    /// cleared, no translation state; the ABI revision is kept.
    pub fn reset(&mut self) {
        let iidr = self.iidr;
        *self = Self::new();
        self.iidr = iidr;
    }

    /// GITS_CTLR.Enabled
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The mapped devices.
    pub fn devices(&self) -> &BTreeMap<u32, Device> {
        &self.devices
    }

    /// The collections and their target PEs.
    pub fn collections(&self) -> &BTreeMap<u16, Option<u32>> {
        &self.collections
    }

    /// Commands ignored so far (at most [`DROP_LOG_LEN`], oldest first).
    pub fn dropped(&self) -> impl Iterator<Item = &Dropped> {
        self.dropped.iter()
    }

    /// Forgets the drop log.
    pub fn clear_dropped(&mut self) {
        self.dropped.clear();
    }

    fn drop_cmd(&mut self, offset: u64, command: u8, reason: DropReason) {
        if self.dropped.len() == DROP_LOG_LEN {
            self.dropped.pop_front();
        }
        self.dropped.push_back(Dropped {
            offset,
            command,
            reason,
        });
    }

    /// The registers a snapshot saves.
    pub fn regs(&self) -> ItsRegs {
        ItsRegs {
            iidr: self.iidr,
            cbaser: self.cbaser,
            creadr: self.creadr,
            cwriter: self.cwriter,
            baser: self.baser,
            ctlr: self.ctlr(),
        }
    }

    fn ctlr(&self) -> u32 {
        let mut v = u32::from(self.enabled);
        if self.creadr == self.cwriter {
            v |= CTLR_QUIESCENT;
        }
        v
    }

    /// Guest read of the register frame (32- or 64-bit; others read 0).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let v64 = |reg: u64| -> Option<u64> {
            Some(match reg {
                GITS_TYPER => TYPER,
                GITS_CBASER => self.cbaser,
                GITS_CWRITER => self.cwriter,
                GITS_CREADR => self.creadr,
                r if (GITS_BASER..GITS_BASER + 64).contains(&r) => {
                    self.baser[((r - GITS_BASER) / 8) as usize]
                }
                _ => return None,
            })
        };
        data.fill(0);
        let value: u64 = match (data.len(), offset) {
            (4, GITS_CTLR) => u64::from(self.ctlr()),
            (4, GITS_IIDR) => u64::from(self.iidr),
            (4, o) if (0xffd0..0x10000).contains(&o) => u64::from(id_reg(o)),
            (8, o) if o % 8 == 0 => v64(o).unwrap_or(0),
            (4, o) if o % 4 == 0 => {
                v64(o & !7).map_or(0, |v| if o & 4 == 0 { v & 0xffff_ffff } else { v >> 32 })
            }
            _ => 0,
        };
        let n = data.len().min(8);
        data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
    }

    /// Guest write of the register frame. `lpis` and `mem` are used when the
    /// write makes the ITS process commands.
    pub fn mmio_write<M: GuestMemory>(
        &mut self,
        offset: u64,
        data: &[u8],
        lpis: &mut Lpis,
        mem: &M,
    ) {
        match (data.len(), offset) {
            (4, GITS_CTLR) => {
                let v = u32::from_le_bytes(data.try_into().unwrap_or_default());
                self.write_ctlr(v, lpis, mem);
            }
            (4 | 8, o) if (GITS_CBASER..GITS_CBASER + 8).contains(&o) && !self.enabled => {
                self.cbaser = merge64(self.cbaser, o - GITS_CBASER, data) & CBASER_WRITABLE;
                // KVM resets both pointers so the queue starts empty.
                self.creadr = 0;
                self.cwriter = 0;
            }
            (4 | 8, o) if (GITS_CWRITER..GITS_CWRITER + 8).contains(&o) => {
                let v = merge64(self.cwriter, o - GITS_CWRITER, data) & QUEUE_OFFSET_MASK;
                if v < cbaser_size(self.cbaser) {
                    self.cwriter = v;
                    self.process_commands(lpis, mem);
                }
            }
            (4 | 8, o) if (GITS_BASER..GITS_BASER + 64).contains(&o) => {
                let n = ((o - GITS_BASER) / 8) as usize;
                if self.enabled || baser_ro(n) == 0 {
                    return;
                }
                let v = merge64(self.baser[n], (o - GITS_BASER) % 8, data);
                self.baser[n] = (v & baser_writable(n)) | baser_ro(n);
                if self.baser[n] & BASER_VALID == 0 {
                    // An invalid table frees what it held (as KVM does).
                    if n == 0 {
                        self.free_devices(lpis);
                    } else {
                        self.collections.clear();
                    }
                }
            }
            _ => {} // read-only or reserved: write ignored
        }
    }

    fn write_ctlr<M: GuestMemory>(&mut self, v: u32, lpis: &mut Lpis, mem: &M) {
        let enable = v & CTLR_ENABLED != 0;
        if enable && !self.enabled {
            let ready = self.cbaser & CBASER_VALID != 0
                && self.baser[0] & BASER_VALID != 0
                && self.baser[1] & BASER_VALID != 0;
            if !ready {
                return; // UNPREDICTABLE; KVM ignores the write.
            }
        }
        self.enabled = enable;
        self.process_commands(lpis, mem);
    }

    fn free_devices(&mut self, lpis: &mut Lpis) {
        for (_, d) in std::mem::take(&mut self.devices) {
            for ite in d.events.values() {
                lpis.drop_ref(ite.lpi);
            }
        }
    }

    /// Consumes the queue from CREADR to CWRITER.
    fn process_commands<M: GuestMemory>(&mut self, lpis: &mut Lpis, mem: &M) {
        if !self.enabled || self.cbaser & CBASER_VALID == 0 {
            return;
        }
        let base = cbaser_addr(self.cbaser);
        let size = cbaser_size(self.cbaser);
        // Each command advances CREADR; at most one lap per kick.
        for _ in 0..size / 32 {
            if self.creadr == self.cwriter {
                break;
            }
            let off = self.creadr;
            let mut raw = [0u8; 32];
            match mem.read_slice(&mut raw, GuestAddress(base + off)) {
                Ok(()) => self.execute(off, Command::decode(&raw), lpis, mem),
                Err(_) => self.drop_cmd(off, 0, DropReason::Unreadable(base + off)),
            }
            self.creadr = (off + 32) % size;
        }
    }

    /// Whether the entry for `id` in table `n` exists (in range, and for an
    /// indirect table, with a valid level-2 page).
    fn table_has<M: GuestMemory>(&self, n: usize, id: u64, mem: &M) -> bool {
        let baser = self.baser[n];
        if baser & BASER_VALID == 0 {
            return false;
        }
        let per_page = TABLE_PAGE / TABLE_ENTRY_SIZE;
        let size = baser_pages(baser) * TABLE_PAGE;
        if baser & BASER_INDIRECT == 0 {
            return id < size / TABLE_ENTRY_SIZE;
        }
        let l1 = id / per_page;
        if l1 >= size / 8 {
            return false;
        }
        mem.read_obj::<u64>(GuestAddress(baser_addr(baser) + l1 * 8))
            .is_ok_and(|e| e >> 63 == 1)
    }

    fn ite(&self, device: u32, event: u32) -> Result<Ite, DropReason> {
        let d = self
            .devices
            .get(&device)
            .ok_or(DropReason::UnmappedDevice(device))?;
        d.events
            .get(&event)
            .copied()
            .ok_or(DropReason::UnmappedEvent { device, event })
    }

    fn mapped_target(&self, icid: u16) -> Result<u32, DropReason> {
        self.collections
            .get(&icid)
            .copied()
            .flatten()
            .ok_or(DropReason::UnmappedCollection(icid))
    }

    fn check_pe(&self, pe: u64, lpis: &Lpis) -> Result<u32, DropReason> {
        if pe < lpis.nr_pes() as u64 {
            Ok(pe as u32)
        } else {
            Err(DropReason::PeOutOfRange(pe))
        }
    }

    /// Carries out one command; invalid ones are recorded and ignored.
    fn execute<M: GuestMemory>(&mut self, offset: u64, cmd: Command, lpis: &mut Lpis, mem: &M) {
        let n = cmd.number();
        if let Err(reason) = self.try_execute(cmd, lpis, mem) {
            self.drop_cmd(offset, n, reason);
        }
    }

    fn try_execute<M: GuestMemory>(
        &mut self,
        cmd: Command,
        lpis: &mut Lpis,
        mem: &M,
    ) -> Result<(), DropReason> {
        match cmd {
            Command::Mapd {
                device,
                size,
                itt,
                valid,
            } => {
                if !self.table_has(0, u64::from(device), mem) {
                    return Err(DropReason::DeviceOutOfRange(device));
                }
                if valid && u32::from(size) + 1 > EVENT_ID_BITS {
                    return Err(DropReason::IttSizeTooLarge(size));
                }
                // KVM accepts any ITT address but then cannot restore the
                // tables it saved (its ITT scan faults); refusing up front
                // keeps save/restore round-tripping.
                let itt_len = (1usize << (size + 1)) * ITT_ENTRY_SIZE as usize;
                if valid && !mem.check_range(GuestAddress(itt), itt_len, Permissions::ReadWrite) {
                    return Err(DropReason::IttOutsideMemory { device, itt });
                }
                // Remapping a mapped device frees it first.
                if let Some(old) = self.devices.remove(&device) {
                    for ite in old.events.values() {
                        lpis.drop_ref(ite.lpi);
                    }
                }
                if valid {
                    self.devices.insert(
                        device,
                        Device {
                            size,
                            itt,
                            events: BTreeMap::new(),
                        },
                    );
                }
                Ok(())
            }
            Command::Mapc { icid, pe, valid } => {
                let pe = self.check_pe(pe, lpis)?;
                if !valid {
                    // Events keep their ICID; while some still name it the
                    // collection exists, unmapped (saved as not mapped).
                    let referenced = self
                        .devices
                        .values()
                        .flat_map(|d| d.events.values())
                        .any(|i| i.icid == icid);
                    if referenced {
                        self.collections.insert(icid, None);
                    } else {
                        self.collections.remove(&icid);
                    }
                    return Ok(());
                }
                if !self.collections.contains_key(&icid) && !self.table_has(1, u64::from(icid), mem)
                {
                    return Err(DropReason::CollectionOutOfRange(icid));
                }
                self.collections.insert(icid, Some(pe));
                // Events of this collection now target the PE.
                let lpis_of: Vec<u32> = self
                    .devices
                    .values()
                    .flat_map(|d| d.events.values())
                    .filter(|i| i.icid == icid)
                    .map(|i| i.lpi)
                    .collect();
                for lpi in lpis_of {
                    lpis.set_target(lpi, pe);
                }
                Ok(())
            }
            Command::Mapti {
                device,
                event,
                lpi,
                icid,
            } => self.mapti(device, event, lpi, icid, lpis, mem),
            Command::Mapi {
                device,
                event,
                icid,
            } => self.mapti(device, event, event, icid, lpis, mem),
            Command::Int { device, event } => self.raise(device, event, lpis),
            Command::Clear { device, event } => {
                let ite = self.ite(device, event)?;
                lpis.clear_pending(ite.lpi);
                Ok(())
            }
            Command::Discard { device, event } => {
                self.ite(device, event)?;
                if let Some(ite) = self
                    .devices
                    .get_mut(&device)
                    .and_then(|d| d.events.remove(&event))
                {
                    lpis.drop_ref(ite.lpi);
                }
                Ok(())
            }
            Command::Inv { device, event } => {
                let ite = self.ite(device, event)?;
                lpis.update_config(ite.lpi, mem);
                Ok(())
            }
            Command::Invall { icid } => {
                let pe = self.mapped_target(icid)?;
                lpis.update_config_of_pe(pe, mem);
                Ok(())
            }
            Command::Movi {
                device,
                event,
                icid,
            } => {
                let ite = self.ite(device, event)?;
                self.mapped_target(ite.icid)?;
                let pe = self.mapped_target(icid)?;
                if let Some(i) = self
                    .devices
                    .get_mut(&device)
                    .and_then(|d| d.events.get_mut(&event))
                {
                    i.icid = icid;
                }
                lpis.set_target(ite.lpi, pe);
                Ok(())
            }
            Command::Movall { from, to } => {
                let from = self.check_pe(from, lpis)?;
                let to = self.check_pe(to, lpis)?;
                if from != to {
                    lpis.move_all(from, to);
                }
                Ok(())
            }
            Command::Sync { .. } => Ok(()), // always in sync: commands run synchronously
            Command::Virtual(n) => Err(DropReason::VirtualCommand(n)),
            Command::Unknown(n) => Err(DropReason::UnknownCommand(n)),
        }
    }

    fn mapti<M: GuestMemory>(
        &mut self,
        device: u32,
        event: u32,
        lpi: u32,
        icid: u16,
        lpis: &mut Lpis,
        mem: &M,
    ) -> Result<(), DropReason> {
        let d = self
            .devices
            .get(&device)
            .ok_or(DropReason::UnmappedDevice(device))?;
        if u64::from(event) >= d.nr_events() {
            return Err(DropReason::EventOutOfRange { device, event });
        }
        if lpi < LPI_BASE || lpi >= lpis.max_lpi() {
            return Err(DropReason::LpiOutOfRange(lpi));
        }
        if d.events.contains_key(&event) {
            // UNPREDICTABLE; KVM keeps the existing mapping.
            return Ok(());
        }
        if !self.collections.contains_key(&icid) {
            if !self.table_has(1, u64::from(icid), mem) {
                return Err(DropReason::CollectionOutOfRange(icid));
            }
            self.collections.insert(icid, None);
        }
        let target = self.collections.get(&icid).copied().flatten();
        if let Some(d) = self.devices.get_mut(&device) {
            d.events.insert(event, Ite { lpi, icid });
        }
        lpis.add_ref(lpi, target, mem);
        Ok(())
    }

    /// INT, or an MSI: makes the event's LPI pending on its collection's PE.
    fn raise(&self, device: u32, event: u32, lpis: &mut Lpis) -> Result<(), DropReason> {
        let ite = self.ite(device, event)?;
        let pe = self.mapped_target(ite.icid)?;
        if !lpis.lpis_enabled(pe) {
            return Err(DropReason::LpisDisabled(pe));
        }
        lpis.set_pending(ite.lpi);
        Ok(())
    }

    /// An MSI: a write of `event` to GITS_TRANSLATER by `device`. Returns
    /// whether an LPI was made pending (KVM_SIGNAL_MSI's "delivered").
    pub fn translate(&mut self, device: u32, event: u32, lpis: &mut Lpis) -> bool {
        let r = (|| {
            if !self.enabled {
                return Err(DropReason::ItsDisabled);
            }
            self.raise(device, event, lpis)
        })();
        match r {
            Ok(()) => true,
            Err(reason) => {
                self.drop_cmd(u64::MAX, 0, reason);
                false
            }
        }
    }

    /// Restore path (KVM_DEV_ARM_VGIC_GRP_ITS_REGS writes): IIDR, CBASER,
    /// CREADR, CWRITER, BASERn, in that order, before the tables. Fails like
    /// KVM for an unknown ABI revision or an out-of-range CREADR.
    pub fn restore_regs(&mut self, regs: &ItsRegs) -> Result<(), RegsError> {
        if self.enabled {
            return Err(RegsError::Enabled);
        }
        let rev = (regs.iidr >> 12) & 0xf;
        if rev != ABI_REV {
            return Err(RegsError::AbiRevision(rev));
        }
        self.iidr = IIDR;
        self.cbaser = regs.cbaser & CBASER_WRITABLE;
        let size = cbaser_size(self.cbaser);
        let creadr = regs.creadr & QUEUE_OFFSET_MASK;
        let cwriter = regs.cwriter & QUEUE_OFFSET_MASK;
        if creadr >= size || cwriter >= size {
            return Err(RegsError::QueueOffset {
                creadr,
                cwriter,
                size,
            });
        }
        self.creadr = creadr;
        self.cwriter = cwriter;
        for n in 0..8 {
            self.baser[n] = (regs.baser[n] & baser_writable(n)) | baser_ro(n);
        }
        Ok(())
    }

    /// Last restore step: GITS_CTLR.
    pub fn restore_ctlr<M: GuestMemory>(&mut self, ctlr: u32, lpis: &mut Lpis, mem: &M) {
        self.write_ctlr(ctlr, lpis, mem);
    }
}

/// A register value refused on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegsError {
    /// Registers can only be restored while the ITS is disabled.
    #[error("the ITS is enabled (restore registers before GITS_CTLR)")]
    Enabled,
    /// The saved table ABI revision is not one this model knows.
    #[error("unsupported ITS table ABI revision {0} (this model knows revision 0)")]
    AbiRevision(u32),
    /// CREADR or CWRITER beyond the command queue.
    #[error("CREADR {creadr:#x} / CWRITER {cwriter:#x} beyond the {size}-byte command queue")]
    QueueOffset {
        /// CREADR
        creadr: u64,
        /// CWRITER
        cwriter: u64,
        /// Queue size.
        size: u64,
    },
}
