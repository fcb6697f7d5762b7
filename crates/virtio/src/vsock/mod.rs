//! virtio-vsock (virtio 1.2 §5.10) with the host end on Unix sockets, as
//! Firecracker and Cloud Hypervisor do it: see [`muxer`] for the host-side
//! protocol. Stream sockets only (no `VIRTIO_VSOCK_F_SEQPACKET`).
//!
//! Queues: receive 0 (packets to the guest), transmit 1 (from it), event 2
//! (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`). Connections do not survive a
//! snapshot: a restored device tells the guest its transport was reset
//! (the guest then closes its old sockets) and holds packets back until the
//! guest has handled that event.

mod connection;
pub mod muxer;
pub mod packet;
mod unix;

use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemory};

pub use connection::BUF_ALLOC;
pub use muxer::{parse_connect, Muxer, MAX_CONNECTIONS};
pub use packet::{Header, HDR_LEN, HOST_CID};

use crate::device::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt,
};
use crate::queue_util::{drain, next_chain, read_chain, writable_room, write_chain};
use crate::state::DeviceState;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features as common};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data in one packet, either way.
pub const MAX_PKT: usize = 64 * 1024;
const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`
const TRANSPORT_RESET: u32 = 0;
/// Packets placed per wake-up before other work gets a turn.
const RX_BUDGET: usize = 256;

/// Saved device state: the guest's CID (connections are not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSavedState {
    /// The guest's context ID.
    pub guest_cid: u64,
}

/// Whether `cid` may be a guest's: 0-2 are the hypervisor, local and host
/// addresses, and 2^32-1 is `VMADDR_CID_ANY`.
pub fn valid_guest_cid(cid: u64) -> bool {
    (3..u64::from(u32::MAX)).contains(&cid)
}

/// The socket device.
pub struct Vsock {
    guest_cid: u64,
    /// `None` while a worker holds it.
    muxer: Option<Muxer>,
    worker: Option<Worker<Handler>>,
    /// Tell the guest at the next activation that its connections are gone.
    reset_pending: bool,
    queue_sizes: [u16; 3],
}

impl Vsock {
    /// A device for the guest `guest_cid`, taking host connections on
    /// `listener` (bound at `path`) and making guest connections to
    /// `<path>_<port>`.
    pub fn new(guest_cid: u64, path: &Path, listener: UnixListener) -> Result<Self, String> {
        if !valid_guest_cid(guest_cid) {
            return Err(format!(
                "CID {guest_cid} is reserved: a guest's CID is 3 to {}",
                u32::MAX - 1
            ));
        }
        let muxer = Muxer::new(guest_cid, path, listener).map_err(|e| e.to_string())?;
        Ok(Self {
            guest_cid,
            muxer: Some(muxer),
            worker: None,
            reset_pending: false,
            queue_sizes: [QUEUE_SIZE; 3],
        })
    }
}

impl VirtioDeviceCommon for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        common::VERSION_1 | common::RING_EVENT_IDX | common::RING_INDIRECT_DESC
    }

    fn config_len(&self) -> usize {
        8
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        let Some(worker) = self.worker.take() else {
            return Vec::new();
        };
        match worker.stop() {
            Some(stopped) => {
                self.reset_pending = stopped.handler.reset_pending;
                self.muxer = Some(stopped.handler.muxer);
                stopped.queues
            }
            None => {
                log::error!("virtio-vsock: the worker panicked; its connections are lost");
                Vec::new()
            }
        }
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Vsock(VsockSavedState {
            guest_cid: self.guest_cid,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Vsock(s) if s.guest_cid == self.guest_cid => {
                self.reset_pending = true;
                Ok(())
            }
            DeviceState::Vsock(s) => Err(format!(
                "the snapshot's guest CID is {}, this device's {}",
                s.guest_cid, self.guest_cid
            )),
            other => Err(format!("state of another kind of device: {other:?}")),
        }
    }

    fn reset(&mut self) {
        drop(self.pause());
        self.reset_pending = false;
        if let Some(m) = &mut self.muxer {
            m.close_all();
        }
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Vsock {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        let Some(muxer) = self.muxer.take() else {
            return Err(ActivateError::Start(
                "the device's sockets were lost".into(),
            ));
        };
        let handler = Handler::new(muxer, self.reset_pending);
        match Worker::spawn("virtio-vsock", handler, queues, mem, interrupt) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => Err(ActivateError::Start(format!(
                "{e}; the vsock socket is closed"
            ))),
        }
    }
}

/// The worker's state: the muxer and the transport-reset handshake.
struct Handler {
    muxer: Muxer,
    /// A TRANSPORT_RESET event is owed to the guest.
    reset_pending: bool,
    /// The event went out when the driver's event-queue avail index was
    /// this; packets wait until the driver has published a buffer beyond
    /// it (Linux refills the event queue once it has handled the event).
    rx_gated: Option<u16>,
    /// Header and data of a packet either way.
    buf: Vec<u8>,
}

impl Handler {
    fn new(muxer: Muxer, reset_pending: bool) -> Self {
        Self {
            muxer,
            reset_pending,
            rx_gated: None,
            buf: Vec::with_capacity(HDR_LEN + MAX_PKT),
        }
    }

    /// Places packets for the guest into the receive queue while it has
    /// buffers; returns whether the driver needs an interrupt.
    fn deliver<M: GuestMemory>(&mut self, queues: &mut [ActiveQueue], mem: &M) -> bool {
        if self.reset_pending || !self.reset_handled(queues, mem) {
            return false;
        }
        let Some(q) = queues.iter_mut().find(|q| q.index == RX) else {
            return false;
        };
        let queue = &mut q.queue;
        let mut delivered = false;
        let mut stalled = false;
        for _ in 0..RX_BUDGET {
            if !self.muxer.has_rx_work() {
                break;
            }
            let start = queue.next_avail();
            let Some(chain) = next_chain(queue, mem, "virtio-vsock: receive queue") else {
                // Listen for new buffers; if some arrived meanwhile, go on.
                match queue.enable_notification(mem) {
                    Ok(true) if !stalled => {
                        stalled = true;
                        continue;
                    }
                    Ok(true) => devices::warn_ratelimited!(
                        "virtio-vsock: the receive ring's published buffers cannot be taken"
                    ),
                    _ => {}
                }
                break;
            };
            stalled = false;
            let head = chain.head_index();
            let room = match writable_room(&chain) {
                Some(room) if room >= HDR_LEN as u64 => room as usize,
                _ => {
                    devices::warn_ratelimited!(
                        "virtio-vsock: a receive buffer is device-readable or smaller than \
                         the header; returned empty"
                    );
                    if queue.add_used(mem, head, 0).is_err() {
                        break;
                    }
                    delivered = true;
                    continue;
                }
            };
            let data_room = (room - HDR_LEN).min(MAX_PKT);
            self.buf.resize(HDR_LEN + data_room, 0);
            let Some((hdr, n)) = self.muxer.next_rx(&mut self.buf[HDR_LEN..]) else {
                queue.set_next_avail(start);
                break;
            };
            self.buf[..HDR_LEN].copy_from_slice(&hdr.to_bytes());
            let wrote = write_chain(chain, mem, &self.buf[..HDR_LEN + n]);
            if wrote < HDR_LEN + n {
                devices::warn_ratelimited!(
                    "virtio-vsock: a receive buffer is not guest memory; a packet was lost"
                );
            }
            if queue.add_used(mem, head, wrote as u32).is_err() {
                devices::warn_ratelimited!("virtio-vsock: cannot write the receive used ring");
                break;
            }
            delivered = true;
        }
        delivered && queue.needs_notification(mem).unwrap_or(true)
    }

    /// One packet from the guest.
    fn transmit<M: GuestMemory>(&mut self, chain: DescriptorChain<&M>, mem: &M) {
        if let Err(e) = read_chain(chain, mem, &mut self.buf, HDR_LEN + MAX_PKT) {
            devices::warn_ratelimited!("virtio-vsock: transmit chain dropped: {e:?}");
            return;
        }
        let Some(raw) = self.buf.first_chunk::<HDR_LEN>() else {
            devices::warn_ratelimited!("virtio-vsock: transmit chain shorter than the header");
            return;
        };
        let hdr = Header::from_bytes(raw);
        let len = hdr.len as usize;
        if len > self.buf.len() - HDR_LEN {
            devices::warn_ratelimited!(
                "virtio-vsock: packet claims {len} bytes of data, its chain holds {}; dropped",
                self.buf.len() - HDR_LEN
            );
            return;
        }
        self.muxer
            .on_guest_packet(&hdr, &self.buf[HDR_LEN..HDR_LEN + len]);
    }

    /// Whether the guest has handled the TRANSPORT_RESET event: it has
    /// published an event buffer since (the gate lifts for good).
    fn reset_handled<M: GuestMemory>(&mut self, queues: &[ActiveQueue], mem: &M) -> bool {
        let Some(at) = self.rx_gated else {
            return true;
        };
        let now = queues
            .iter()
            .find(|q| q.index == EVENT)
            .and_then(|q| q.queue.avail_idx(mem, Ordering::Acquire).ok());
        if now.is_some_and(|idx| idx.0 != at) {
            self.rx_gated = None;
        }
        self.rx_gated.is_none()
    }

    /// Sends the TRANSPORT_RESET event if the driver posted a buffer for
    /// it; returns the event queue's avail index then (what the driver's
    /// refill will move past).
    fn send_reset<M: GuestMemory>(q: &mut Queue, mem: &M) -> Option<u16> {
        let Some(chain) = next_chain(q, mem, "virtio-vsock: event queue") else {
            let _ = q.enable_notification(mem);
            return None;
        };
        let head = chain.head_index();
        let wrote = write_chain(chain, mem, &TRANSPORT_RESET.to_le_bytes());
        if q.add_used(mem, head, wrote as u32).is_err() || wrote != 4 {
            return None;
        }
        let avail = q.avail_idx(mem, Ordering::Acquire).ok()?.0;
        // The driver posted several event buffers: with event-idx it would
        // not notify for the refill unless asked to at its current index
        // (enable_notification asks at our next entry, already published).
        let _ = q.enable_notification(mem);
        if q.event_idx_enabled() {
            let avail_event = q.used_ring() + 4 + 8 * u64::from(q.size());
            let _ = mem.write_obj(avail, vm_memory::GuestAddress(avail_event));
        }
        Some(avail)
    }

    /// Has the worker come back for the receive queue.
    fn kick_rx(queues: &[ActiveQueue]) {
        if let Some(q) = queues.iter().find(|q| q.index == RX) {
            let _ = q.notify.write(1);
        }
    }
}

impl QueueHandler for Handler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        match index {
            RX => self.deliver(queues, mem),
            TX => {
                let Some(q) = queues.iter_mut().find(|q| q.index == TX) else {
                    return false;
                };
                let notify = drain(q, mem, |chain| {
                    self.transmit(chain, mem);
                    0
                });
                // Answers (RESPONSE, RST, credit) go out on the receive
                // queue, which the worker serves next.
                if self.muxer.has_rx_work() {
                    Self::kick_rx(queues);
                }
                notify
            }
            EVENT => {
                let Some(q) = queues.iter_mut().find(|q| q.index == EVENT) else {
                    return false;
                };
                if self.reset_pending {
                    return match Self::send_reset(&mut q.queue, mem) {
                        Some(avail) => {
                            self.reset_pending = false;
                            self.rx_gated = Some(avail);
                            // Always interrupt: the guest must see it.
                            true
                        }
                        None => false,
                    };
                }
                let _ = q.queue.enable_notification(mem);
                if self.rx_gated.is_some() && self.reset_handled(queues, mem) {
                    // The driver refilled the event queue: packets held
                    // back go out now.
                    Self::kick_rx(queues);
                }
                false
            }
            _ => false,
        }
    }

    fn extra_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> (Vec<u16>, bool) {
        self.muxer.process_host_events();
        let notify = self.deliver(queues, mem);
        (if notify { vec![RX] } else { vec![] }, true)
    }
}

/// One wake-up of each kind without the thread: the transmit queue, the
/// host sockets, the receive queue and the event queue, over any guest
/// memory. The fuzz target drives the device through it.
pub fn process_once<M: GuestMemory>(
    queues: &mut [ActiveQueue],
    mem: &M,
    muxer: Muxer,
    reset_pending: bool,
) -> Muxer {
    let mut h = Handler::new(muxer, reset_pending);
    h.process_queue(TX, queues, mem);
    h.process_extra(queues, mem);
    h.process_queue(EVENT, queues, mem);
    h.process_queue(RX, queues, mem);
    h.process_queue(EVENT, queues, mem);
    h.process_queue(RX, queues, mem);
    h.muxer
}

#[cfg(test)]
mod tests;
