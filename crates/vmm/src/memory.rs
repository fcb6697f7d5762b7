//! Guest RAM: host mappings that Caravel creates and owns, registered as KVM
//! memory slots.
//!
//! Each region is mapped at a host address aligned to 2 MiB (or the huge page
//! size), so transparent huge pages back it and KVM can map the guest with
//! 2 MiB pages: fewer nested page faults (hosts before Linux 6.7 do not align
//! large anonymous mappings by themselves). Nothing is touched until the
//! guest writes.
//!
//! Backings: private anonymous memory (default), a memfd mapped shared
//! (`shared=on`), or a hugetlbfs memfd (`hugepages=on`). Memory is returned to
//! the host with `MADV_DONTNEED` (anonymous) or `FALLOC_FL_PUNCH_HOLE` (memfd).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use crate::{Error, Result};

/// Host alignment of guest RAM mappings.
pub const HOST_ALIGN: usize = 2 << 20;

/// What backs guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// Private anonymous memory.
    Anonymous,
    /// A memfd mapped `MAP_SHARED`.
    Shared,
    /// A hugetlbfs memfd (default huge page size), mapped `MAP_SHARED`.
    HugeTlb,
}

/// One host mapping backing guest RAM; unmapped on drop.
#[derive(Debug)]
pub struct HostMapping {
    addr: *mut u8,
    size: usize,
    memfd: Option<File>,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its address
// between threads is what guest memory is for, and every access goes through
// vm-memory's volatile accessors or the kernel.
unsafe impl Send for HostMapping {}
// SAFETY: see `Send`; the struct itself is immutable.
unsafe impl Sync for HostMapping {}

fn memfd(name: &str, hugetlb: bool, size: usize) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    let flags = libc::MFD_CLOEXEC | if hugetlb { libc::MFD_HUGETLB } else { 0 };
    // SAFETY: `cname` is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64)?;
    Ok(f)
}

impl HostMapping {
    /// Maps `size` bytes backed by `backing` at a host address aligned to
    /// `align`. `reserve` asks the kernel to reserve the memory up front
    /// (hugetlbfs boot RAM: fail now rather than SIGBUS later).
    pub fn new(
        size: usize,
        align: usize,
        backing: Backing,
        reserve: bool,
    ) -> std::io::Result<Self> {
        let memfd = match backing {
            Backing::Anonymous => None,
            Backing::Shared => Some(memfd("caravel-ram", false, size)?),
            Backing::HugeTlb => Some(memfd("caravel-ram-huge", true, size)?),
        };
        Self::map(size, align, memfd, reserve, backing != Backing::HugeTlb)
    }

    /// Maps `size` bytes of `file` shared: guest memory another Caravel
    /// made (a local migration's source hands its memfds over). The file
    /// must be at least `size` long (a shorter one would fault later).
    pub fn from_file(file: File, size: usize, align: usize) -> std::io::Result<Self> {
        if file.metadata()?.len() < size as u64 {
            return Err(std::io::Error::other(format!(
                "the memory file is shorter than the {size} bytes it should back"
            )));
        }
        Self::map(size, align, Some(file), false, true)
    }

