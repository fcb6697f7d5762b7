//! virtio-pci modern transport (virtio 1.2 §4.1): a non-transitional PCI
//! function (vendor 0x1af4, device 0x1040 + type) with all configuration
//! structures in one 64-bit BAR:
//!
//! | offset | structure |
//! | --- | --- |
//! | 0x0000 | common configuration (56 bytes) |
//! | 0x2000 | ISR status (1 byte, read clears) |
//! | 0x4000 | device configuration |
//! | 0x6000 | notifications (queue `i` at `4 * i`; KVM ioeventfds in the VMM) |
//! | 0x8000 | MSI-X table |
//! | 0x10000 | MSI-X pending bits |

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use pci::{
    apply_events, Bar, BarKind, BarMove, ConfigSpace, MsixCap, MsixEvent, MsixSink, MsixTable,
    PciClass, PciDevice, Trigger, CAP_ID_VENDOR,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common_config::{CommonAction, CommonConfig, NO_VECTOR};
use crate::device::{ActiveQueue, VirtioDevice, VirtioInterrupt};
use crate::state::{QueueSnapshot, VirtioPciState};
use crate::{device_type, features, status};

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x2_0000;
const COMMON_OFFSET: u64 = 0x0;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x2000;
const DEVICE_OFFSET: u64 = 0x4000;
const DEVICE_MAX_LEN: u64 = 0x1000;
/// Offset of the notification area in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x6000;
const NOTIFY_MAX_LEN: u64 = 0x2000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x8000;
const MSIX_PBA_OFFSET: u64 = 0x1_0000;

const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// `struct virtio_pci_cap` (+ `notify_off_multiplier` for the notify cap).
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let mut c = vec![CAP_ID_VENDOR, 0, 0, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        c.extend_from_slice(&x.to_le_bytes());
    }
    c[2] = c.len() as u8;
    c
}

fn class_of(device_type: u32) -> PciClass {
    let (class, subclass) = match device_type {
        device_type::BLOCK => (0x01, 0x80),
        device_type::CONSOLE => (0x07, 0x80),
        device_type::MEM => (0x05, 0x80),
        _ => (0xff, 0x00),
    };
    PciClass {
        class,
        subclass,
        prog_if: 0,
    }
}

/// Signals the driver through MSI-X (the transport's [`VirtioInterrupt`]).
struct PciInterrupt {
    msix: Arc<Mutex<MsixTable>>,
    queue_vectors: Arc<Mutex<Vec<u16>>>,
    config_vector: Arc<AtomicU16>,
    isr: Arc<AtomicU8>,
    sink: Arc<dyn MsixSink>,
}

impl PciInterrupt {
    fn signal(&self, vector: u16) {
        if vector == NO_VECTOR {
            // No INTx: virtio devices here are MSI-X only (interrupt pin 0).
            return;
        }
        let t = self
            .msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trigger(vector);
        if let Trigger::Deliver { .. } = t {
            self.sink.deliver(vector);
        }
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn notify_queue(&self, index: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
        let v = self
            .queue_vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(usize::from(index))
            .copied()
            .unwrap_or(NO_VECTOR);
        self.signal(v);
    }

    fn notify_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
        self.signal(self.config_vector.load(Ordering::Acquire));
    }
}

/// A virtio device as a PCI function, over guest memory from the address
/// space `A` (the VMM's [`crate::DeviceMemory`] by default).
pub struct VirtioPciDevice<A: GuestAddressSpace = crate::DeviceMemory> {
    name: String,
    config: ConfigSpace,
    common: CommonConfig,
    device: Box<dyn VirtioDevice<A>>,
    msix: Arc<Mutex<MsixTable>>,
    msix_cap: MsixCap,
    pci_cfg_cap: usize,
    interrupt: Arc<PciInterrupt>,
    notify: Vec<EventFd>,
    mem: A,
    active: bool,
    /// The queues of an active device whose worker is stopped (VM pause).
    paused: Option<Vec<ActiveQueue>>,
}

