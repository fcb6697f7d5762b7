//! Transmit: the driver's frames to the TAP (virtio 1.2 §5.1.6.2).
//!
//! Each chain is one frame: the 12-byte header, then the packet, in
//! device-readable descriptors. The TAP checks the header's offload fields
//! itself (it refuses an inconsistent one with `EINVAL`). A chain that is
//! not a frame (a device-writable descriptor, shorter than the header,
//! longer than [`MAX_FRAME`], outside guest memory) and a frame the TAP
//! refuses are dropped and counted; the chain always goes back to the
//! driver, with length 0 as the spec asks of transmit buffers.

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::queue_util::{read_chain, ReadChainError};

use super::{NetCounters, HDR_LEN, MAX_FRAME};
use crate::net::backend::TapQueue;

/// Why a transmit chain is not a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadFrame {
    /// A device-writable descriptor in a transmit chain.
    Writable,
    /// Fewer bytes than the header.
    Short,
    /// More than [`MAX_FRAME`] bytes.
    TooLong,
    /// A buffer outside guest memory.
    NotMemory,
}

/// Copies the frame of `chain` into `buf` (reused between frames).
pub(crate) fn gather<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut Vec<u8>,
) -> Result<(), BadFrame> {
    read_chain(chain, mem, buf, MAX_FRAME).map_err(|e| match e {
        ReadChainError::Writable => BadFrame::Writable,
        ReadChainError::TooLong => BadFrame::TooLong,
        ReadChainError::NotMemory => BadFrame::NotMemory,
    })?;
    if buf.len() < HDR_LEN {
        return Err(BadFrame::Short);
    }
    Ok(())
}

/// Most descriptors written straight from guest memory; a longer chain
/// is copied (the kernel takes at most 1024 iovecs).
const MAX_IOV: usize = 64;

/// Writes the frame of `chain` to `tap` straight from guest memory when
/// every descriptor is device-readable guest memory;
/// `None` when the chain needs the copying path (which also finds out
/// what is wrong with it).
fn write_direct<M: GuestMemory>(
    chain: &DescriptorChain<&M>,
    mem: &M,
    tap: &mut dyn TapQueue,
) -> Option<(usize, std::io::Result<usize>)> {
    let mut slices = Vec::with_capacity(8);
    let mut total = 0usize;
    for d in chain.clone() {
        if d.is_write_only() {
            return None;
        }
        total += d.len() as usize;
        if total > MAX_FRAME {
            return None;
        }
        // A buffer across two memory regions gives two slices.
        for slice in mem
            .get_slices(d.addr(), d.len() as usize, vm_memory::Permissions::Read)
            .ok()?
        {
            if slices.len() == MAX_IOV {
                return None;
            }
            slices.push(slice.ok()?);
        }
    }
    if total < HDR_LEN {
        return None;
    }
    // The guards keep each slice's mapping pinned while the kernel reads it.
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
    let iov: Vec<libc::iovec> = guards
        .iter()
        .zip(&slices)
        .map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect();
    // SAFETY: each iovec is a guest memory slice checked by get_slices,
    // mapped for as long as `mem` is borrowed and pinned by `guards`, which
    // live past the call. The guest may change the bytes meanwhile; the
    // kernel copies them and checks the header itself.
    let written = unsafe { tap.write_frame_iov(&iov) };
    drop(guards);
    Some((total, written))
}

/// Sends the frame of `chain` to `tap`; returns the used length (0).
pub(crate) fn transmit<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut Vec<u8>,
    tap: &mut dyn TapQueue,
    counters: &NetCounters,
) -> u32 {
    let (len, result) = match write_direct(&chain, mem, tap) {
        Some(sent) => sent,
        None => {
            if let Err(why) = gather(chain, mem, buf) {
                devices::warn_ratelimited!("virtio-net: transmit chain dropped: {why:?}");
                counters.tx_dropped.inc();
                return 0;
            }
            (buf.len(), tap.write_frame(buf))
        }
    };
    match result {
        Ok(_) => {
            counters.tx_frames.inc();
            counters.tx_bytes.add((len - HDR_LEN) as u64);
        }
        Err(e) => {
            // EINVAL: a header the TAP refuses; EIO: the link is down;
            // EAGAIN: the TAP's queue is full. The frame is lost, as on a
            // wire (the TAP is non-blocking: no EINTR to retry).
            devices::warn_ratelimited!("virtio-net: the TAP refused a frame: {e}");
            counters.tx_dropped.inc();
        }
    }
    0
}
