//! Address-range dispatch for port I/O and MMIO exits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device on a [`Bus`]. `offset` is relative to the base it was inserted at.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why an insertion was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps a device already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// Zero length or wrapping range.
    #[error("invalid range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedDevice,
    /// Accesses dispatched to it (exits, on a vCPU's bus).
    accesses: Arc<AtomicU64>,
}

/// Most addresses nobody claims that are counted one by one; accesses to
/// others are counted together.
const UNCLAIMED_TRACKED: usize = 32;

#[derive(Default)]
struct CountsInner {
    /// Each range's base: its length and access count.
    ranges: BTreeMap<u64, (u64, Arc<AtomicU64>)>,
    /// Accesses nobody claimed, by address.
    unclaimed: BTreeMap<u64, u64>,
    /// Unclaimed accesses beyond [`UNCLAIMED_TRACKED`] addresses.
    unclaimed_other: u64,
    /// Writes KVM queued without an exit ([`Bus::write_coalesced`]).
    coalesced: u64,
}

/// How often each range of a [`Bus`] was accessed, and which addresses
/// nobody claims: readable without the bus (it holds no device).
#[derive(Clone, Default)]
pub struct BusCounts(Arc<RwLock<CountsInner>>);

impl std::fmt::Debug for BusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl BusCounts {
    /// `(name, count)` per range accessed at least once (`"0x3f8+8"`) and
    /// per unclaimed address (`"unclaimed 0x80"`, `"unclaimed other"`),
    /// in address order; then the writes that came without an exit
    /// (`"coalesced writes"`), which the ranges' counts leave out.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let c = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64)> = c
            .ranges
            .iter()
            .map(|(base, (len, n))| (format!("{base:#x}+{len:#x}"), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.extend(
            c.unclaimed
                .iter()
                .map(|(addr, n)| (format!("unclaimed {addr:#x}"), *n)),
        );
        if c.unclaimed_other > 0 {
            out.push(("unclaimed other".into(), c.unclaimed_other));
        }
        if c.coalesced > 0 {
            out.push(("coalesced writes".into(), c.coalesced));
        }
        out
    }

    fn unclaimed(&self, addr: u64) {
        let mut c = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.unclaimed.get_mut(&addr) {
            *n += 1;
        } else if c.unclaimed.len() < UNCLAIMED_TRACKED {
            c.unclaimed.insert(addr, 1);
        } else {
            c.unclaimed_other += 1;
        }
    }

    fn set(&self, base: u64, range: Option<(u64, Arc<AtomicU64>)>) {
        let mut c = self.0.write().unwrap_or_else(|e| e.into_inner());
        match range {
            Some(r) => c.ranges.insert(base, r),
            None => c.ranges.remove(&base),
        };
    }
}

/// Maps non-overlapping ranges to devices. Lookups take a read lock, so vCPU
/// threads dispatch concurrently; a device's own lock serialises its accesses.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
    counts: BusCounts,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(r.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut r = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let overlaps_prev = r
            .range(..=base)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        let overlaps_next = r.range(base..).next().is_some_and(|(b, _)| *b < base + len);
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        let accesses = Arc::new(AtomicU64::new(0));
        self.counts.set(base, Some((len, accesses.clone())));
        r.insert(
            base,
            Entry {
                len,
                device,
                accesses,
            },
        );
        Ok(())
    }