impl<A: GuestAddressSpace> VirtioPciDevice<A> {
    /// Wraps `device`, with BAR 0 at `bar_addr` (64-bit, aligned to
    /// [`BAR0_SIZE`]) and MSI-X vectors delivered through `sink`.
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice<A>>,
        mem: A,
        bar_addr: u64,
        sink: Arc<dyn MsixSink>,
    ) -> std::io::Result<Self> {
        let kind = device.device_type();
        let nq = device.queue_max_sizes().len();
        let vectors = (nq + 1).min(usize::from(pci::MSIX_MAX_VECTORS)) as u16;
        let mut config = ConfigSpace::new(
            0x1af4,
            0x1040 + kind as u16,
            class_of(kind),
            1,
            0x1af4,
            0x40,
        );
        config.add_bar(0, BarKind::Mem64, BAR0_SIZE, false, bar_addr);
        let dev_len = (device.config_len() as u64).min(DEVICE_MAX_LEN);
        for cap in [
            virtio_cap(CAP_COMMON, COMMON_OFFSET, COMMON_LEN, None),
            virtio_cap(CAP_ISR, ISR_OFFSET, 1, None),
            virtio_cap(CAP_DEVICE, DEVICE_OFFSET, dev_len.max(1), None),
            virtio_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                (nq as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)).max(4),
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
        ] {
            config
                .add_capability(&cap, &[])
                .ok_or_else(|| std::io::Error::other("PCI capability area full"))?;
        }
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are driver-writable.
        let cfg_cap = virtio_cap(CAP_PCI_CFG, 0, 0, Some(0));
        let mut cfg_mask = vec![0u8; cfg_cap.len()];
        cfg_mask[4] = 0xff;
        cfg_mask[8..20].fill(0xff);
        let pci_cfg_cap = config
            .add_capability(&cfg_cap, &cfg_mask)
            .ok_or_else(|| std::io::Error::other("PCI capability area full"))?;
        let (body, wmask) = MsixCap::body(
            vectors,
            0,
            MSIX_TABLE_OFFSET as u32,
            0,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_off = config
            .add_capability(&body, &wmask)
            .ok_or_else(|| std::io::Error::other("PCI capability area full"))?;
        let msix = Arc::new(Mutex::new(MsixTable::new(vectors)));
        let common = CommonConfig::new(
            device.features() & !features::ACCESS_PLATFORM,
            device.queue_max_sizes(),
            vectors,
        );
        let interrupt = Arc::new(PciInterrupt {
            msix: msix.clone(),
            queue_vectors: Arc::new(Mutex::new(vec![NO_VECTOR; nq])),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            isr: Arc::new(AtomicU8::new(0)),
            sink,
        });
        let notify = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            config,
            common,
            device,
            msix,
            msix_cap: MsixCap { offset: msix_off },
            pci_cfg_cap,
            interrupt,
            notify,
            mem,
            active: false,
            paused: None,
        })
    }

    /// The eventfd of each queue's notification, for KVM ioeventfds at
    /// [`VirtioPciDevice::notify_address`].
    pub fn notify_eventfds(&self) -> &[EventFd] {
        &self.notify
    }

    /// Guest-physical address the driver writes to notify queue `index`.
    pub fn notify_address(&self, index: u16) -> u64 {
        self.bar_addr() + NOTIFY_OFFSET + u64::from(index) * u64::from(NOTIFY_OFF_MULTIPLIER)
    }

    /// Current address of BAR 0.
    pub fn bar_addr(&self) -> u64 {
        self.config.bar(0).map_or(0, |b| b.addr)
    }

    /// The device's interrupt path, for config-change notifications from the VMM.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }

    /// Device status as the driver left it.
    pub fn status(&self) -> u8 {
        self.common.status
    }

    fn sync_vectors(&self) {
        *self
            .interrupt
            .queue_vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.common.queue_vectors.clone();
        self.interrupt
            .config_vector
            .store(self.common.config_vector, Ordering::Release);
    }

    /// Stops the device for good (VM teardown): its worker is stopped and
    /// joined, so it no longer touches guest memory when this returns.
    pub fn shutdown(&mut self) {
        self.reset();
    }

    /// Stops the device's worker and keeps its queues (VM pause): nothing
    /// of this device touches guest memory until [`VirtioPciDevice::resume`].
    pub fn pause(&mut self) {
        if self.active && self.paused.is_none() {
            self.paused = Some(self.device.pause());
        }
    }

    /// Continues a paused device where it stopped (a restored device starts
    /// here too).
    pub fn resume(&mut self) {
        let Some(queues) = self.paused.take() else {
            return;
        };
        let features = self.common.negotiated();
        if let Err(e) =
            self.device
                .activate(self.mem.clone(), self.interrupt.clone(), queues, features)
        {
            self.active = false;
            self.needs_reset(&e.to_string());
        }
    }

    /// The transport's and the device's state, for a snapshot; the device
    /// must be paused (or not active).
    pub fn save(&self) -> Result<VirtioPciState, String> {
        if self.active && self.paused.is_none() {
            return Err(format!(
                "{}: the device is running: pause it first",
                self.name
            ));
        }
        let mut common = self.common.state();
        for q in self.paused.iter().flatten() {
            if let Some(saved) = common.queues.get_mut(usize::from(q.index)) {
                let live = QueueSnapshot::of(&q.queue);
                saved.next_avail = live.next_avail;
                saved.next_used = live.next_used;
                saved.event_idx = live.event_idx;
            }
        }
        Ok(VirtioPciState {
            device_type: self.device.device_type(),
            config: self.config.state(),
            msix: self.msix.lock().unwrap_or_else(|e| e.into_inner()).state(),
            common,
            isr: self.interrupt.isr.load(Ordering::Acquire),
            device: self.device.save_state(),
        })
    }

    /// Restores a saved state into this freshly built device (never
    /// activated) and returns the BARs to move to their saved addresses. A
    /// device the driver had running is left paused with its queues:
    /// [`VirtioPciDevice::resume`] starts it. On an error the device is
    /// half-restored and must be dropped.
    pub fn restore(&mut self, st: &VirtioPciState) -> Result<Vec<BarMove>, String> {
        let err = |e: String| format!("{}: {e}", self.name);
        if self.active {
            return Err(err("the device is already in use".into()));
        }
        if st.device_type != self.device.device_type() {
            return Err(err(format!(
                "saved as virtio device type {}, this is type {}",
                st.device_type,
                self.device.device_type()
            )));
        }
        let moves = self.config.restore(&st.config).map_err(err)?;
        self.common.restore(&st.common).map_err(err)?;
        {
            let mut t = self.msix.lock().unwrap_or_else(|e| e.into_inner());
            t.restore(&st.msix).map_err(err)?;
            // Routes for every vector; pending bits stay pending.
            apply_events(&t, &[MsixEvent::AllChanged], self.interrupt.sink.as_ref());
        }
        self.interrupt.isr.store(st.isr, Ordering::Release);
        self.sync_vectors();
        self.device.restore_state(&st.device).map_err(err)?;
        let running =
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        if self.common.status & running == running
            && self.common.status & (status::DEVICE_NEEDS_RESET | status::FAILED) == 0
        {
            let view = self.mem.memory();
            let view = &*view;
            let mut queues = Vec::new();
            for (i, q) in self.common.queues.iter().enumerate() {
                if !q.ready() {
                    continue;
                }
                if !rings_in_memory(q, view) {
                    return Err(err(format!("queue {i}: rings outside guest memory")));
                }
                let queue =
                    Queue::try_from(q.state()).map_err(|e| err(format!("queue {i}: {e:?}")))?;
                let notify = self.notify[i]
                    .try_clone()
                    .map_err(|e| err(format!("eventfd: {e}")))?;
                queues.push(ActiveQueue {
                    index: i as u16,
                    queue,
                    notify,
                });
            }
            self.active = true;
            self.paused = Some(queues);
        }
        Ok(moves)
    }

    fn reset(&mut self) {
        self.paused = None;
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.common.reset();
        self.sync_vectors();
        self.interrupt.isr.store(0, Ordering::Release);
        for e in &self.notify {
            let _ = e.read();
        }
    }

    fn needs_reset(&mut self, why: &str) {
        devices::warn_ratelimited!("{}: {why}; device needs reset", self.name);
        self.common.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.notify_config();
    }

    fn activate(&mut self) {
        let features = self.common.negotiated();
        let event_idx = features & features::RING_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (i, q) in self.common.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            q.set_event_idx(event_idx);
            if !rings_in_memory(q, &*self.mem.memory()) {
                let why = format!(
                    "queue {i} is invalid (size {}, rings outside guest memory or misaligned)",
                    q.size()
                );
                self.needs_reset(&why);
                return;
            }
            let (queue, notify) = match (Queue::try_from(q.state()), self.notify[i].try_clone()) {
                (Ok(q), Ok(n)) => (q, n),
                _ => {
                    self.needs_reset("cannot set up a queue");
                    return;
                }
            };
            active.push(ActiveQueue {
                index: i as u16,
                queue,
                notify,
            });
        }
        match self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), active, features)
        {
            Ok(()) => self.active = true,
            Err(e) => self.needs_reset(&e.to_string()),
        }
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => {
                let generation = self.device.config_generation() as u8;
                self.common.read(o - COMMON_OFFSET, data, generation)
            }
            ISR_OFFSET => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = self.interrupt.isr.swap(0, Ordering::AcqRel);
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_MAX_LEN).contains(&o) => {
                let off = o - DEVICE_OFFSET;
                if off + data.len() as u64 <= self.device.config_len() as u64 {
                    self.device.read_config(off, data);
                } else {
                    data.fill(0);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_table(o - MSIX_TABLE_OFFSET, data),
            o if o >= MSIX_PBA_OFFSET => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_pba(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => match self.common.write(o - COMMON_OFFSET, data)
            {
                CommonAction::Reset => self.reset(),
                CommonAction::Activate => {
                    self.sync_vectors();
                    self.activate();
                }
                CommonAction::VectorsChanged => self.sync_vectors(),
                CommonAction::None => {}
            },
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_MAX_LEN).contains(&o) => {
                let off = o - DEVICE_OFFSET;
                if off + data.len() as u64 <= self.device.config_len() as u64 {
                    self.device.write_config(off, data);
                }
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_MAX_LEN).contains(&o) => {
                // Normally caught by an ioeventfd; this is the fallback path.
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if let Some(e) = self.notify.get(q) {
                    let _ = e.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                let mut t = self.msix.lock().unwrap_or_else(|e| e.into_inner());
                let events = t.write_table(o - MSIX_TABLE_OFFSET, data);
                apply_events(&t, &events, self.interrupt.sink.as_ref());
            }
            _ => {}
        }
    }

    /// VIRTIO_PCI_CAP_PCI_CFG: an access to the data window becomes an access
    /// to BAR 0 at the capability's offset. Returns true if handled.
    fn pci_cfg_access(
        &mut self,
        offset: u16,
        read: Option<&mut [u8]>,
        write: Option<&[u8]>,
    ) -> bool {
        let window = self.pci_cfg_cap + 16;
        let off = usize::from(offset);
        if off < window || off >= window + 4 {
            return false;
        }
        let bar = self.config.read_u32(self.pci_cfg_cap + 4) as u8;
        let bar_off = u64::from(self.config.read_u32(self.pci_cfg_cap + 8));
        let len = self.config.read_u32(self.pci_cfg_cap + 12) as usize;
        if bar != 0
            || !matches!(len, 1 | 2 | 4)
            || bar_off
                .checked_add(len as u64)
                .is_none_or(|e| e > BAR0_SIZE)
        {
            if let Some(d) = read {
                d.fill(0);
            }
            return true;
        }
        if let Some(d) = read {
            let mut buf = [0u8; 4];
            self.bar0_read(bar_off, &mut buf[..len]);
            let start = off - window;
            for (i, b) in d.iter_mut().enumerate() {
                *b = buf.get(start + i).copied().unwrap_or(0);
            }
        } else if let Some(d) = write {
            if d.len() >= len {
                self.bar0_write(bar_off, &d[..len]);
            }
        }
        true
    }
}

