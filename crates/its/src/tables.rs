//! Save and restore of the translation state in guest memory, in KVM's ITS
//! table ABI revision 0 (Documentation/virt/kvm/devices/arm-vgic-its.rst):
//!
//! * DTE (device table, indexed by DeviceID): `[63] V | [62:49] next |
//!   [48:5] ITT_addr[51:8] | [4:0] Size`;
//! * ITE (ITT, indexed by EventID): `[63:48] next | [47:16] pINTID |
//!   [15:0] ICID` (pINTID 0 = no entry);
//! * CTE (collection table, **not** indexed: packed, ended by an invalid
//!   entry): `[63] V | [51:16] RDBase (PE number, 0xffffffff = not mapped) |
//!   [15:0] ICID`.
//!
//! `next` is the distance to the next valid entry (0: last), capped at the
//! field's maximum. [`decode`] reads the tables back leniently, collecting
//! every inconsistency; [`restore_tables`] refuses any.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::its::{Device, Ite, ItsRegs};
use crate::lpi::Lpis;
use crate::regs::*;
use crate::Its;

/// RDBase of a collection that exists but is not mapped.
pub const COLLECTION_NOT_MAPPED: u64 = 0xffff_ffff;
const DTE_NEXT_MAX: u64 = (1 << 14) - 1;
const ITE_NEXT_MAX: u64 = (1 << 16) - 1;
const ENTRIES_PER_PAGE: u64 = TABLE_PAGE / TABLE_ENTRY_SIZE;

/// A failure to save or restore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A table or ITT lies outside guest memory.
    #[error("{what} at {addr:#x} is outside guest memory")]
    Memory {
        /// Which table.
        what: &'static str,
        /// Guest-physical address.
        addr: u64,
    },
    /// A table BASER is not valid.
    #[error("GITS_BASER{0} is not valid")]
    NoTable(usize),
    /// The saved data are inconsistent.
    #[error("inconsistent ITS tables: {0}")]
    Inconsistent(String),
}

fn write_entry<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    addr: u64,
    v: u64,
) -> Result<(), TableError> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|_| TableError::Memory { what, addr })
}

/// Address of entry `id` of table `baser` (None beyond it, or for an
/// indirect table whose level-2 page is not valid).
fn entry_addr<M: GuestMemory>(baser: u64, id: u64, mem: &M) -> Option<u64> {
    let size = baser_pages(baser) * TABLE_PAGE;
    if baser & BASER_INDIRECT == 0 {
        return (id < size / TABLE_ENTRY_SIZE).then(|| baser_addr(baser) + id * TABLE_ENTRY_SIZE);
    }
    let l1 = id / ENTRIES_PER_PAGE;
    if l1 >= size / 8 {
        return None;
    }
    let e: u64 = mem
        .read_obj(GuestAddress(baser_addr(baser) + l1 * 8))
        .ok()?;
    (e >> 63 == 1).then(|| (e & 0x000f_ffff_ffff_0000) + (id % ENTRIES_PER_PAGE) * TABLE_ENTRY_SIZE)
}