    /// The mapping itself: `memfd` shared, or anonymous memory;
    /// transparent huge pages asked for with `thp`.
    fn map(
        size: usize,
        align: usize,
        memfd: Option<File>,
        reserve: bool,
        thp: bool,
    ) -> std::io::Result<Self> {
        let reserve_len = size
            .checked_add(align)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh PROT_NONE reservation at an address of the kernel's
        // choosing; it cannot alias any existing Rust object.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve_len,
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
        let noreserve = if reserve { 0 } else { libc::MAP_NORESERVE };
        let (flags, fd) = match &memfd {
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve, -1),
            Some(f) => (libc::MAP_SHARED | noreserve, f.as_raw_fd()),
        };
        // SAFETY: [start, start + size) lies inside the reservation made above,
        // which nothing else uses; MAP_FIXED replaces only that reservation.
        let addr = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                fd,
                0,
            )
        };
        let head = start - base as usize;
        let tail = reserve_len - head - size;
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
        if thp {
            // SAFETY: `addr` is the start of the mapping just created, `size` long.
            let ret = unsafe { libc::madvise(addr, size, libc::MADV_HUGEPAGE) };
            if ret != 0 {
                log::debug!(
                    "MADV_HUGEPAGE not applied: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(Self {
            addr: addr.cast(),
            size,
            memfd,
        })
    }

    /// Private anonymous memory (tests, simple callers).
    pub fn anonymous(size: usize, align: usize) -> std::io::Result<Self> {
        Self::new(size, align, Backing::Anonymous, false)
    }

    /// The memfd behind a shared mapping (none for anonymous memory).
    pub fn file(&self) -> Option<&File> {
        self.memfd.as_ref()
    }

    /// Host address of the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// A vm-memory region for `[offset, offset + len)` of this mapping at
    /// guest address `gpa`. The region does not own the memory: whoever
    /// holds it must not use it after this mapping is dropped (a VM's
    /// teardown stops every user of its memory before it unmaps RAM).
    /// The region's bitmap `B` starts clean (`()` for none; an
    /// `AtomicBitmap` tracks writes made through the region).
    pub fn region<B: NewBitmap>(
        &self,
        offset: u64,
        len: u64,
        gpa: u64,
    ) -> Result<GuestRegionMmap<B>> {
        self.check(offset, len).map_err(|_| {
            Error::Memory(format!(
                "{len:#x} bytes at {offset:#x} are outside the mapping"
            ))
        })?;
        // SAFETY: `[offset, offset + len)` lies inside this live mapping
        // (checked above); the caller keeps the mapping alive while the
        // region is used (see above).
        let region = unsafe {
            MmapRegionBuilder::new_with_bitmap(len as usize, B::with_len(len as usize))
                .with_raw_mmap_pointer(self.addr.add(offset as usize))
        }
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .build()
        .map_err(|e| Error::Memory(format!("cannot describe guest RAM: {e}")))?;
        GuestRegionMmap::new(region, GuestAddress(gpa))
            .ok_or_else(|| Error::Memory(format!("guest RAM at {gpa:#x} wraps the address space")))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the mapping is empty (never: mappings have a size).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn check(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size as u64 => Ok(()),
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Returns `[offset, offset + len)` to the host: its contents are lost and
    /// read back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check(offset, len)?;
        match &self.memfd {
            Some(f) => fallocate(f, FallocateMode::PunchHole, true, offset, len)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno())),
            None => {
                // SAFETY: the range lies inside our own anonymous mapping
                // (checked above); MADV_DONTNEED drops its pages, which read
                // back as zeros. No Rust reference points into guest memory.
                let r = unsafe {
                    libc::madvise(
                        self.addr.add(offset as usize).cast(),
                        len as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
        }
    }

    /// Allocates backing for `[offset, offset + len)` (memfd only; a no-op
    /// for anonymous memory, which is allocated on touch).
    pub fn populate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check(offset, len)?;
        let Some(f) = &self.memfd else { return Ok(()) };
        // SAFETY: plain fallocate(2) on our own memfd with mode 0 (allocate);
        // arguments are checked against the file size above.
        let r =
            unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: we created this mapping and are its only owner; every
        // GuestMemoryMmap built on it is held next to an Arc of this value
        // (see `GuestRam`), so none outlives it.
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
    /// The guest's memory as vm-memory sees it (boot RAM and any hotplug region).
    pub memory: GuestMemoryMmap,
    mappings: Vec<Arc<HostMapping>>,
    boot_regions: usize,
}

impl GuestRam {
    /// Maps boot RAM `ranges` (guest address, size) as private anonymous memory.
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self> {
        Self::with_backing(ranges, None, Backing::Anonymous)
    }

    /// Maps boot RAM `ranges` and an optional hotplug region with `backing`.
    /// The hotplug region is never reserved up front.
    pub fn with_backing(
        ranges: &[(u64, u64)],
        hotplug: Option<(u64, u64)>,
        backing: Backing,
    ) -> Result<Self> {
        Self::build(ranges, hotplug, |size, boot| {
            let reserve = boot && backing == Backing::HugeTlb;
            HostMapping::new(size, HOST_ALIGN, backing, reserve).map_err(|e| {
                let hint = if backing == Backing::HugeTlb {
                    " (are enough huge pages reserved in /proc/sys/vm/nr_hugepages?)"
                } else {
                    ""
                };
                Error::Memory(format!("cannot map {size} bytes of guest RAM: {e}{hint}"))
            })
        })
    }

    /// Boot RAM `ranges` and the hotplug region backed by `files`, one per
    /// range in that order (a local migration's source's memfds).
    pub fn from_files(
        ranges: &[(u64, u64)],
        hotplug: Option<(u64, u64)>,
        files: Vec<File>,
    ) -> Result<Self> {
        let want = ranges.len() + usize::from(hotplug.is_some());
        if files.len() != want {
            return Err(Error::Memory(format!(
                "{} memory files for {want} guest memory ranges",
                files.len()
            )));
        }
        let mut files = files.into_iter();
        Self::build(ranges, hotplug, |size, _| {
            let file = files
                .next()
                .ok_or_else(|| Error::Memory("a memory file is missing".into()))?;
            HostMapping::from_file(file, size, HOST_ALIGN)
                .map_err(|e| Error::Memory(format!("cannot map {size} bytes of guest RAM: {e}")))
        })
    }

    /// Guest RAM of `ranges` and `hotplug`, each mapped by
    /// `map(size, is_boot_ram)`.
    fn build(
        ranges: &[(u64, u64)],
        hotplug: Option<(u64, u64)>,
        mut map: impl FnMut(usize, bool) -> Result<HostMapping>,
    ) -> Result<Self> {
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        let all = ranges
            .iter()
            .map(|&r| (r, true))
            .chain(hotplug.map(|r| (r, false)));
        for ((gpa, size), boot) in all {
            let map = Arc::new(map(size as usize, boot)?);
            // The region lives next to `map` in this GuestRam.
            regions.push(map.region(0, size, gpa)?);
            mappings.push(map);
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| Error::Memory(format!("guest RAM layout: {e}")))?;
        Ok(Self {
            memory,
            mappings,
            boot_regions: ranges.len(),
        })
    }

    /// The host mappings, in guest address order (boot RAM, then hotplug).
    pub fn mappings(&self) -> &[Arc<HostMapping>] {
        &self.mappings
    }

    /// The boot RAM mappings with their guest addresses.
    pub fn boot_mappings(&self) -> impl Iterator<Item = (u64, &Arc<HostMapping>)> {
        self.memory
            .iter()
            .zip(&self.mappings)
            .take(self.boot_regions)
            .map(|(r, m)| (r.start_addr().0, m))
    }

    /// The hotplug region's mapping, if there is one.
    pub fn hotplug_mapping(&self) -> Option<&Arc<HostMapping>> {
        self.mappings.get(self.boot_regions)
    }

    /// Registers the boot RAM regions with KVM as slots 0.. and returns the
    /// next free slot number. The hotplug region is registered per slot by
    /// the virtio-mem backend.
    ///
    /// The caller must keep `self` alive for as long as `vm` can run vCPUs:
    /// the slots point at its host mappings.
    pub fn register_boot(
        &self,
        ram_slots: &crate::ram_slots::RamSlots,
        slots: &mut crate::memslots::MemSlots,
    ) -> Result<()> {
        let taken = slots.take(self.boot_regions as u32, "--memory", "boot RAM")?;
        for (slot, region) in taken.zip(self.memory.iter().take(self.boot_regions)) {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: RamSlots::set's contract holds: the region is a live
            // mapping of exactly `memory_size` bytes owned by this GuestRam,
            // which the VM owner keeps until after the VM fd (and with it
            // every vCPU) is closed; see `Vm`'s field order.
            unsafe { ram_slots.set(r) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }
}

/// Copies every region of `from` into the region of `to` at the same guest
/// address and size (a restore into a VM built from the same configuration).
pub fn copy_guest_memory(
    from: &GuestMemoryMmap,
    to: &GuestMemoryMmap,
) -> std::result::Result<(), String> {
    use vm_memory::{Address, Bytes};
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    for r in from.iter() {
        let (start, len) = (r.start_addr(), r.len());
        if !to.iter().any(|t| t.start_addr() == start && t.len() == len) {
            return Err(format!(
                "guest memory at {:#x} ({len:#x} bytes) has no region of the same size here: was the VM built from the same --memory?",
                start.0
            ));
        }
        let mut off = 0u64;
        while off < len {
            let n = CHUNK.min((len - off) as usize);
            let at = start.unchecked_add(off);
            from.read_slice(&mut buf[..n], at)
                .and_then(|()| to.write_slice(&buf[..n], at))
                .map_err(|e| format!("copying guest memory at {:#x}: {e}", at.0))?;
            off += n as u64;
        }
    }
    Ok(())
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
        assert!(clone.hotplug_mapping().is_none());
    }

    fn rss_of(map: &HostMapping) -> usize {
        // Pages resident in the mapping, from mincore(2).
        let pages = map.len() / 4096;
        let mut vec = vec![0u8; pages];
        // SAFETY: the address range is our own mapping and `vec` has one byte
        // per page of it, as mincore requires.
        let r = unsafe { libc::mincore(map.as_ptr().cast(), map.len(), vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn discard_returns_memory_for_anonymous_and_memfd_backings() {
        for backing in [Backing::Anonymous, Backing::Shared] {
            let ram =
                GuestRam::with_backing(&[(0, 2 << 20)], Some((1 << 32, 8 << 20)), backing).unwrap();
            let hp = ram.hotplug_mapping().unwrap().clone();
            ram.memory
                .write_slice(&vec![0xa5; 8 << 20], GuestAddress(1 << 32))
                .unwrap();
            assert!(
                rss_of(&hp) >= 2048,
                "{backing:?}: touched pages are resident"
            );
            hp.discard(2 << 20, 4 << 20).unwrap();
            // Measured before reading the hole back (a read maps the zero page).
            assert!(
                rss_of(&hp) <= 1024 + 16,
                "{backing:?}: discarded pages are gone: {}",
                rss_of(&hp)
            );
            assert_eq!(
                ram.memory
                    .read_obj::<u8>(GuestAddress((1 << 32) + (3 << 20)))
                    .unwrap(),
                0,
                "{backing:?}: discarded reads zero"
            );
            assert_eq!(
                ram.memory
                    .read_obj::<u8>(GuestAddress((1 << 32) + (7 << 20)))
                    .unwrap(),
                0xa5,
                "{backing:?}: the rest is kept"
            );
            assert!(
                hp.discard(6 << 20, 4 << 20).is_err(),
                "range beyond the mapping"
            );
            hp.populate(0, 2 << 20).unwrap();
        }
    }
}