impl<A: GuestAddressSpace + Send> PciDevice for VirtioPciDevice<A> {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        if !self.pci_cfg_access(offset, Some(data), None) {
            self.config.read(offset, data);
        }
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarMove> {
        if self.pci_cfg_access(offset, None, Some(data)) {
            return Vec::new();
        }
        let moves = self.config.write(offset, data);
        if self.msix_cap.control_written(offset, data.len()) {
            let control = self.config.read_u16(self.msix_cap.offset + 2);
            let mut t = self.msix.lock().unwrap_or_else(|e| e.into_inner());
            let events = t.write_control(control);
            apply_events(&t, &events, self.interrupt.sink.as_ref());
        }
        moves
    }

    fn bars(&self) -> Vec<Bar> {
        self.config.bars().copied().collect()
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == 0 && offset + data.len() as u64 <= BAR0_SIZE {
            self.bar0_read(offset, data);
        } else {
            data.fill(0);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == 0 && offset + data.len() as u64 <= BAR0_SIZE {
            self.bar0_write(offset, data);
        }
    }
}

/// Whether the three rings of `q` lie in guest memory (virtio-queue's own
/// `is_valid` logs every refusal, which a guest could use to flood the log).
fn rings_in_memory<M: GuestMemory>(q: &Queue, mem: &M) -> bool {
    let n = u64::from(q.size());
    [
        (q.desc_table(), 16 * n),
        (q.avail_ring(), 6 + 2 * n),
        (q.used_ring(), 6 + 8 * n),
    ]
    .into_iter()
    .all(|(addr, len)| {
        mem.check_range(
            vm_memory::GuestAddress(addr),
            len as usize,
            vm_memory::Permissions::ReadWrite,
        )
    })
}

impl<A: GuestAddressSpace> Drop for VirtioPciDevice<A> {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    #[allow(unused_imports)]
    use vm_memory::{Bytes, GuestAddress};