/// KVM_DEV_ARM_ITS_SAVE_TABLES: writes the device table, every ITT and the
/// collection table into guest memory.
pub fn save_tables<M: GuestMemory>(its: &Its, mem: &M) -> Result<(), TableError> {
    let regs = its.regs();
    let (dt, ct) = (regs.baser[0], regs.baser[1]);
    if dt & BASER_VALID == 0 {
        return Err(TableError::NoTable(0));
    }
    if ct & BASER_VALID == 0 {
        return Err(TableError::NoTable(1));
    }
    let ids: Vec<u32> = its.devices.keys().copied().collect();
    for (i, (&id, dev)) in its.devices.iter().enumerate() {
        let next = ids
            .get(i + 1)
            .map_or(0, |n| u64::from(n - id).min(DTE_NEXT_MAX));
        let addr = entry_addr(dt, u64::from(id), mem).ok_or(TableError::Memory {
            what: "device table entry",
            addr: baser_addr(dt),
        })?;
        let dte = (1 << 63)
            | (next << 49)
            | (((dev.itt >> 8) & ((1 << 44) - 1)) << 5)
            | u64::from(dev.size);
        write_entry(mem, "device table entry", addr, dte)?;
        let events: Vec<u32> = dev.events.keys().copied().collect();
        for (j, (&ev, ite)) in dev.events.iter().enumerate() {
            let next = events
                .get(j + 1)
                .map_or(0, |n| u64::from(n - ev).min(ITE_NEXT_MAX));
            let v = (next << 48) | (u64::from(ite.lpi) << 16) | u64::from(ite.icid);
            write_entry(
                mem,
                "ITT entry",
                dev.itt + u64::from(ev) * ITT_ENTRY_SIZE,
                v,
            )?;
        }
    }
    let capacity = baser_pages(ct) * ENTRIES_PER_PAGE;
    let base = baser_addr(ct);
    let mut n = 0;
    for (&icid, &pe) in &its.collections {
        let rd = pe.map_or(COLLECTION_NOT_MAPPED, u64::from);
        write_entry(
            mem,
            "collection table entry",
            base + n * 8,
            (1 << 63) | (rd << 16) | u64::from(icid),
        )?;
        n += 1;
    }
    if n < capacity {
        write_entry(mem, "collection table entry", base + n * 8, 0)?;
    }
    Ok(())
}

/// The translation state read back from saved tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Collections and their target PE (None: not mapped).
    pub collections: BTreeMap<u16, Option<u32>>,
    /// Devices and their events.
    pub devices: BTreeMap<u32, Device>,
    /// Everything inconsistent, in reading order: a restore refuses these.
    pub issues: Vec<String>,
    /// Oddities a restore accepts (an LPI named by several events), in
    /// reading order.
    pub warnings: Vec<String>,
}

/// Reads saved tables described by `regs` (BASER0/1), for `nr_pes` PEs and
/// LPIs below `max_lpi`. Never fails: problems go to [`Decoded::issues`]
/// and [`Decoded::warnings`].
pub fn decode<M: GuestMemory>(regs: &ItsRegs, nr_pes: usize, max_lpi: u32, mem: &M) -> Decoded {
    let mut d = Decoded::default();
    let (dt, ct) = (regs.baser[0], regs.baser[1]);
    if ct & BASER_VALID != 0 {
        let base = baser_addr(ct);
        for n in 0..baser_pages(ct) * ENTRIES_PER_PAGE {
            let Ok(cte) = mem.read_obj::<u64>(GuestAddress(base + n * 8)) else {
                d.issues.push(format!(
                    "collection table entry {n} at {:#x} is outside guest memory",
                    base + n * 8
                ));
                break;
            };
            if cte >> 63 == 0 {
                break;
            }
            let icid = cte as u16;
            let rd = (cte >> 16) & 0xf_ffff_ffff;
            let pe = if rd == COLLECTION_NOT_MAPPED {
                None
            } else if rd < nr_pes as u64 {
                Some(rd as u32)
            } else {
                d.issues.push(format!(
                    "collection {icid} targets PE {rd}, but there are {nr_pes} PEs"
                ));
                continue;
            };
            if d.collections.insert(icid, pe).is_some() {
                d.issues.push(format!(
                    "collection {icid} appears twice in the collection table"
                ));
            }
        }
    } else {
        d.issues
            .push("GITS_BASER1 (collection table) is not valid".into());
    }
    if dt & BASER_VALID == 0 {
        d.issues
            .push("GITS_BASER0 (device table) is not valid".into());
        return d;
    }
    let capacity = if dt & BASER_INDIRECT == 0 {
        baser_pages(dt) * ENTRIES_PER_PAGE
    } else {
        baser_pages(dt) * TABLE_PAGE / 8 * ENTRIES_PER_PAGE
    };
    let mut id: u64 = 0;
    while id < capacity.min(1 << DEVICE_ID_BITS) {
        let Some(addr) = entry_addr(dt, id, mem) else {
            // Indirect: no level-2 page here; skip to the next one.
            id = (id / ENTRIES_PER_PAGE + 1) * ENTRIES_PER_PAGE;
            continue;
        };
        let Ok(dte) = mem.read_obj::<u64>(GuestAddress(addr)) else {
            d.issues.push(format!(
                "device table entry {id} at {addr:#x} is outside guest memory"
            ));
            break;
        };
        if dte >> 63 == 0 {
            id += 1;
            continue;
        }
        let size = (dte & 0x1f) as u8;
        let itt = ((dte >> 5) & ((1 << 44) - 1)) << 8;
        let next = (dte >> 49) & DTE_NEXT_MAX;
        if u32::from(size) + 1 > EVENT_ID_BITS {
            d.issues.push(format!(
                "device {id}: ITT of {} EventID bits (at most {EVENT_ID_BITS})",
                size + 1
            ));
        } else {
            let mut dev = Device {
                size,
                itt,
                events: BTreeMap::new(),
            };
            decode_itt(
                id as u32,
                &mut dev,
                &d.collections,
                max_lpi,
                mem,
                &mut d.issues,
            );
            d.devices.insert(id as u32, dev);
        }
        if next == 0 {
            break;
        }
        id += next;
    }
    // Warn about LPIs named by more than one event.
    let mut by_lpi: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for (dev, dv) in &d.devices {
        for (ev, ite) in &dv.events {
            by_lpi.entry(ite.lpi).or_default().push((*dev, *ev));
        }
    }
    for (lpi, users) in by_lpi.into_iter().filter(|(_, u)| u.len() > 1) {
        d.warnings
            .push(format!("LPI {lpi} is mapped by several events: {users:?}"));
    }
    d
}

