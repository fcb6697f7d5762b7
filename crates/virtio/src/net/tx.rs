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
use vm_memory::{Bytes, GuestMemory};

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
    buf.clear();
    for d in chain {
        if d.is_write_only() {
            return Err(BadFrame::Writable);
        }
        let len = d.len() as usize;
        if len > MAX_FRAME - buf.len() {
            return Err(BadFrame::TooLong);
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], d.addr())
            .map_err(|_| BadFrame::NotMemory)?;
    }
    if buf.len() < HDR_LEN {
        return Err(BadFrame::Short);
    }
    Ok(())
}

/// Sends the frame of `chain` to `tap`; returns the used length (0).
pub(crate) fn transmit<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut Vec<u8>,
    tap: &mut dyn TapQueue,
    counters: &NetCounters,
) -> u32 {
    if let Err(why) = gather(chain, mem, buf) {
        devices::warn_ratelimited!("virtio-net: transmit chain dropped: {why:?}");
        counters.tx_dropped.inc();
        return 0;
    }
    loop {
        match tap.write_frame(buf) {
            Ok(_) => {
                counters.tx_frames.inc();
                counters.tx_bytes.add((buf.len() - HDR_LEN) as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EINVAL: a header the TAP refuses; EIO: the link is down;
                // EAGAIN: the TAP's queue is full. The frame is lost, as
                // on a wire.
                devices::warn_ratelimited!("virtio-net: the TAP refused a frame: {e}");
                counters.tx_dropped.inc();
            }
        }
        return 0;
    }
}
