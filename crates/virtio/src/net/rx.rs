//! Receive: frames from the TAP into the driver's receive buffers
//! (virtio 1.2 §5.1.6.3-4).
//!
//! A frame is read from the TAP first and then placed: into one chain, or
//! with `VIRTIO_NET_F_MRG_RXBUF` spread over as many chains as it needs,
//! `num_buffers` saying how many. When the driver has not posted room for
//! it the frame waits (one frame at most) and the TAP is not read again
//! until the driver posts buffers, so a driver that posts none costs
//! nothing. Chains the driver got wrong (a device-readable descriptor,
//! smaller than the header) are returned empty; a frame larger than a chain
//! without mergeable buffers is dropped. Everything is counted.

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};

use super::{NetCounters, HDR_LEN, MAX_FRAME};
use crate::net::backend::TapQueue;
use crate::queue_util::next_chain;

/// Frames handled per wake-up before other work (transmit) gets a turn.
const BUDGET: usize = 128;

/// What became of a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// In the used ring.
    Delivered,
    /// The driver has not posted room for it; the frame waits.
    NoBuffers,
    /// Dropped (counted): it fits no buffer the driver gave.
    Dropped,
}

/// The receive side of one queue pair.
pub(crate) struct Receiver {
    frame: Vec<u8>,
    /// Length of the frame waiting in `frame` (0: none).
    pending: usize,
    mergeable: bool,
}

impl Receiver {
    pub(crate) fn new(mergeable: bool) -> Self {
        Self {
            frame: vec![0; MAX_FRAME],
            pending: 0,
            mergeable,
        }
    }

    /// Whether a frame waits for buffers.
    #[cfg(test)]
    pub(crate) fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Moves frames from `tap` into `queue` until the TAP is empty, the
    /// driver's buffers run out or the budget is spent. Returns (the driver
    /// needs an interrupt, keep polling the TAP).
    pub(crate) fn receive<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        tap: &mut dyn TapQueue,
        counters: &NetCounters,
    ) -> (bool, bool) {
        let mut delivered = false;
        let mut keep = true;
        // "No room" right after the driver said it published more is a
        // race once; twice in a row the ring is broken.
        let mut stalled = false;
        for _ in 0..BUDGET {
            if self.pending == 0 {
                match tap.read_frame(&mut self.frame) {
                    Ok(n) if n >= HDR_LEN => self.pending = n,
                    Ok(_) => {
                        counters.rx_dropped.inc();
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        devices::warn_ratelimited!("virtio-net: reading the TAP failed: {e}");
                        keep = false;
                        break;
                    }
                }
            }
            let len = self.pending;
            match place_frame(queue, mem, &mut self.frame[..len], self.mergeable, counters) {
                Placement::Delivered => {
                    stalled = false;
                    self.pending = 0;
                    delivered = true;
                    counters.rx_frames.inc();
                    counters.rx_bytes.add((len - HDR_LEN) as u64);
                }
                Placement::Dropped => {
                    self.pending = 0;
                    counters.rx_dropped.inc();
                }
                Placement::NoBuffers => {
                    // Listen for new buffers; if some arrived meanwhile, go on.
                    match queue.enable_notification(mem) {
                        Ok(true) if !stalled => {
                            stalled = true;
                            continue;
                        }
                        Ok(true) => devices::warn_ratelimited!(
                            "virtio-net: the receive ring's published buffers cannot be taken"
                        ),
                        Ok(false) => {}
                        Err(e) => devices::warn_ratelimited!("virtio-net: receive queue: {e}"),
                    }
                    keep = false;
                    break;
                }
            }
        }
        let notify = delivered && queue.needs_notification(mem).unwrap_or(true);
        (notify, keep)
    }
}

/// Room the device may write in `chain`, or `None` when the chain is
/// malformed for receiving (a device-readable descriptor, or less room than
/// the header).
fn capacity<M: GuestMemory>(chain: &DescriptorChain<&M>) -> Option<u64> {
    crate::queue_util::writable_room(chain).filter(|&room| room >= HDR_LEN as u64)
}

/// Places `frame` (header first) into the driver's receive buffers; see
/// [`Placement`]. Writes `num_buffers` into the frame's header.
pub(crate) fn place_frame<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &mut [u8],
    mergeable: bool,
    counters: &NetCounters,
) -> Placement {
    // Which chains the frame takes: nothing is consumed until the frame
    // fits (every other exit rewinds to `start`), except malformed chains
    // at the front, which are returned empty so they cannot block the ring.
    let mut start = queue.next_avail();
    let mut chains = Vec::new();
    let mut room = 0u64;
    while room < frame.len() as u64 {
        let Some(chain) = next_chain(queue, mem, "virtio-net: receive queue") else {
            queue.set_next_avail(start);
            return Placement::NoBuffers;
        };
        match capacity(&chain) {
            Some(cap) => {
                room += cap;
                chains.push(chain);
            }
            None if chains.is_empty() => {
                devices::warn_ratelimited!(
                    "virtio-net: a receive chain is device-readable or shorter than the header; returned empty"
                );
                counters.bad_chains.inc();
                if queue.add_used(mem, chain.head_index(), 0).is_err() {
                    return Placement::NoBuffers;
                }
                start = queue.next_avail();
                continue;
            }
            None => {
                counters.bad_chains.inc();
                queue.set_next_avail(start);
                return Placement::Dropped;
            }
        }
        if !mergeable {
            break;
        }
    }
    if room < frame.len() as u64 {
        devices::warn_ratelimited!(
            "virtio-net: a {}-byte frame does not fit a {room}-byte receive buffer; dropped",
            frame.len()
        );
        queue.set_next_avail(start);
        return Placement::Dropped;
    }
    // At most the ring size, so it fits.
    let num_buffers = chains.len() as u16;
    frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    let mut off = 0usize;
    for chain in chains {
        let head = chain.head_index();
        let start = off;
        for d in chain {
            if off == frame.len() {
                break;
            }
            let n = (d.len() as usize).min(frame.len() - off);
            if mem.write_slice(&frame[off..off + n], d.addr()).is_err() {
                devices::warn_ratelimited!(
                    "virtio-net: receive buffer at {:#x} is not guest memory",
                    d.addr().0
                );
                counters.bad_chains.inc();
                // The rest of this chain's share is lost; later chains
                // take the bytes that follow.
                break;
            }
            off += n;
        }
        if queue.add_used(mem, head, (off - start) as u32).is_err() {
            devices::warn_ratelimited!("virtio-net: cannot write the receive used ring");
            return Placement::Dropped;
        }
    }
    Placement::Delivered
}