fn decode_itt<M: GuestMemory>(
    device: u32,
    dev: &mut Device,
    collections: &BTreeMap<u16, Option<u32>>,
    max_lpi: u32,
    mem: &M,
    issues: &mut Vec<String>,
) {
    let mut ev: u64 = 0;
    while ev < dev.nr_events() {
        let addr = dev.itt + ev * ITT_ENTRY_SIZE;
        let Ok(ite) = mem.read_obj::<u64>(GuestAddress(addr)) else {
            issues.push(format!(
                "device {device}: ITT entry {ev} at {addr:#x} is outside guest memory"
            ));
            return;
        };
        let lpi = ((ite >> 16) & 0xffff_ffff) as u32;
        if lpi == 0 {
            ev += 1;
            continue;
        }
        let icid = ite as u16;
        let next = ite >> 48;
        if lpi < LPI_BASE || lpi >= max_lpi {
            issues.push(format!(
                "device {device} event {ev}: LPI {lpi} outside {LPI_BASE}..{max_lpi}"
            ));
        } else if !collections.contains_key(&icid) {
            issues.push(format!(
                "device {device} event {ev}: collection {icid} is not in the collection table"
            ));
        } else {
            dev.events.insert(ev as u32, Ite { lpi, icid });
        }
        if next == 0 {
            return;
        }
        ev += next;
    }
}

/// KVM_DEV_ARM_ITS_RESTORE_TABLES: with the registers already restored
/// ([`Its::restore_regs`]) and the redistributors' PROPBASER set, rebuilds the
/// translation state from guest memory. All or nothing: on any inconsistency
/// the ITS is left without translation state and the error says why.
pub fn restore_tables<M: GuestMemory>(
    its: &mut Its,
    lpis: &mut Lpis,
    mem: &M,
) -> Result<(), TableError> {
    if its.enabled() {
        return Err(TableError::Inconsistent(
            "the ITS is enabled; restore GITS_CTLR after the tables".into(),
        ));
    }
    let d = decode(&its.regs(), lpis.nr_pes(), lpis.max_lpi(), mem);
    if let Some(first) = d.issues.first() {
        return Err(TableError::Inconsistent(first.clone()));
    }
    for dev in d.devices.values() {
        for ite in dev.events.values() {
            lpis.add_ref(
                ite.lpi,
                d.collections.get(&ite.icid).copied().flatten(),
                mem,
            );
        }
    }
    its.devices = d.devices;
    its.collections = d.collections;
    Ok(())
}
