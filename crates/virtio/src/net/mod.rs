//! virtio-net (virtio 1.2 §5.1) over a host TAP: one worker thread per
//! queue pair, each with its own TAP queue; checksum and segmentation
//! offloads pass through in the 12-byte `virtio_net_hdr_v1` that the TAP
//! (opened `IFF_VNET_HDR`) speaks too, and the TAP is told with
//! `TUNSETOFFLOAD` which offloads the driver accepted to receive.
//!
//! Queues: receive 2n, transmit 2n+1 for pair n, then the control queue
//! (at 2 when `VIRTIO_NET_F_MQ` is not negotiated). The device is sans-I/O
//! apart from its [`TapQueue`]s, which the VMM opens.

mod backend;
mod ctrl;
mod rx;
mod tx;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestAddressSpace, GuestMemory};

pub use backend::{tun_flags, SocketTap, TapQueue};

use crate::device::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt,
};
use crate::queue_util::drain;
use crate::state::DeviceState;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features as common};

/// `virtio_net_hdr_v1` (with `num_buffers`): what precedes every frame.
pub const HDR_LEN: usize = 12;
/// The largest frame with its header: a 64 KiB GSO packet, its Ethernet
/// and VLAN headers, and the virtio header.
pub const MAX_FRAME: usize = HDR_LEN + 65_535 + 14 + 4;
/// Default size of each receive and transmit queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Most queue pairs one device may have.
pub const MAX_QUEUE_PAIRS: u16 = 16;
const CTRL_QUEUE_SIZE: u16 = 64;
const CONFIG_LEN: usize = 12;
/// `VIRTIO_NET_S_LINK_UP`
const LINK_UP: u16 = 1;

/// `VIRTIO_NET_F_*` feature bits.
pub mod features {
    /// The device handles packets with partial checksums.
    pub const CSUM: u64 = 1 << 0;
    /// The driver handles packets with partial checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// Receive offloads can be changed through the control queue.
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    /// The device has a MAC address.
    pub const MAC: u64 = 1 << 5;
    /// The driver receives TSOv4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver receives TSOv6.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The driver receives TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// The driver receives UFO.
    pub const GUEST_UFO: u64 = 1 << 10;
    /// The device takes TSOv4.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device takes TSOv6.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// The device takes TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// The device takes UFO.
    pub const HOST_UFO: u64 = 1 << 14;
    /// Frames may span receive buffers (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Link status in the configuration space.
    pub const STATUS: u64 = 1 << 16;
    /// A control queue.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// Several queue pairs.
    pub const MQ: u64 = 1 << 22;
}

/// The receive offloads (`VIRTIO_NET_F_GUEST_*`), which the control queue
/// may change.
pub const GUEST_OFFLOAD_BITS: u64 = features::GUEST_CSUM
    | features::GUEST_TSO4
    | features::GUEST_TSO6
    | features::GUEST_ECN
    | features::GUEST_UFO;

/// The `TUN_F_*` flags for receive offloads `bits`: the TAP may hand over
/// only what the driver accepts. Segmentation needs checksum offload.
pub fn guest_offloads_to_tun(bits: u64) -> u32 {
    use features as f;
    if bits & f::GUEST_CSUM == 0 {
        return 0;
    }
    let mut t = tun_flags::CSUM;
    for (feature, flag) in [
        (f::GUEST_TSO4, tun_flags::TSO4),
        (f::GUEST_TSO6, tun_flags::TSO6),
        (f::GUEST_ECN, tun_flags::TSO_ECN),
        (f::GUEST_UFO, tun_flags::UFO),
    ] {
        if bits & feature != 0 {
            t |= flag;
        }
    }
    t
}

/// A counter shared between a worker and whoever reports it.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a network device has moved and refused, over all its queue pairs.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered to the driver.
    pub rx_frames: Counter,
    /// Their bytes (without the virtio header).
    pub rx_bytes: Counter,
    /// Frames from the TAP dropped (no buffer large enough, malformed ring).
    pub rx_dropped: Counter,
    /// Frames written to the TAP.
    pub tx_frames: Counter,
    /// Their bytes (without the virtio header).
    pub tx_bytes: Counter,
    /// Transmit chains dropped (malformed, or refused by the TAP).
    pub tx_dropped: Counter,
    /// Receive chains returned empty because they were malformed.
    pub bad_chains: Counter,
}

/// How the device presents itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetOptions {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Size of each receive and transmit queue (a power of two).
    pub queue_size: u16,
    /// Offer UDP fragmentation offload (the TAP accepted `TUN_F_UFO`).
    pub ufo: bool,
}

/// Saved device state: the MAC and the receive offloads in force (the
/// driver may have changed them through the control queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSavedState {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// `VIRTIO_NET_F_GUEST_*` bits in force.
    pub guest_offloads: u64,
}