    /// Removes the device inserted at exactly `base`, returning it.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut r = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let e = r.remove(&base)?;
        self.counts.set(base, None);
        Some(e.device)
    }

    /// The bus's access counts (shared: they follow later accesses).
    pub fn counts(&self) -> BusCounts {
        self.counts.clone()
    }

    /// Moves the device at `old_base` to `new_base` (a guest reprogrammed a BAR).
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut r = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = r.remove(&old_base) else {
            return Err(BusError::InvalidRange {
                base: old_base,
                len: 0,
            });
        };
        let len = entry.len;
        let bad = new_base.checked_add(len).is_none()
            || r.range(..=new_base)
                .next_back()
                .is_some_and(|(b, e)| b + e.len > new_base)
            || r.range(new_base..)
                .next()
                .is_some_and(|(b, _)| *b < new_base + len);
        if bad {
            r.insert(old_base, entry);
            return Err(BusError::Overlap {
                base: new_base,
                len,
            });
        }
        self.counts.set(old_base, None);
        self.counts
            .set(new_base, Some((entry.len, entry.accesses.clone())));
        r.insert(new_base, entry);
        Ok(())
    }

    fn lookup(&self, addr: u64, size: usize) -> Option<(u64, SharedDevice)> {
        self.lookup_counted(addr, size, true)
    }

    fn lookup_counted(&self, addr: u64, size: usize, count: bool) -> Option<(u64, SharedDevice)> {
        let r = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, e) = r.range(..=addr).next_back()?;
        let end = base + e.len;
        let access_end = addr.checked_add(size as u64)?;
        (access_end <= end).then(|| {
            if count {
                e.accesses.fetch_add(1, Ordering::Relaxed);
            }
            (addr - base, e.device.clone())
        })
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) when no
    /// device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                self.counts.unclaimed(addr);
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.dispatch_write(addr, data, true)
    }

    /// Dispatches a write KVM queued in its coalesced ring rather than
    /// exiting for it: counted as `"coalesced writes"`, not in its range's
    /// count (which counts exits on a vCPU's bus).
    pub fn write_coalesced(&self, addr: u64, data: &[u8]) -> bool {
        self.counts
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .coalesced += 1;
        self.dispatch_write(addr, data, false)
    }

    fn dispatch_write(&self, addr: u64, data: &[u8], count: bool) -> bool {
        match self.lookup_counted(addr, data.len(), count) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                self.counts.unclaimed(addr);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        let mut d = [0u8; 2];
        assert!(bus.read(0x104, &mut d));
        assert_eq!(d, [4, 4]);
        assert!(bus.write(0x10f, &[9]));
        assert_eq!(dev.lock().unwrap().writes, vec![(0xf, vec![9])]);
    }

    #[test]
    fn coalesced_writes_reach_the_device_but_not_its_exit_count() {
        let bus = Bus::new();
        let counts = bus.counts();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0xcf8, 8).unwrap();
        assert!(bus.write_coalesced(0xcf8, &[1, 0, 0, 0x80]));
        assert!(bus.write_coalesced(0xcf8, &[2, 0, 0, 0x80]));
        let mut d = [0u8; 4];
        bus.read(0xcfc, &mut d);
        assert_eq!(dev.lock().unwrap().writes.len(), 2);
        let snap = counts.snapshot();
        assert!(snap.contains(&("0xcf8+0x8".to_string(), 1)), "{snap:?}");
        assert!(
            snap.contains(&("coalesced writes".to_string(), 2)),
            "{snap:?}"
        );
    }

    #[test]
    fn accesses_are_counted_by_range_and_unclaimed_address() {
        let bus = Bus::new();
        let counts = bus.counts();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f8, 8)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0xcf8, 8)
            .unwrap();
        let mut d = [0u8; 1];
        for _ in 0..3 {
            bus.write(0x3f8, &[1]);
        }
        bus.read(0x3fd, &mut d);
        bus.read(0x80, &mut d);
        bus.write(0x80, &[0]);
        for port in 0x1000..0x1000 + UNCLAIMED_TRACKED as u64 + 5 {
            bus.read(port, &mut d);
        }
        let snap = counts.snapshot();
        assert_eq!(snap[0], ("0x3f8+0x8".to_string(), 4));
        assert!(
            !snap.iter().any(|(n, _)| n.starts_with("0xcf8")),
            "never accessed"
        );
        assert!(snap.contains(&("unclaimed 0x80".to_string(), 2)));
        // 31 more addresses tracked one by one, the rest together.
        assert!(
            snap.contains(&("unclaimed other".to_string(), 6)),
            "{snap:?}"
        );
        // A moved range keeps its count under its new base; a removed one goes.
        bus.relocate(0x3f8, 0x2f8).unwrap();
        assert_eq!(counts.snapshot()[0], ("0x2f8+0x8".to_string(), 4));
        bus.remove(0x2f8);
        assert!(!counts
            .snapshot()
            .iter()
            .any(|(n, _)| n.starts_with("0x2f8")));
    }

    #[test]
    fn misses_and_straddles_are_unclaimed() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 0x10)
            .unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0xff, &mut d[..1]));
        assert_eq!(d[0], 0xff);
        assert!(!bus.read(0x10e, &mut d), "access crossing the end");
        assert!(!bus.write(0x110, &[1]));
        assert!(!bus.read(u64::MAX, &mut d), "no overflow at the top");
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x80, 0x100),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(d(), 0x110, 1).is_ok());
        assert!(bus.insert(d(), 0xf0, 0x10).is_ok());
        assert!(matches!(
            bus.insert(d(), 5, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn relocate_moves_or_refuses() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x100)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3000, 0x100)
            .unwrap();
        bus.relocate(0x1000, 0x2000).unwrap();
        let mut d = [0u8; 1];
        assert!(!bus.read(0x1000, &mut d));
        assert!(bus.read(0x2001, &mut d));
        assert_eq!(
            bus.relocate(0x2000, 0x2f80),
            Err(BusError::Overlap {
                base: 0x2f80,
                len: 0x100
            })
        );
        assert!(
            bus.read(0x2001, &mut d),
            "a refused move leaves the device in place"
        );
        assert!(bus.remove(0x2000).is_some());
        assert!(bus.remove(0x2000).is_none());
    }
}
