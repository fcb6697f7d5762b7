//! The host side of virtio-mem: the hotplug region's KVM memslots (one per
//! slot, added when the slot's first block is plugged and removed when its
//! last block is unplugged, if the guest accepted
//! `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`) and returning unplugged memory to
//! the host.

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use virtio::mem::MemBackend;

use crate::device_memory::DeviceMemoryView;
use crate::memory::HostMapping;
use crate::ram_slots::RamSlots;

/// The VFIO containers of the VM's passed-through devices: plugged blocks
/// are DMA-mapped into each, unplugged ones unmapped.
pub type DmaTargets = Arc<Mutex<Vec<Arc<vfio::container::Container>>>>;

/// Carries out virtio-mem effects on one VM.
pub struct HotplugBackend {
    ram_slots: Arc<RamSlots>,
    mapping: Arc<HostMapping>,
    base: u64,
    slot_size: u64,
    slots: std::ops::Range<u32>,
    dma: DmaTargets,
    view: Arc<DeviceMemoryView>,
}

impl HotplugBackend {
    /// The region at guest address `base`, backed by `mapping`, cut into
    /// `slot_size` slots, one KVM memory slot each from `slots` (taken from
    /// the VM's `MemSlots`).
    pub fn new(
        ram_slots: Arc<RamSlots>,
        mapping: Arc<HostMapping>,
        base: u64,
        slot_size: u64,
        slots: std::ops::Range<u32>,
        dma: DmaTargets,
        view: Arc<DeviceMemoryView>,
    ) -> Self {
        Self {
            ram_slots,
            mapping,
            base,
            slot_size,
            slots,
            dma,
            view,
        }
    }

    fn set_slot(&self, n: usize, present: bool) -> Result<(), String> {
        let offset = n as u64 * self.slot_size;
        if offset + self.slot_size > self.mapping.len() as u64 {
            return Err(format!("slot {n} is outside the region"));
        }
        let slot = u32::try_from(n)
            .ok()
            .and_then(|n| self.slots.start.checked_add(n))
            .filter(|s| self.slots.contains(s))
            .ok_or_else(|| format!("slot {n} has no KVM memory slot"))?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: self.base + offset,
            memory_size: if present { self.slot_size } else { 0 },
            userspace_addr: self.mapping.as_ptr() as u64 + offset,
        };
        // SAFETY: RamSlots::set's contract holds: the slot covers `slot_size`
        // bytes inside `mapping` (checked above), which this backend keeps
        // alive (Arc) for as long as it holds the slots and with them the VM
        // fd; removing a slot (size 0) has no memory preconditions.
        unsafe { self.ram_slots.set(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))
    }
}

impl MemBackend for HotplugBackend {
    fn map_slot(&self, n: usize) -> Result<(), String> {
        self.set_slot(n, true)
    }

    fn unmap_slot(&self, n: usize) -> Result<(), String> {
        self.set_slot(n, false)
    }

    fn populate(&self, offset: u64, len: u64) -> Result<(), String> {
        self.mapping
            .populate(offset, len)
            .map_err(|e| format!("cannot allocate backing: {e}"))
    }

    fn dma_map(&self, offset: u64, len: u64, block: u64) -> Result<(), String> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.mapping.len() as u64)
            || block == 0
        {
            return Err(format!(
                "{len:#x} bytes at {offset:#x} are outside the region"
            ));
        }
        for c in self.dma.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for b in (offset..offset + len).step_by(block as usize) {
                let host = self.mapping.as_ptr() as u64 + b;
                // SAFETY: the block lies inside `mapping` (checked above),
                // which this backend keeps alive; it is unmapped from the
                // container (dma_unmap) before it is discarded, and the
                // container closes before the VM's memory goes.
                unsafe { c.map_dma(self.base + b, block, host) }.map_err(|e| e.to_string())?;
            }
        }
        // Virtio devices see the blocks from now on.
        self.view.plug(offset, len)
    }

    fn dma_unmap(&self, offset: u64, len: u64) -> Result<(), String> {
        // Virtio devices first: their next requests no longer reach the blocks.
        self.view.unplug(offset, len)?;
        for c in self.dma.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            c.unmap_dma(self.base + offset, len)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), String> {
        self.mapping
            .discard(offset, len)
            .map_err(|e| format!("cannot discard: {e}"))
    }
}