/// The network device.
pub struct Net {
    options: NetOptions,
    /// One per queue pair; `None` while a worker holds it.
    taps: Vec<Option<Box<dyn TapQueue>>>,
    queue_sizes: Vec<u16>,
    workers: Vec<Worker<PairHandler>>,
    /// Receive offloads in force, as of the last pause.
    guest_offloads: u64,
    /// Set by a restore: the offloads to apply at the next activation.
    restored_offloads: Option<u64>,
    counters: Arc<NetCounters>,
}

impl Net {
    /// A device with one queue pair per TAP queue in `taps` (1 to
    /// [`MAX_QUEUE_PAIRS`]).
    pub fn new(options: NetOptions, taps: Vec<Box<dyn TapQueue>>) -> Result<Self, String> {
        let pairs = taps.len();
        if pairs == 0 || pairs > usize::from(MAX_QUEUE_PAIRS) {
            return Err(format!(
                "{pairs} queue pairs: between 1 and {MAX_QUEUE_PAIRS} are supported"
            ));
        }
        if !options.queue_size.is_power_of_two() || options.queue_size < 2 {
            return Err(format!(
                "queue size {} is not a power of two of at least 2",
                options.queue_size
            ));
        }
        let mut queue_sizes = vec![options.queue_size; 2 * pairs];
        queue_sizes.push(CTRL_QUEUE_SIZE);
        Ok(Self {
            options,
            taps: taps.into_iter().map(Some).collect(),
            queue_sizes,
            workers: Vec::new(),
            guest_offloads: 0,
            restored_offloads: None,
            counters: Arc::default(),
        })
    }

    /// The device's traffic counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    fn pairs(&self) -> u16 {
        self.taps.len() as u16
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.options.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&self.pairs().to_le_bytes());
        c
    }

    fn set_offloads(&self, bits: u64) {
        if let Some(Some(tap)) = self.taps.first() {
            if let Err(e) = tap.set_offload(guest_offloads_to_tun(bits)) {
                devices::warn_ratelimited!("virtio-net: TUNSETOFFLOAD failed: {e}");
            }
        }
    }
}

