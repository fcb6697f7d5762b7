//! Vectored file I/O straight between the image and guest memory: one
//! `preadv`/`pwritev` per request (up to `IOV_MAX` pieces), instead of a seek
//! and a read per guest page.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::{GuestMemory, Permissions, VolatileSlice};

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
    // Host address ranges of every segment; a segment may span regions.
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(segs.len());
    // What a read writes, to be marked dirty once written.
    let mut written: Vec<VolatileSlice<'_, BS<'_, M::Bitmap>>> = Vec::new();
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
            if to_guest {
                written.push(slice);
            }
        }
    }
    let done = vectored(file, iov, offset, to_guest);
    // The kernel wrote guest memory behind vm-memory's back (even a failed
    // read may have written part): mark it dirty after the write, so a
    // migration that took the bitmap meanwhile sees the bits again.
    for slice in &written {
        slice.bitmap().mark_dirty(0, slice.len());
    }
    done
}

/// `preadv`/`pwritev` of `iov` at `offset`, resumed after short transfers.
fn vectored(file: &File, mut iov: Vec<libc::iovec>, offset: u64, to_guest: bool) -> bool {
    let fd = file.as_raw_fd();
    let mut off = offset;
    let mut idx = 0;
    while idx < iov.len() {
        let cnt = (iov.len() - idx).min(IOV_MAX);
        let Ok(pos) = libc::off_t::try_from(off) else {
            return false;
        };
        // SAFETY: every iovec in `iov[idx..idx + cnt]` describes host memory
        // inside a region of guest memory (from `get_slices`, so in bounds);
        // `transfer`, our only caller, borrows that memory for the whole call
        // and the VMM keeps it mapped while the device runs; the kernel
        // touches at most `iov_len` bytes of each. Guest
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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    /// A read from the image into guest memory marks exactly the pages it
    /// wrote in the memory's dirty bitmap (the kernel wrote them, not
    /// vm-memory); a write to the image marks nothing.
    #[test]
    fn reads_into_guest_memory_mark_their_pages_dirty() {
        let mem = crate::DeviceRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let path = std::env::temp_dir().join(format!("caravel-io-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 0x4000]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let dirty = |mem: &crate::DeviceRam| -> Vec<usize> {
            let region = mem.iter().next().unwrap();
            (0..0x100)
                .filter(|p| region.bitmap().dirty_at(p * 0x1000))
                .collect()
        };
        let seg = |addr, len| Segment {
            addr: GuestAddress(addr),
            len,
        };
        assert!(transfer(&file, &mem, &[seg(0x3000, 0x1000)], 0, false));
        assert!(
            dirty(&mem).is_empty(),
            "writing the image leaves memory clean"
        );
        assert!(transfer(
            &file,
            &mem,
            &[seg(0x5800, 0x1000), seg(0x9000, 0x200)],
            0,
            true
        ));
        assert_eq!(dirty(&mem), vec![5, 6, 9]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 7);
        std::fs::remove_file(&path).unwrap();
    }
}
