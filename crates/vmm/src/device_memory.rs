//! What device models may touch: boot RAM plus the virtio-mem blocks the
//! guest has plugged. Unplugged memory is inaccessible to the guest (the
//! spec's promise with `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`) and returned to
//! the host; a device request aimed at it fails like any access outside
//! guest memory (virtio-blk answers IOERR) instead of faulting reclaimed
//! pages back in.
//!
//! Devices hold a [`DeviceMemory`] (an atomically replaceable
//! `GuestMemoryMmap`); the virtio-mem backend calls [`DeviceMemoryView::plug`]
//! after a plug is carried out and [`DeviceMemoryView::unplug`] before an
//! unplug discards memory, and each rebuilds the view.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio::balloon::Refusal;
use virtio::{DeviceMemory, DeviceRam};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestRam, HostMapping};
use crate::{Error, Result};

/// The device-visible part of a VM's memory.
pub struct DeviceMemoryView {
    memory: DeviceMemory,
    /// Boot RAM: (guest address, mapping).
    boot: Vec<(u64, Arc<HostMapping>)>,
    /// The hotplug region: guest address and mapping.
    hotplug: Option<(u64, Arc<HostMapping>)>,
    /// Plugged runs of the hotplug region: offset -> length, never adjacent.
    plugged: Mutex<BTreeMap<u64, u64>>,
    /// Bumped by every rebuild of the view: a rebuild starts fresh dirty
    /// bitmaps, so a migration that sees it change sends all of the view.
    generation: AtomicU64,
}

impl DeviceMemoryView {
    /// Boot RAM of `ram`, and none of its hotplug region (at
    /// `hotplug_base`) until blocks are plugged.
    pub fn new(ram: &GuestRam, hotplug_base: Option<u64>) -> Result<Self> {
        let boot: Vec<_> = ram
            .boot_mappings()
            .map(|(gpa, m)| (gpa, m.clone()))
            .collect();
        let hotplug = hotplug_base.zip(ram.hotplug_mapping().cloned());
        let first = build(&boot, None, &BTreeMap::new())?;
        Ok(Self {
            memory: DeviceMemory::new(first),
            boot,
            hotplug,
            plugged: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
        })
    }

    /// How many times the view was rebuilt (plugs and unplugs).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The plugged runs of the hotplug region as (guest address, length).
    pub fn plugged_runs(&self) -> Vec<(u64, u64)> {
        let Some((base, _)) = &self.hotplug else {
            return Vec::new();
        };
        let plugged = self.plugged.lock().unwrap_or_else(|e| e.into_inner());
        plugged.iter().map(|(&o, &l)| (base + o, l)).collect()
    }

    /// Hands `f` the pages devices wrote since the last call, region by
    /// region: (guest address of the region, one bit per host page), and
    /// clears them.
    pub fn take_dirty(&self, mut f: impl FnMut(u64, &[u64])) {
        let view = self.memory.memory();
        for region in view.iter() {
            let mmap: &vm_memory::MmapRegion<AtomicBitmap> = region;
            f(region.start_addr().0, &mmap.bitmap().get_and_reset());
        }
    }

    /// The view to hand to devices (clones follow every update).
    pub fn memory(&self) -> DeviceMemory {
        self.memory.clone()
    }

    /// `[offset, offset + len)` of the hotplug region was plugged.
    pub fn plug(&self, offset: u64, len: u64) -> std::result::Result<(), String> {
        self.update(|runs| insert(runs, offset, len))
    }

    /// `[offset, offset + len)` of the hotplug region is about to be unplugged.
    pub fn unplug(&self, offset: u64, len: u64) -> std::result::Result<(), String> {
        self.update(|runs| remove(runs, offset, len))
    }

