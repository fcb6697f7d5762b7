//! What the network device reads frames from and writes them to: one queue
//! of a host TAP (opened by the VMM), or a socket pair in tests and fuzzing.
//! Every frame starts with the 12-byte `virtio_net_hdr_v1`, as a TAP opened
//! with `IFF_VNET_HDR` and `TUNSETVNETHDRSZ` 12 exchanges them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::fd_io::{read_fd, set_nonblocking, write_fd, writev_fd};

/// One queue of a TAP device (or a stand-in): non-blocking, one frame per
/// read or write.
pub trait TapQueue: Send {
    /// The descriptor the worker polls for readability.
    fn fd(&self) -> RawFd;
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Writes one frame gathered from `iov` (`writev(2)`), straight from
    /// guest memory.
    ///
    /// # Safety
    ///
    /// Every entry of `iov` must describe memory that stays mapped and
    /// readable for the duration of the call.
    unsafe fn write_frame_iov(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller's contract is writev's.
        unsafe { writev_fd(self.fd(), iov) }
    }
    /// Sets the offloads the TAP may hand over (`TUNSETOFFLOAD`, `TUN_F_*`
    /// bits): what the driver accepted to receive.
    fn set_offload(&self, tun_flags: u32) -> io::Result<()>;
}

/// `TUN_F_*` (include/uapi/linux/if_tun.h): offloads a TAP may deliver.
pub mod tun_flags {
    /// Partial checksums.
    pub const CSUM: u32 = 0x01;
    /// TCP segmentation offload, IPv4.
    pub const TSO4: u32 = 0x02;
    /// TCP segmentation offload, IPv6.
    pub const TSO6: u32 = 0x04;
    /// TSO with ECN.
    pub const TSO_ECN: u32 = 0x08;
    /// UDP fragmentation offload.
    pub const UFO: u32 = 0x10;
}

/// A frame-preserving stand-in for a TAP: one end of a `SOCK_SEQPACKET`
/// socket pair (tests and the fuzz target hold the other end). Offloads are
/// recorded, not applied.
pub struct SocketTap {
    sock: OwnedFd,
    offload: std::sync::atomic::AtomicU32,
}

impl SocketTap {
    /// A connected pair: the device's end and the host's end (a blocking
    /// `UnixDatagram`-like socket the caller reads and writes frames on).
    pub fn pair() -> io::Result<(Self, std::os::unix::net::UnixStream)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into `fds`, a valid
        // two-element array; the return value is checked before they are used.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (dev, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let dev_tap = Self {
            sock: dev,
            offload: std::sync::atomic::AtomicU32::new(0),
        };
        set_nonblocking(dev_tap.sock.as_raw_fd())?;
        Ok((dev_tap, std::os::unix::net::UnixStream::from(host)))
    }

    /// The offloads last set.
    pub fn offload(&self) -> u32 {
        self.offload.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl TapQueue for SocketTap {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.sock.as_raw_fd(), buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        write_fd(self.sock.as_raw_fd(), frame)
    }

    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        self.offload
            .store(tun_flags, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
