//! Reads and writes on host descriptors the VMM hands to devices (a TAP
//! queue, a terminal): one syscall each, no buffering, the descriptor
//! left open.

use std::io;
use std::os::fd::RawFd;

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `read(2)` from `fd` into `buf` (one frame, for a TAP).
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `writev(2)` of one frame to `fd`.
///
/// # Safety
///
/// Every entry of `iov` must describe memory readable for the call.
pub unsafe fn writev_fd(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let count = iov.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `iov` holds `count` valid iovecs, each describing readable
    // memory by the caller's contract; writev only reads them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` of `frame` to `fd` (one frame, for a TAP).
pub fn write_fd(fd: RawFd, frame: &[u8]) -> io::Result<usize> {
    // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the call.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