    /// A vector and the message it was routed to.
    type Route = (u16, Option<(u64, u32)>);

    #[derive(Default)]
    struct Sink {
        routes: Mutex<Vec<Route>>,
        delivered: Mutex<Vec<u16>>,
    }
    impl MsixSink for Sink {
        fn update_route(&self, vector: u16, message: Option<(u64, u32)>) {
            self.routes.lock().unwrap().push((vector, message));
        }
        fn deliver(&self, vector: u16) {
            self.delivered.lock().unwrap().push(vector);
        }
    }

    fn w(d: &mut VirtioPciDevice, off: u64, v: u64, len: usize) {
        d.write_bar(0, off, &v.to_le_bytes()[..len]);
    }

    fn r(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read_bar(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn find_cap(d: &mut VirtioPciDevice, cfg_type: u8) -> Option<(u32, u32)> {
        let mut p = [0u8; 1];
        d.read_config(0x34, &mut p);
        let mut off = u16::from(p[0]);
        while off != 0 {
            let mut c = [0u8; 4];
            d.read_config(off, &mut c);
            if c[0] == CAP_ID_VENDOR && c[3] == cfg_type {
                let mut o = [0u8; 4];
                let mut l = [0u8; 4];
                d.read_config(off + 8, &mut o);
                d.read_config(off + 12, &mut l);
                return Some((u32::from_le_bytes(o), u32::from_le_bytes(l)));
            }
            off = u16::from(c[1]);
        }
        None
    }

    #[test]
    fn a_driver_brings_up_rng_and_gets_entropy_with_an_msix_interrupt() {
        let mem = crate::DeviceRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let sink = Arc::new(Sink::default());
        let mut d = VirtioPciDevice::new(
            "rng",
            Box::new(Rng::default()),
            crate::DeviceMemory::new(mem.clone()),
            0x1_0000_0000,
            sink.clone(),
        )
        .unwrap();

        let mut id = [0u8; 4];
        d.read_config(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1044_1af4, "modern virtio-rng ID");
        assert_eq!(find_cap(&mut d, CAP_COMMON), Some((0, 0x38)));
        assert_eq!(
            find_cap(&mut d, CAP_NOTIFY).map(|c| c.0),
            Some(NOTIFY_OFFSET as u32)
        );
        assert!(find_cap(&mut d, CAP_PCI_CFG).is_some());

        // MSI-X: vector 0 for the queue, enabled and unmasked.
        d.write_bar(0, MSIX_TABLE_OFFSET, &0xfee0_0000u32.to_le_bytes());
        d.write_bar(0, MSIX_TABLE_OFFSET + 8, &0x31u32.to_le_bytes());
        d.write_bar(0, MSIX_TABLE_OFFSET + 12, &0u32.to_le_bytes());
        let msix = d.msix_cap.offset as u16;
        d.write_config(msix + 2, &0x8000u16.to_le_bytes());
        assert!(sink
            .routes
            .lock()
            .unwrap()
            .contains(&(0, Some((0xfee0_0000, 0x31)))));

        // Driver initialisation (virtio 1.2 §3.1.1).
        w(&mut d, 0x14, 0, 1);
        w(&mut d, 0x14, 1, 1);
        w(&mut d, 0x14, 3, 1);
        w(&mut d, 0x00, 1, 4);
        let hi = r(&mut d, 0x04, 4);
        assert_eq!(hi & 1, 1, "VERSION_1 offered");
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 3 | 8, 1);
        assert_eq!(r(&mut d, 0x14, 1), 11);
        let mq = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), 16);
        w(&mut d, 0x16, 0, 2);
        w(&mut d, 0x18, 16, 2);
        w(&mut d, 0x1a, 0, 2);
        w(&mut d, 0x20, mq.desc_table_addr().0, 8);
        w(&mut d, 0x28, mq.avail_addr().0, 8);
        w(&mut d, 0x30, mq.used_addr().0, 8);
        w(&mut d, 0x1c, 1, 2);
        w(&mut d, 0x14, 15, 1);
        assert_eq!(r(&mut d, 0x14, 1), 15, "DRIVER_OK accepted, no NEEDS_RESET");

