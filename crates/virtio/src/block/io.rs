//! Vectored file I/O straight between the image and guest memory: one
//! `preadv`/`pwritev` per request (up to `IOV_MAX` pieces), instead of a seek
//! and a read per guest page.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemory, Permissions};

use super::Segment;

/// `IOV_MAX` on Linux.
const IOV_MAX: usize = 1024;

/// Reads (`to_guest`) or writes the bytes of `segs` from/to `file` at `offset`.
/// Returns false on any error, including a short transfer at end of file.
pub fn transfer<M: GuestMemory>(
    file: &File,
    mem: &M,
    segs: &[Segment],
    offset: u64,
    to_guest: bool,
) -> bool {
    let done = vectored(file, mem, segs, offset, to_guest);
    if to_guest {
        // The kernel wrote guest memory behind vm-memory's back (even a
        // failed read may have written part): mark it dirty, after the
        // write, so a migration that collected the bitmap meanwhile sees
        // the bits again in its next pass.
        mark_written(mem, segs);
    }
    done
}

fn mark_written<M: GuestMemory>(mem: &M, segs: &[Segment]) {
    for s in segs {
        let Ok(slices) = mem.get_slices(s.addr, s.len as usize, Permissions::Write) else {
            continue;
        };
        for slice in slices.flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

fn vectored<M: GuestMemory>(
    file: &File,
    mem: &M,
    segs: &[Segment],
    offset: u64,
    to_guest: bool,
) -> bool {
    // Host address ranges of every segment; a segment may span regions.
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(segs.len());
    let access = if to_guest {
        Permissions::Write
    } else {
        Permissions::Read
    };
    for s in segs {
        let Ok(slices) = mem.get_slices(s.addr, s.len as usize, access) else {
            return false;
        };
        for slice in slices {
            let Ok(slice) = slice else { return false };
            let ptr = if to_guest {
                slice.ptr_guard_mut().as_ptr()
            } else {
                slice.ptr_guard().as_ptr() as *mut u8
            };
            iov.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: slice.len(),
            });
        }
    }
    let fd = file.as_raw_fd();
    let mut off = offset;
    let mut idx = 0;
    while idx < iov.len() {
        let cnt = (iov.len() - idx).min(IOV_MAX);
        let Ok(pos) = libc::off_t::try_from(off) else {
            return false;
        };
        // SAFETY: every iovec in `iov[idx..idx + cnt]` describes host memory
        // inside a region of `mem` (from `get_slices`, so in bounds), which the
        // VMM keeps mapped while the device runs and which we borrow for the
        // whole call; the kernel touches at most `iov_len` bytes of each. Guest
        // memory is only ever accessed volatilely, so no Rust reference aliases it.
        let n = unsafe {
            if to_guest {
                libc::preadv(fd, iov[idx..].as_ptr(), cnt as libc::c_int, pos)
            } else {
                libc::pwritev(fd, iov[idx..].as_ptr(), cnt as libc::c_int, pos)
            }
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        off += n as u64;
        // Skip what was transferred.
        let mut left = n as usize;
        while left > 0 && idx < iov.len() {
            if left >= iov[idx].iov_len {
                left -= iov[idx].iov_len;
                idx += 1;
            } else {
                iov[idx].iov_base = iov[idx].iov_base.wrapping_byte_add(left);
                iov[idx].iov_len -= left;
                left = 0;
            }
        }
    }
    true
}