    /// Returns guest-physical `[gpa, gpa + len)` to the host (the
    /// balloon): it must lie in one boot RAM region or in one plugged run of
    /// the hotplug region. The plugged runs stay locked while the memory is
    /// discarded, so a concurrent unplug or plug cannot slip in between.
    pub fn discard(&self, gpa: u64, len: u64) -> std::result::Result<(), Refusal> {
        let end = gpa.checked_add(len).ok_or(Refusal::NotRam)?;
        let failed = |e: std::io::Error| Refusal::Failed(e.to_string());
        if let Some((base, m)) = self
            .boot
            .iter()
            .find(|(base, m)| gpa >= *base && end <= base + m.len() as u64)
        {
            return m.discard(gpa - base, len).map_err(failed);
        }
        let Some((base, m)) = &self.hotplug else {
            return Err(Refusal::NotRam);
        };
        if gpa < *base || end > base + m.len() as u64 {
            return Err(Refusal::NotRam);
        }
        let offset = gpa - base;
        let plugged = self.plugged.lock().unwrap_or_else(|e| e.into_inner());
        match plugged.range(..=offset).next_back() {
            Some((&o, &l)) if offset + len <= o + l => m.discard(offset, len).map_err(failed),
            _ => Err(Refusal::Unplugged),
        }
    }

    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<u64, u64>),
    ) -> std::result::Result<(), String> {
        let mut plugged = self.plugged.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = plugged.clone();
        change(&mut next);
        let view = build(&self.boot, self.hotplug.as_ref(), &next).map_err(|e| e.to_string())?;
        // Replace under the view's own lock: workers load the new view for
        // their next batch of requests.
        self.memory.lock().map_err(|e| e.to_string())?.replace(view);
        self.generation.fetch_add(1, Ordering::AcqRel);
        *plugged = next;
        Ok(())
    }
}

fn build(
    boot: &[(u64, Arc<HostMapping>)],
    hotplug: Option<&(u64, Arc<HostMapping>)>,
    plugged: &BTreeMap<u64, u64>,
) -> Result<DeviceRam> {
    let mut regions = Vec::new();
    for (gpa, m) in boot {
        regions.push(m.region(0, m.len() as u64, *gpa)?);
    }
    if let Some((base, m)) = hotplug {
        for (&offset, &len) in plugged {
            regions.push(m.region(offset, len, base + offset)?);
        }
    }
    DeviceRam::from_regions(regions)
        .map_err(|e| Error::Memory(format!("device view of guest memory: {e}")))
}

/// Adds `[offset, offset + len)` to `runs`, merging neighbours.
fn insert(runs: &mut BTreeMap<u64, u64>, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    remove(runs, offset, len);
    let (mut start, mut end) = (offset, offset + len);
    if let Some((&o, &l)) = runs.range(..start).next_back() {
        if o + l == start {
            runs.remove(&o);
            start = o;
        }
    }
    if let Some(&l) = runs.get(&end) {
        runs.remove(&end);
        end += l;
    }
    runs.insert(start, end - start);
}