        mq.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x2000, 32, 2, 0))], 0)
            .unwrap();
        w(&mut d, NOTIFY_OFFSET, 0, 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while mq.used().idx().load() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(mq.used().idx().load(), 1, "request completed");
        let elem = mq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(elem.len(), 32);
        let mut got = [0u8; 32];
        mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
        while sink.delivered.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*sink.delivered.lock().unwrap(), vec![0]);
        assert_eq!(
            r(&mut d, ISR_OFFSET, 1),
            1,
            "ISR queue bit, cleared by the read"
        );
        assert_eq!(r(&mut d, ISR_OFFSET, 1), 0);

        w(&mut d, 0x14, 0, 1);
        assert_eq!(r(&mut d, 0x14, 1), 0, "reset");
    }

    /// A driver's bring-up of an rng with a 16-entry queue and MSI-X
    /// vector 0; returns the device and the driver's view of the queue.
    fn running_rng<'a>(
        mem: &'a crate::DeviceRam,
        sink: Arc<Sink>,
    ) -> (VirtioPciDevice, MockSplitQueue<'a, crate::DeviceRam>) {
        let mut d = VirtioPciDevice::new(
            "rng",
            Box::new(Rng::default()),
            crate::DeviceMemory::new(mem.clone()),
            0x1_0000_0000,
            sink,
        )
        .unwrap();
        d.write_bar(0, MSIX_TABLE_OFFSET, &0xfee0_0000u32.to_le_bytes());
        d.write_bar(0, MSIX_TABLE_OFFSET + 8, &0x31u32.to_le_bytes());
        d.write_bar(0, MSIX_TABLE_OFFSET + 12, &0u32.to_le_bytes());
        let msix = d.msix_cap.offset as u16;
        d.write_config(msix + 2, &0x8000u16.to_le_bytes());
        w(&mut d, 0x14, 3, 1);
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 11, 1);
        let mq = MockSplitQueue::create(mem, GuestAddress(0x8_0000), 16);
        w(&mut d, 0x16, 0, 2);
        w(&mut d, 0x18, 16, 2);
        w(&mut d, 0x1a, 0, 2);
        w(&mut d, 0x20, mq.desc_table_addr().0, 8);
        w(&mut d, 0x28, mq.avail_addr().0, 8);
        w(&mut d, 0x30, mq.used_addr().0, 8);
        w(&mut d, 0x1c, 1, 2);
        w(&mut d, 0x14, 15, 1);
        (d, mq)
    }

    fn wait_used(mq: &MockSplitQueue<'_, crate::DeviceRam>, idx: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while mq.used().idx().load() < idx && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        mq.used().idx().load()
    }

    /// Save a running device (paused), restore it into a fresh one at
    /// another BAR address: the restored device moves its BAR, routes its
    /// vector again and completes the next request in the next used-ring
    /// slot (a device restarted from ring position 0 would overwrite slot 0
    /// and leave the used index at 1).
    #[test]
    fn a_saved_device_continues_in_a_fresh_one() {
        let mem = crate::DeviceRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut d, mq) = running_rng(&mem, Arc::new(Sink::default()));
        mq.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x2000, 32, 2, 0))], 0)
            .unwrap();
        w(&mut d, NOTIFY_OFFSET, 0, 2);
        assert_eq!(wait_used(&mq, 1), 1);
        assert!(d.save().is_err(), "a running device refuses to be saved");
        d.pause();
        let st = d.save().unwrap();
        assert_eq!(st.common.queues[0].next_used, 1);
        // Through serde, as the state file carries it.
        let st: VirtioPciState =
            serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        drop(d);

        let sink = Arc::new(Sink::default());
        let mut fresh = VirtioPciDevice::new(
            "rng",
            Box::new(Rng::default()),
            crate::DeviceMemory::new(mem.clone()),
            0x2_0000_0000,
            sink.clone(),
        )
        .unwrap();
        let moves = fresh.restore(&st).unwrap();
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].old, moves[0].new), (0x2_0000_0000, 0x1_0000_0000));
        assert_eq!(fresh.bar_addr(), 0x1_0000_0000);
        assert_eq!(r(&mut fresh, 0x14, 1), 15, "status restored");
        assert!(
            sink.routes
                .lock()
                .unwrap()
                .contains(&(0, Some((0xfee0_0000, 0x31)))),
            "vector 0 routed again"
        );
        fresh.resume();
        mq.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x3000, 16, 2, 0))], 1)
            .unwrap();
        w(&mut fresh, NOTIFY_OFFSET, 0, 2);
        assert_eq!(
            wait_used(&mq, 2),
            2,
            "the next request went to the next slot"
        );
        assert_eq!(mq.used().ring().ref_at(1).unwrap().load().len(), 16);

        // Another kind of device, or a different queue size, is refused.
        let mut other = st.clone();
        other.device_type = crate::device_type::BLOCK;
        let mut again = VirtioPciDevice::new(
            "rng",
            Box::new(Rng::default()),
            crate::DeviceMemory::new(mem.clone()),
            0x1_0000_0000,
            Arc::new(Sink::default()),
        )
        .unwrap();
        assert!(again
            .restore(&other)
            .unwrap_err()
            .contains("virtio device type 2"));
        let mut other = st.clone();
        other.common.queues[0].max_size = 1024;
        assert!(again
            .restore(&other)
            .unwrap_err()
            .contains("maximum size 1024"));
        let mut other = st;
        other.config.data[0] ^= 1;
        assert!(again
            .restore(&other)
            .unwrap_err()
            .contains("not the same device"));
    }

    #[test]
    fn invalid_rings_mark_the_device_broken_instead_of_starting() {
        let mem = crate::DeviceRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let sink = Arc::new(Sink::default());
        let mut d = VirtioPciDevice::new(
            "rng",
            Box::new(Rng::default()),
            crate::DeviceMemory::new(mem),
            0x1_0000_0000,
            sink,
        )
        .unwrap();
        w(&mut d, 0x08, 1, 4);
        w(&mut d, 0x0c, 1, 4);
        w(&mut d, 0x14, 11, 1);
        w(&mut d, 0x20, 0xdead_0000_0000, 8);
        w(&mut d, 0x1c, 1, 2);
        w(&mut d, 0x14, 15, 1);
        assert_ne!(r(&mut d, 0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn config_writes_of_every_width_at_every_offset_are_survived() {
        let mem = crate::DeviceRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut d = VirtioPciDevice::new(
            "rng",
            Box::new(Rng::default()),
            crate::DeviceMemory::new(mem),
            0x1_0000_0000,
            Arc::new(Sink::default()),
        )
        .unwrap();
        for len in [1usize, 2, 4, 8] {
            for off in (0..4096u16).step_by(1) {
                let _ = d.write_config(off, &[0xff; 8][..len]);
                let mut b = [0u8; 8];
                d.read_config(off, &mut b[..len]);
            }
            for off in (0..BAR0_SIZE + 64).step_by(3) {
                d.write_bar(0, off, &[0xa5; 8][..len]);
                let mut b = [0u8; 8];
                d.read_bar(0, off, &mut b[..len]);
            }
        }
        let mut id = [0u8; 2];
        d.read_config(0, &mut id);
        assert_eq!(u16::from_le_bytes(id), 0x1af4, "identity unchanged");
    }
}
