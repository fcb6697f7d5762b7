//! The host side of virtio-mem: the hotplug region's KVM memslots (one per
//! slot, added when the slot's first block is plugged and removed when its
//! last block is unplugged, if the guest accepted
//! `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`) and returning unplugged memory to
//! the host.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use virtio::mem::MemBackend;

use crate::memory::HostMapping;

/// Carries out virtio-mem effects on one VM.
pub struct HotplugBackend {
    vm: Arc<VmFd>,
    mapping: Arc<HostMapping>,
    base: u64,
    slot_size: u64,
    first_slot: u32,
}

impl HotplugBackend {
    /// The region at guest address `base`, backed by `mapping`, cut into
    /// `slot_size` slots that use KVM slot numbers from `first_slot`.
    pub fn new(
        vm: Arc<VmFd>,
        mapping: Arc<HostMapping>,
        base: u64,
        slot_size: u64,
        first_slot: u32,
    ) -> Self {
        Self {
            vm,
            mapping,
            base,
            slot_size,
            first_slot,
        }
    }

    fn set_slot(&self, n: usize, present: bool) -> Result<(), String> {
        let offset = n as u64 * self.slot_size;
        if offset + self.slot_size > self.mapping.len() as u64 {
            return Err(format!("slot {n} is outside the region"));
        }
        let region = kvm_userspace_memory_region {
            slot: self.first_slot + n as u32,
            flags: 0,
            guest_phys_addr: self.base + offset,
            memory_size: if present { self.slot_size } else { 0 },
            userspace_addr: self.mapping.as_ptr() as u64 + offset,
        };
        // SAFETY: the slot covers `slot_size` bytes inside `mapping` (checked
        // above), which this backend keeps alive (Arc) for as long as it holds
        // the VM fd; removing a slot (size 0) has no memory preconditions.
        unsafe { self.vm.set_user_memory_region(region) }
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

    fn discard(&self, offset: u64, len: u64) -> Result<(), String> {
        self.mapping
            .discard(offset, len)
            .map_err(|e| format!("cannot discard: {e}"))
    }
}
