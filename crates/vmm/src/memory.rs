//! Guest RAM: host mappings that Caravel creates and owns, registered as KVM
//! memory slots.
//!
//! Each region is mapped at a host address aligned to 2 MiB (or the huge page
//! size), so transparent huge pages back it and KVM can map the guest with
//! 2 MiB pages: fewer nested page faults (hosts before Linux 6.7 do not align
//! large anonymous mappings by themselves). Memory is private anonymous by
//! default; nothing is touched until the guest writes.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::{Error, Result};

/// Host alignment of guest RAM mappings.
pub const HOST_ALIGN: usize = 2 << 20;

/// One host mapping backing guest RAM; unmapped on drop.
#[derive(Debug)]
pub struct HostMapping {
    addr: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its address
// between threads is what guest memory is for, and every access goes through
// vm-memory's volatile accessors.
unsafe impl Send for HostMapping {}
// SAFETY: see `Send`; the struct itself is immutable.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Maps `size` bytes of private anonymous memory at a host address aligned
    /// to `align` (a power of two, multiple of the page size).
    pub fn anonymous(size: usize, align: usize) -> std::io::Result<Self> {
        let reserve = size
            .checked_add(align)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh PROT_NONE reservation at an address of the kernel's
        // choosing; it cannot alias any existing Rust object.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = (base as usize).next_multiple_of(align);
        // SAFETY: [start, start + size) lies inside the reservation made above,
        // which nothing else uses; MAP_FIXED replaces only that reservation.
        let addr = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        let head = start - base as usize;
        let tail = reserve - head - size;
        // SAFETY: the head and tail are the unused parts of our own reservation.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap((start + size) as *mut libc::c_void, tail);
            }
        }
        if addr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: the middle of our reservation, still mapped PROT_NONE.
            unsafe { libc::munmap(start as *mut libc::c_void, size) };
            return Err(e);
        }
        // SAFETY: `addr` is the start of the mapping just created, `size` long.
        let ret = unsafe { libc::madvise(addr, size, libc::MADV_HUGEPAGE) };
        if ret != 0 {
            log::debug!(
                "MADV_HUGEPAGE not applied: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            addr: addr.cast(),
            size,
        })
    }

    /// Host address of the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the mapping is empty (never: mappings have a size).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: we created this mapping and are its only owner; every
        // GuestMemoryMmap built on it holds an Arc to this value, so none
        // outlives it.
        unsafe { libc::munmap(self.addr.cast(), self.size) };
    }
}

/// Guest RAM: the vm-memory view plus the mappings it refers to.
///
/// Clones share the mappings (`Arc`), which are unmapped when the last clone
/// goes. Always pass `GuestRam` (not a bare `GuestMemoryMmap` clone) to code that
/// may outlive its creator.
#[derive(Debug, Clone)]
pub struct GuestRam {
    /// The guest's memory as vm-memory sees it.
    pub memory: GuestMemoryMmap,
    mappings: Vec<Arc<HostMapping>>,
}

impl GuestRam {
    /// Maps `ranges` (guest address, size).
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self> {
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for &(gpa, size) in ranges {
            let map = Arc::new(
                HostMapping::anonymous(size as usize, HOST_ALIGN).map_err(|e| {
                    Error::Memory(format!("cannot map {size} bytes of guest RAM: {e}"))
                })?,
            );
            // SAFETY: `map` is a live mapping of exactly `size` bytes, and it
            // outlives the region: both are kept together in this GuestRam.
            let region =
                unsafe { MmapRegionBuilder::new(map.len()).with_raw_mmap_pointer(map.as_ptr()) }
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                    .build()
                    .map_err(|e| Error::Memory(format!("cannot describe guest RAM: {e}")))?;
            let region = GuestRegionMmap::new(region, GuestAddress(gpa)).ok_or_else(|| {
                Error::Memory(format!("guest RAM at {gpa:#x} wraps the address space"))
            })?;
            regions.push(region);
            mappings.push(map);
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| Error::Memory(format!("guest RAM layout: {e}")))?;
        Ok(Self { memory, mappings })
    }

    /// The host mappings, in guest address order.
    pub fn mappings(&self) -> &[Arc<HostMapping>] {
        &self.mappings
    }
}

/// Registers every region of `mem` with KVM, slots numbered from 0.
///
/// The caller must keep `mem` (and its mappings) alive for as long as `vm` can
/// run vCPUs: the slots point at its host mappings.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<u32> {
    let mut slot = 0;
    for region in mem.iter() {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes
        // owned by a `GuestRam` that the VM owner keeps until after the VM fd
        // (and with it every vCPU) is closed; see `Vm`'s field order.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        slot += 1;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn regions_are_aligned_readable_and_disjoint() {
        let ram = GuestRam::new(&[(0, 4 << 20), (1 << 32, 2 << 20)]).unwrap();
        let m = &ram.memory;
        assert_eq!(m.num_regions(), 2);
        for map in ram.mappings() {
            assert_eq!(map.as_ptr() as usize % HOST_ALIGN, 0);
        }
        m.write_obj(0xdead_beefu32, GuestAddress((1 << 32) + 4))
            .unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress((1 << 32) + 4)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(100)).unwrap(),
            0,
            "fresh memory reads zero"
        );
        assert!(
            m.read_obj::<u32>(GuestAddress(4 << 20)).is_err(),
            "hole is not memory"
        );
        let clone = ram.clone();
        drop(ram);
        assert_eq!(
            clone
                .memory
                .read_obj::<u32>(GuestAddress((1 << 32) + 4))
                .unwrap(),
            0xdead_beef
        );
    }
}
