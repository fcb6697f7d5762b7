//! KVM's coalesced I/O ring: guest writes to port ranges whose writes need
//! no immediate answer (PCI's CONFIG_ADDRESS latch at 0xcf8) are queued by
//! KVM in a page shared with Caravel instead of leaving KVM_RUN. Every vCPU
//! replays the queue, in order, on the buses as soon as KVM_RUN returns and
//! before it handles its own exit, so a device sees the same sequence of
//! accesses as without the ring: the CONFIG_DATA read that follows a latch
//! write always finds the latch set. Reads of the range still exit.
//!
//! A PCI configuration access is a latch write and a data access: with the
//! latch coalesced it costs one exit instead of two (docs/performance.md).

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::Mutex;

use devices::Bus;
use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};

/// Where the ring page sits in a vCPU fd's mapping, in pages
/// (`KVM_COALESCED_MMIO_PAGE_OFFSET`: 2 on x86, 1 on arm64).
const RING_PAGE_OFFSET: i64 = kvm_bindings::KVM_COALESCED_MMIO_PAGE_OFFSET as i64;

/// The VM's coalesced I/O ring (one page, shared by every vCPU fd).
pub struct CoalescedRing {
    page: NonNull<u8>,
    page_size: usize,
    /// Serialises the replays of the vCPU threads (one reader at a time
    /// advances `first`, and the entries reach the buses in order).
    replay: Mutex<()>,
}

// SAFETY: the page is shared memory that KVM writes concurrently anyway; all
// of Caravel's accesses to it are volatile and made under `replay`.
unsafe impl Send for CoalescedRing {}
// SAFETY: as for Send: `&self` methods take `replay` before touching the page.
unsafe impl Sync for CoalescedRing {}

impl CoalescedRing {
    /// Registers `ports` (base, length) for coalesced writes on `vm` and maps
    /// the ring through `vcpu`. `None` (with the reason logged) when the list
    /// is empty or KVM lacks KVM_CAP_COALESCED_PIO: every write then exits.
    pub fn set_up(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd, ports: &[(u16, u32)]) -> Option<Self> {
        if ports.is_empty() {
            return None;
        }
        if !kvm.check_extension(Cap::CoalescedPio) {
            log::info!("KVM has no KVM_CAP_COALESCED_PIO: every PCI CONFIG_ADDRESS write exits");
            return None;
        }
        let ring = match Self::map(vcpu) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot map KVM's coalesced I/O ring: {e}");
                return None;
            }
        };
        for &(port, len) in ports {
            let addr = IoEventAddress::Pio(u64::from(port));
            if let Err(e) = vm.register_coalesced_mmio(addr, len) {
                log::warn!("KVM_REGISTER_COALESCED_MMIO for ports {port:#x}+{len}: {e}");
            }
        }
        Some(ring)
    }

    fn map(vcpu: &VcpuFd) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(io::Error::last_os_error()),
        };
        let header = std::mem::size_of::<kvm_coalesced_mmio_ring>();
        if page_size <= header + std::mem::size_of::<kvm_coalesced_mmio>() {
            return Err(io::Error::other("page too small for the ring"));
        }
        // SAFETY: a fresh shared mapping of one page of the vCPU fd at the
        // offset KVM documents for the ring; nothing else is mapped at the
        // address the kernel picks. KVM keeps the page alive while it is
        // mapped (the mapping holds a reference on the vCPU file).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                RING_PAGE_OFFSET * page_size as i64,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(addr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            page,
            page_size,
            replay: Mutex::new(()),
        })
    }

    /// Entries the ring holds (KVM_COALESCED_MMIO_MAX for this page size).
    fn capacity(&self) -> u32 {
        ((self.page_size - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    fn index_ptr(&self, which: usize) -> *mut u32 {
        // `first` and `last` are the two u32 at the start of the page.
        self.page.as_ptr().cast::<u32>().wrapping_add(which)
    }

    fn entry_ptr(&self, i: u32) -> *const kvm_coalesced_mmio {
        let header = std::mem::size_of::<kvm_coalesced_mmio_ring>();
        self.page
            .as_ptr()
            .wrapping_add(header + i as usize * std::mem::size_of::<kvm_coalesced_mmio>())
            .cast()
    }

    /// Replays every queued write on `pio` (port entries) or `mmio`, oldest
    /// first, and frees the entries (each one a KVM exit saved, counted by
    /// the bus as a coalesced write). Returns how many there were.
    pub fn replay(&self, pio: &Bus, mmio: &Bus) -> u32 {
        // Most exits find the ring empty: say so without the lock. A write
        // this vCPU queued before its exit is already visible here; one
        // another vCPU queues meanwhile is replayed by that vCPU.
        // SAFETY: both indices lie in the mapped page (see index_ptr).
        let empty = unsafe {
            std::ptr::read_volatile(self.index_ptr(0)) == std::ptr::read_volatile(self.index_ptr(1))
        };
        if empty {
            return 0;
        }
        let _one_reader = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        let cap = self.capacity();
        // SAFETY: `first` and `last` lie in the mapped page (see index_ptr);
        // KVM writes `last` concurrently, hence volatile.
        let (mut first, last) = unsafe {
            (
                std::ptr::read_volatile(self.index_ptr(0)),
                std::ptr::read_volatile(self.index_ptr(1)),
            )
        };
        // KVM fills an entry before it publishes `last`.
        fence(Ordering::Acquire);
        if first >= cap || last >= cap {
            // Not a state KVM produces; do not index with it.
            return 0;
        }
        let mut n = 0;
        while first != last {
            // SAFETY: first < cap, so the entry lies inside the page.
            let e = unsafe { std::ptr::read_volatile(self.entry_ptr(first)) };
            let len = (e.len as usize).min(e.data.len());
            // SAFETY: the union's `pio` member is the one KVM writes (a u32
            // flag; reading either member of two u32s is defined).
            let is_pio = unsafe { e.__bindgen_anon_1.pio } != 0;
            let bus = if is_pio { pio } else { mmio };
            bus.write_coalesced(e.phys_addr, &e.data[..len]);
            first = (first + 1) % cap;
            n += 1;
        }
        if n > 0 {
            // The entries are read before KVM may reuse them.
            fence(Ordering::Release);
            // SAFETY: as above; only this (locked) reader writes `first`.
            unsafe { std::ptr::write_volatile(self.index_ptr(0), first) };
        }
        n
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: the page was mapped in `map` with this size and is not
        // used after this point (the ring is dropped once).
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}