impl VirtioDeviceCommon for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        use features as f;
        let mut bits = common::VERSION_1
            | common::RING_EVENT_IDX
            | common::RING_INDIRECT_DESC
            | f::CSUM
            | f::GUEST_CSUM
            | f::CTRL_GUEST_OFFLOADS
            | f::MAC
            | f::GUEST_TSO4
            | f::GUEST_TSO6
            | f::GUEST_ECN
            | f::HOST_TSO4
            | f::HOST_TSO6
            | f::HOST_ECN
            | f::MRG_RXBUF
            | f::STATUS
            | f::CTRL_VQ;
        if self.options.ufo {
            bits |= f::GUEST_UFO | f::HOST_UFO;
        }
        if self.pairs() > 1 {
            bits |= f::MQ;
        }
        bits
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        let mut queues = Vec::new();
        for (pair, w) in self.workers.drain(..).enumerate() {
            match w.stop() {
                Some(stopped) => {
                    let h = stopped.handler;
                    if let Some((_, c)) = &h.ctrl {
                        self.guest_offloads = c.guest_offloads;
                    }
                    if let Some(slot) = self.taps.get_mut(h.pair) {
                        *slot = Some(h.tap);
                    }
                    queues.extend(stopped.queues);
                }
                None => log::error!("virtio-net: the worker of queue pair {pair} panicked"),
            }
        }
        queues.sort_by_key(|q| q.index);
        queues
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(NetSavedState {
            mac: self.options.mac,
            guest_offloads: self.guest_offloads,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Net(s) => {
                self.options.mac = s.mac;
                self.guest_offloads = s.guest_offloads;
                self.restored_offloads = Some(s.guest_offloads);
                Ok(())
            }
            other => Err(format!("state of another kind of device: {other:?}")),
        }
    }

    fn reset(&mut self) {
        drop(self.pause());
        self.guest_offloads = 0;
        self.set_offloads(0);
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Net {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        acked: u64,
    ) -> Result<(), ActivateError> {
        use features as f;
        let max_pairs = self.pairs();
        let mq = acked & f::MQ != 0;
        let used_pairs = if mq { max_pairs } else { 1 };
        let ctrl_index = (acked & f::CTRL_VQ != 0).then_some(if mq { 2 * max_pairs } else { 2 });
        // Queues per pair; the control queue (and any queue of a pair the
        // driver does not use) goes with pair 0.
        let mut groups: Vec<Vec<ActiveQueue>> = (0..used_pairs).map(|_| Vec::new()).collect();
        for q in queues {
            let pair = if Some(q.index) == ctrl_index || q.index / 2 >= used_pairs {
                0
            } else {
                q.index / 2
            };
            groups[usize::from(pair)].push(q);
        }
        let offloads = self
            .restored_offloads
            .take()
            .unwrap_or(acked & GUEST_OFFLOAD_BITS);
        self.set_offloads(offloads);
        self.guest_offloads = offloads;
        for (pair, queues) in groups.into_iter().enumerate() {
            if queues.is_empty() {
                continue;
            }
            let Some(tap) = self.taps.get_mut(pair).and_then(Option::take) else {
                return Err(ActivateError::Start(format!(
                    "the TAP queue of pair {pair} was lost"
                )));
            };
            let ctrl = ctrl_index.filter(|_| pair == 0).map(|i| {
                (
                    i,
                    ctrl::Control {
                        acked,
                        max_pairs,
                        guest_offloads: offloads,
                    },
                )
            });
            let handler = PairHandler::new(pair, tap, ctrl, acked, self.counters.clone());
            match Worker::spawn(
                &format!("virtio-net-qp{pair}"),
                handler,
                queues,
                mem.clone(),
                interrupt.clone(),
            ) {
                Ok(w) => self.workers.push(w),
                Err(e) => {
                    // No half-started device: the pairs already running stop
                    // (their TAP queues come back); this pair's TAP queue
                    // went with its handler.
                    drop(self.pause());
                    return Err(ActivateError::Start(format!(
                        "queue pair {pair}: {e}; its TAP queue is closed"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What a queue pair's worker does on one wake-up of each kind, without
/// the thread: transmit (queue 1), frames from `tap` (into queue 0), the
/// control queue (2) and a receive notification, over any guest memory.
/// The fuzz target drives the device through it; returns the TAP.
pub fn process_once<M: GuestMemory>(
    queues: &mut [ActiveQueue],
    mem: &M,
    tap: Box<dyn TapQueue>,
    acked: u64,
) -> Box<dyn TapQueue> {
    let control = ctrl::Control {
        acked,
        max_pairs: 1,
        guest_offloads: acked & GUEST_OFFLOAD_BITS,
    };
    let mut h = PairHandler::new(0, tap, Some((2, control)), acked, Arc::default());
    h.process_queue(1, queues, mem);
    h.process_extra(queues, mem);
    h.process_queue(2, queues, mem);
    h.process_queue(0, queues, mem);
    h.tap
}

/// One queue pair's worker state (pair 0 also answers the control queue).
struct PairHandler {
    pair: usize,
    tap: Box<dyn TapQueue>,
    rx: u16,
    tx: u16,
    ctrl: Option<(u16, ctrl::Control)>,
    receiver: rx::Receiver,
    tx_buf: Vec<u8>,
    counters: Arc<NetCounters>,
}

impl PairHandler {
    /// Pair `pair`'s worker state (queues 2·pair and 2·pair+1), with the
    /// control queue at its index when this pair serves it.
    fn new(
        pair: usize,
        tap: Box<dyn TapQueue>,
        ctrl: Option<(u16, ctrl::Control)>,
        acked: u64,
        counters: Arc<NetCounters>,
    ) -> Self {
        let p = pair as u16;
        Self {
            pair,
            tap,
            rx: 2 * p,
            tx: 2 * p + 1,
            ctrl,
            receiver: rx::Receiver::new(acked & features::MRG_RXBUF != 0),
            tx_buf: Vec::with_capacity(MAX_FRAME),
            counters,
        }
    }

    fn receive<M: GuestMemory>(&mut self, queues: &mut [ActiveQueue], mem: &M) -> (bool, bool) {
        match queues.iter_mut().find(|q| q.index == self.rx) {
            Some(q) => self
                .receiver
                .receive(&mut q.queue, mem, &mut *self.tap, &self.counters),
            None => (false, false),
        }
    }
}

impl QueueHandler for PairHandler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        if index == self.rx {
            // New buffers: a waiting frame and the TAP's backlog go in now
            // (the worker polls the TAP again after this).
            return self.receive(queues, mem).0;
        }
        let Some(q) = queues.iter_mut().find(|q| q.index == index) else {
            return false;
        };
        if index == self.tx {
            let (tap, buf, counters) = (&mut self.tap, &mut self.tx_buf, &self.counters);
            return drain(q, mem, |chain| {
                tx::transmit(chain, mem, buf, &mut **tap, counters)
            });
        }
        match &mut self.ctrl {
            Some((ctrl_index, control)) if *ctrl_index == index => {
                let tap = &*self.tap;
                drain(q, mem, |chain| control.handle(chain, mem, tap))
            }
            _ => false,
        }
    }

    fn extra_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.tap.fd())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> (Vec<u16>, bool) {
        let (notify, keep) = self.receive(queues, mem);
        (if notify { vec![self.rx] } else { vec![] }, keep)
    }
}

#[cfg(test)]
mod tests;
