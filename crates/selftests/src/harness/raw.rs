//! The few KVM ioctls kvm-ioctls does not wrap, and raw `kvm_run` access
//! for the cases that race on it from another thread.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;

use crate::check::Failure;

/// `_IO(KVMIO, 0x80)`
const KVM_RUN: libc::c_ulong = 0xae80;
/// `_IO(KVMIO, 0xce)`
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
/// `_IO(KVMIO, 0xc7)`
const KVM_RESET_DIRTY_RINGS: libc::c_ulong = 0xaec7;
/// `_IO(KVMIO, 0x44)`
const KVM_SET_NR_MMU_PAGES: libc::c_ulong = 0xae44;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A `kvm_run` pointer that can cross threads (the racing cases).
#[derive(Clone, Copy)]
pub struct RunPtr(pub *mut kvm_run);

// SAFETY: the pointer names the vCPU's shared kvm_run mapping, which stays
// mapped while the VcpuFd lives; every racing thread is joined before the
// vCPU is dropped, and all accesses through it are volatile.
unsafe impl Send for RunPtr {}

impl RunPtr {
    /// The `kvm_run` of `vcpu`.
    pub fn of(vcpu: &mut VcpuFd) -> Self {
        Self(vcpu.get_kvm_run() as *mut kvm_run)
    }
}

/// KVM_RUN without forming a Rust reference to `kvm_run` (another thread
/// writes to it meanwhile). Returns 0 or the errno.
pub fn run_raw(vcpu: &VcpuFd) -> i32 {
    // SAFETY: KVM_RUN on a vCPU fd takes no argument; the kernel reads and
    // writes only the vCPU's own kvm_run mapping.
    let r = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_RUN, 0) };
    if r < 0 {
        errno()
    } else {
        0
    }
}

/// KVM_GET_STATS_FD on a VM or vCPU fd.
pub fn stats_fd(fd: &impl AsRawFd) -> Result<File, Failure> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD, 0) };
    if r < 0 {
        return Err(Failure::Fail(format!(
            "KVM_GET_STATS_FD failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(r) })
}

/// KVM_RESET_DIRTY_RINGS; returns the number of entries reset.
pub fn reset_dirty_rings(vm: &impl AsRawFd) -> Result<i32, Failure> {
    // SAFETY: the ioctl takes no argument.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_RESET_DIRTY_RINGS, 0) };
    if r < 0 {
        return Err(Failure::Fail(format!(
            "KVM_RESET_DIRTY_RINGS failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(r)
}

/// KVM_SET_NR_MMU_PAGES.
pub fn set_nr_mmu_pages(vm: &impl AsRawFd, pages: u64) -> Result<(), Failure> {
    // SAFETY: the argument is passed by value.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_SET_NR_MMU_PAGES, pages) };
    if r < 0 {
        return Err(Failure::Fail(format!(
            "KVM_SET_NR_MMU_PAGES failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// A shared mapping of a vCPU fd at a page offset (the dirty ring).
pub struct VcpuMapping {
    ptr: *mut u8,
    len: usize,
}

impl VcpuMapping {
    /// Maps `len` bytes of `vcpu` at page `page_offset`, read-write.
    pub fn new(vcpu: &VcpuFd, page_offset: u64, len: usize) -> Result<Self, Failure> {
        // SAFETY: mapping a fresh range chosen by the kernel; the result is
        // checked before use and unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                (page_offset * 4096) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Failure::Fail(format!(
                "mmap of the vCPU fd at page {page_offset} failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Reads the u32 at `off` (volatile: the kernel writes concurrently).
    pub fn read_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked above); the mapping lives.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    /// Reads the u64 at `off`.
    pub fn read_u64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: in bounds and aligned (checked above); the mapping lives.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u64>()) }
    }

    /// Writes the u32 at `off`.
    pub fn write_u32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked above); the mapping lives.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }
}

impl Drop for VcpuMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