/// Removes `[offset, offset + len)` from `runs`, splitting runs it cuts.
fn remove(runs: &mut BTreeMap<u64, u64>, offset: u64, len: u64) {
    let end = offset.saturating_add(len);
    let cut: Vec<(u64, u64)> = runs
        .range(..end)
        .filter(|(&o, &l)| o + l > offset)
        .map(|(&o, &l)| (o, l))
        .collect();
    for (o, l) in cut {
        runs.remove(&o);
        if o < offset {
            runs.insert(o, offset - o);
        }
        if o + l > end {
            runs.insert(end, o + l - end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

    const MIB: u64 = 1 << 20;
    const HP: u64 = 1 << 32;

    fn ram() -> GuestRam {
        GuestRam::with_backing(
            &[(0, 4 * MIB)],
            Some((HP, 64 * MIB)),
            crate::memory::Backing::Anonymous,
        )
        .unwrap()
    }

    #[test]
    fn the_balloon_discards_boot_ram_and_plugged_blocks_only() {
        let ram = ram();
        let view = DeviceMemoryView::new(&ram, Some(HP)).unwrap();
        let put = |gpa: u64| {
            ram.memory
                .write_slice(b"guest!!!", GuestAddress(gpa))
                .unwrap()
        };
        let get = |gpa: u64| {
            let mut b = [0u8; 8];
            ram.memory.read_slice(&mut b, GuestAddress(gpa)).unwrap();
            b
        };
        put(MIB);
        view.discard(MIB, 4096).unwrap();
        assert_eq!(get(MIB), [0; 8], "discarded boot RAM reads back as zeros");
        view.plug(2 * MIB, 2 * MIB).unwrap();
        put(HP + 2 * MIB);
        put(HP + 6 * MIB);
        view.discard(HP + 2 * MIB, 4096).unwrap();
        assert_eq!(get(HP + 2 * MIB), [0; 8]);
        // Unplugged, straddling the plugged run's end, outside RAM, wrapping.
        assert_eq!(view.discard(HP + 6 * MIB, 4096), Err(Refusal::Unplugged));
        assert_eq!(
            view.discard(HP + 4 * MIB - 4096, 8192),
            Err(Refusal::Unplugged)
        );
        assert_eq!(
            get(HP + 6 * MIB),
            *b"guest!!!",
            "refused pages keep their contents"
        );
        assert_eq!(view.discard(4 * MIB - 4096, 8192), Err(Refusal::NotRam));
        assert_eq!(view.discard(HP + 64 * MIB, 4096), Err(Refusal::NotRam));
        assert_eq!(view.discard(u64::MAX - 4095, 8192), Err(Refusal::NotRam));
    }

    #[test]
    fn devices_reach_only_boot_ram_and_plugged_blocks() {
        let ram = ram();
        let view = DeviceMemoryView::new(&ram, Some(HP)).unwrap();
        let dev = view.memory();
        let mut b = [0u8; 8];
        assert!(dev.memory().read_slice(&mut b, GuestAddress(MIB)).is_ok());
        assert!(
            dev.memory().read_slice(&mut b, GuestAddress(HP)).is_err(),
            "unplugged memory is not there for devices"
        );
        view.plug(2 * MIB, 4 * MIB).unwrap();
        dev.memory()
            .write_slice(b"plugged!", GuestAddress(HP + 2 * MIB))
            .unwrap();
        // The device writes land in the VM's real memory.
        ram.memory
            .read_slice(&mut b, GuestAddress(HP + 2 * MIB))
            .unwrap();
        assert_eq!(&b, b"plugged!");
        assert!(dev.memory().read_slice(&mut b, GuestAddress(HP)).is_err());
        view.unplug(4 * MIB, 2 * MIB).unwrap();
        assert!(dev
            .memory()
            .read_slice(&mut b, GuestAddress(HP + 2 * MIB))
            .is_ok());
        assert!(dev
            .memory()
            .read_slice(&mut b, GuestAddress(HP + 4 * MIB))
            .is_err());
        // A read crossing from a plugged into an unplugged block fails too.
        let mut big = vec![0u8; 2 * MIB as usize + 8];
        assert!(dev
            .memory()
            .read_slice(&mut big, GuestAddress(HP + 2 * MIB))
            .is_err());
    }

    #[test]
    fn migration_sees_plugged_runs_only_and_what_devices_wrote() {
        let ram = ram();
        let view = DeviceMemoryView::new(&ram, Some(HP)).unwrap();
        assert!(view.plugged_runs().is_empty(), "nothing plugged yet");
        let g0 = view.generation();
        view.plug(2 * MIB, 4 * MIB).unwrap();
        view.unplug(4 * MIB, 2 * MIB).unwrap();
        assert_eq!(view.plugged_runs(), vec![(HP + 2 * MIB, 2 * MIB)]);
        assert_eq!(view.generation(), g0 + 2, "each rebuild is counted");
        // A device write marks its page in the view's bitmap, once.
        view.memory()
            .memory()
            .write_slice(b"dma", GuestAddress(HP + 2 * MIB + 5 * 4096))
            .unwrap();
        let mut seen = Vec::new();
        view.take_dirty(|gpa, bits| {
            for (w, &word) in bits.iter().enumerate() {
                for b in 0..64 {
                    if word & (1 << b) != 0 {
                        seen.push(gpa + (w as u64 * 64 + b) * 4096);
                    }
                }
            }
        });
        assert_eq!(seen, vec![HP + 2 * MIB + 5 * 4096]);
        let mut again = 0;
        view.take_dirty(|_, bits| again += bits.iter().map(|w| w.count_ones()).sum::<u32>());
        assert_eq!(again, 0, "taking the bits clears them");
    }

    #[test]
    fn runs_merge_and_split() {
        let mut r = BTreeMap::new();
        insert(&mut r, 0, 2);
        insert(&mut r, 4, 2);
        insert(&mut r, 2, 2);
        assert_eq!(
            r.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(),
            vec![(0, 6)]
        );
        remove(&mut r, 2, 1);
        assert_eq!(
            r.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(),
            vec![(0, 2), (3, 3)]
        );
        insert(&mut r, 1, 4); // overlaps both
        assert_eq!(
            r.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(),
            vec![(0, 6)]
        );
        remove(&mut r, 0, 100);
        assert!(r.is_empty());
    }
}
