//! virtio-mem (virtio 1.2 §5.15): a region of guest-physical memory plugged
//! and unplugged in blocks at the guest driver's request, sized by the host
//! through `requested_size`.
//!
//! [`state`] decides everything (answers, slot bookkeeping, effects); this
//! module moves requests between the queue and that core and carries effects
//! out through a [`MemBackend`] that the VMM implements with KVM memslots,
//! `madvise` and `fallocate`.
//!
//! Answers: ERROR for requests no correct driver sends (bad range, wrong
//! state, unknown type, short buffers), NACK for a PLUG beyond
//! `requested_size` (the Linux driver retries at once), BUSY only when the
//! host cannot carry out an effect (a KVM memslot change fails, or hugetlbfs
//! has no page to back a plug).

mod bitmap;
pub mod state;

use std::sync::{Arc, Mutex};

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory};

pub use bitmap::BlockBitmap;
pub use state::{DmaChange, Effect, Geometry, MemSavedState, MemState, Plan, Request, Response};

use crate::device::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt,
};
use crate::queue_util::drain;
use crate::state::DeviceState;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features};

/// `VIRTIO_MEM_F_ACPI_PXM`
pub const F_ACPI_PXM: u64 = 1 << 0;
/// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`
pub const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
/// `VIRTIO_MEM_F_PERSISTENT_SUSPEND`
pub const F_PERSISTENT_SUSPEND: u64 = 1 << 2;
const QUEUE_SIZE: u16 = 128;

/// Carries out effects on the host.
pub trait MemBackend: Send + Sync {
    /// Make slot `n` of the region accessible to the guest.
    fn map_slot(&self, n: usize) -> Result<(), String>;
    /// Remove slot `n` from the guest.
    fn unmap_slot(&self, n: usize) -> Result<(), String>;
    /// Allocate backing for `[offset, offset + len)` of the region.
    fn populate(&self, offset: u64, len: u64) -> Result<(), String>;
    /// Return `[offset, offset + len)` of the region to the host.
    fn discard(&self, offset: u64, len: u64) -> Result<(), String>;
    /// `[offset, offset + len)` was plugged: let passed-through devices DMA
    /// to it, one mapping per `block` bytes (so any block can be unmapped
    /// alone later). Called before the guest is told. Default: nothing.
    fn dma_map(&self, _offset: u64, _len: u64, _block: u64) -> Result<(), String> {
        Ok(())
    }
    /// `[offset, offset + len)` is about to be unplugged: stop device DMA to
    /// it before the memory is unmapped or discarded. Default: nothing.
    fn dma_unmap(&self, _offset: u64, _len: u64) -> Result<(), String> {
        Ok(())
    }
}

/// Called with the new plugged size whenever it changes.
pub type PluggedListener = Box<dyn Fn(u64) + Send + Sync>;

/// What the device, its worker and the VMM share.
pub struct MemShared {
    state: Mutex<MemState>,
    backend: Arc<dyn MemBackend>,
    listener: Option<PluggedListener>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    activated: Mutex<bool>,
}

impl MemShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a slot effect through the backend and records it.
    fn apply(&self, state: &mut MemState, e: Effect) -> Result<(), String> {
        match e {
            Effect::MapSlot(n) => self.backend.map_slot(n)?,
            Effect::UnmapSlot(n) => self.backend.unmap_slot(n)?,
            Effect::Populate { offset, len } => self.backend.populate(offset, len)?,
            Effect::Discard { offset, len } => self.backend.discard(offset, len)?,
        }
        state.slot_done(e);
        Ok(())
    }

    /// Processes one request completely.
    pub fn handle(&self, req: Request) -> Response {
        let mut s = self.lock();
        let before_plugged = s.plugged_size();
        let plan = s.plan(req);
        if plan.response.kind != state::RESP_ACK || matches!(req, Request::State { .. }) {
            return plan.response;
        }
        let dma = s.dma_change(&plan);
        let busy = Response {
            kind: state::RESP_BUSY,
            state: 0,
        };
        if let Some(DmaChange::Unmap { offset, len }) = dma {
            if let Err(err) = self.backend.dma_unmap(offset, len) {
                devices::warn_ratelimited!("virtio-mem: cannot stop device DMA to {len:#x} bytes at {offset:#x} ({err}); answering BUSY");
                return busy;
            }
        }
        for e in &plan.before {
            if let Err(err) = self.apply(&mut s, *e) {
                devices::warn_ratelimited!(
                    "virtio-mem: cannot carry out {e:?} ({err}); answering BUSY"
                );
                // The blocks stay plugged: give their device DMA back.
                if let Some(DmaChange::Unmap { offset, len }) = dma {
                    let block = s.geometry().block_size;
                    for (o, l) in s.plugged_runs(offset, len) {
                        if let Err(err) = self.backend.dma_map(o, l, block) {
                            devices::warn_ratelimited!("virtio-mem: cannot restore device DMA to {l:#x} bytes at {o:#x} ({err})");
                        }
                    }
                }
                return busy;
            }
        }
        if let Some(DmaChange::Map { offset, len }) = dma {
            let block = s.geometry().block_size;
            if let Err(err) = self.backend.dma_map(offset, len, block) {
                devices::warn_ratelimited!("virtio-mem: cannot map {len:#x} bytes at {offset:#x} for device DMA ({err}); answering BUSY");
                let _ = self.backend.dma_unmap(offset, len);
                return busy;
            }
        }
        s.commit(&plan);
        for e in &plan.after {
            if let Err(err) = self.apply(&mut s, *e) {
                devices::warn_ratelimited!("virtio-mem: {e:?} failed ({err}); the guest's view is unaffected but the host keeps the memory");
            }
        }
        let plugged = s.plugged_size();
        drop(s);
        if plugged != before_plugged {
            if let Some(l) = &self.listener {
                l(plugged);
            }
        }
        plan.response
    }
}

/// The VMM's handle on a virtio-mem device.
#[derive(Clone)]
pub struct MemHandle(Arc<MemShared>);

impl std::fmt::Debug for MemHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemHandle").field(&self.info()).finish()
    }
}

/// A snapshot of the device for `vm.info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// Region geometry.
    pub geometry: Geometry,
    /// Bytes the guest may plug now.
    pub usable_region_size: u64,
    /// Bytes plugged.
    pub plugged_size: u64,
    /// Bytes requested.
    pub requested_size: u64,
    /// The driver has started the device.
    pub driver_active: bool,
}

impl MemHandle {
    /// Sets `requested_size` and tells the driver if the configuration changed.
    pub fn set_requested(&self, size: u64) {
        let changed = self.0.lock().set_requested(size);
        if changed {
            if let Some(i) = self
                .0
                .interrupt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                i.notify_config();
            }
        }
    }

    /// Gives the handle the transport's interrupt path (for configuration changes).
    pub fn set_interrupt(&self, interrupt: Arc<dyn VirtioInterrupt>) {
        *self.0.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(interrupt);
    }

    /// Current state.
    pub fn info(&self) -> MemInfo {
        let s = self.0.lock();
        MemInfo {
            geometry: *s.geometry(),
            usable_region_size: s.usable_region_size(),
            plugged_size: s.plugged_size(),
            requested_size: s.requested_size(),
            driver_active: *self.0.activated.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Reads `buf.len()` driver-readable bytes and finds `want` device-writable
/// bytes, whatever the framing. Returns the writable address if there is room.
fn gather<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut [u8],
    want: u32,
) -> (usize, Option<GuestAddress>) {
    let mut got = 0;
    let mut unreadable = false;
    let mut out = None;
    for d in chain {
        if d.is_write_only() {
            // The response goes to the first writable descriptor large enough.
            if out.is_none() && d.len() >= want {
                out = Some(d.addr());
            }
        } else if got < buf.len() && !unreadable {
            let n = (d.len() as usize).min(buf.len() - got);
            // Keep scanning after a bad buffer: the response may still be deliverable.
            match mem.read_slice(&mut buf[got..got + n], d.addr()) {
                Ok(()) => got += n,
                Err(_) => unreadable = true,
            }
        }
    }
    (got, out)
}

/// Handles one chain; returns the used length.
pub fn handle_chain<M: GuestMemory>(
    shared: &MemShared,
    chain: DescriptorChain<&M>,
    mem: &M,
) -> u32 {
    let mut raw = [0u8; 24];
    let (got, resp_addr) = gather(chain, mem, &mut raw, 10);
    let Some(resp_addr) = resp_addr else {
        devices::warn_ratelimited!(
            "virtio-mem: request without a 10-byte writable response buffer; completed empty"
        );
        return 0;
    };
    let resp = if got < 24 {
        devices::warn_ratelimited!(
            "virtio-mem: request of {got} bytes (24 expected); answering ERROR"
        );
        Response {
            kind: state::RESP_ERROR,
            state: 0,
        }
    } else {
        let req = Request::parse(&raw);
        let r = shared.handle(req);
        if r.kind == state::RESP_ERROR {
            devices::warn_ratelimited!("virtio-mem: {req:?} refused with ERROR");
        }
        r
    };
    match mem.write_slice(&resp.to_bytes(), resp_addr) {
        Ok(()) => 10,
        Err(_) => 0,
    }
}

struct MemHandler {
    shared: Arc<MemShared>,
}

impl QueueHandler for MemHandler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        _index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        let shared = self.shared.clone();
        match queues.first_mut() {
            Some(q) => drain(q, mem, |chain| handle_chain(&shared, chain, mem)),
            None => false,
        }
    }
}

/// The memory device.
pub struct Mem {
    shared: Arc<MemShared>,
    worker: Option<Worker<MemHandler>>,
}

impl Mem {
    /// A device for `geometry` with `requested` bytes requested at start
    /// (`populate`: allocate backing on plug, for hugetlbfs), effects through
    /// `backend`, plugged-size changes reported to `listener`.
    pub fn new(
        geometry: Geometry,
        requested: u64,
        populate: bool,
        backend: Arc<dyn MemBackend>,
        listener: Option<PluggedListener>,
    ) -> Self {
        Self {
            shared: Arc::new(MemShared {
                state: Mutex::new(MemState::new(geometry, requested, populate)),
                backend,
                listener,
                interrupt: Mutex::new(None),
                activated: Mutex::new(false),
            }),
            worker: None,
        }
    }

    /// The VMM's handle.
    pub fn handle(&self) -> MemHandle {
        MemHandle(self.shared.clone())
    }

    /// The state shared with the worker (for driving requests directly, as
    /// fuzzers and benchmarks do).
    pub fn shared(&self) -> &MemShared {
        &self.shared
    }
}

impl VirtioDeviceCommon for Mem {
    fn device_type(&self) -> u32 {
        device_type::MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_UNPLUGGED_INACCESSIBLE
            | F_PERSISTENT_SUSPEND
    }

    fn config_len(&self) -> usize {
        state::CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.shared.lock().config();
        crate::device::read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        devices::warn_ratelimited!(
            "virtio-mem: the driver must not write the configuration; ignored"
        );
    }

    fn config_generation(&self) -> u32 {
        self.shared.lock().generation()
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        Worker::stop_queues(&mut self.worker)
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Mem(self.shared.lock().saved())
    }

    /// Takes the saved plugged blocks and sizes, and gives devices DMA
    /// access to the plugged blocks again (the VMM's view of device memory
    /// follows `dma_map`); the slots are mapped when the device activates.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        let DeviceState::Mem(saved) = state else {
            return Err(format!("not a virtio-mem state: {state:?}"));
        };
        let mut s = self.shared.lock();
        let restored = MemState::from_saved(*s.geometry(), s.populate(), saved)?;
        let block = restored.geometry().block_size;
        for (i, &(offset, len)) in saved.plugged.iter().enumerate() {
            if let Err(e) = self.shared.backend.dma_map(offset, len, block) {
                for &(o, l) in &saved.plugged[..i] {
                    let _ = self.shared.backend.dma_unmap(o, l);
                }
                return Err(format!(
                    "virtio-mem: cannot map {len:#x} bytes at {offset:#x} for device DMA: {e}"
                ));
            }
        }
        *s = restored;
        Ok(())
    }

    fn reset(&mut self) {
        // Block states survive a device reset (virtio 1.2 §5.15.6.4).
        drop(self.pause());
        *self
            .shared
            .activated
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = false;
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Mem {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        if queues.is_empty() {
            return Err(ActivateError::BadQueue(0));
        }
        {
            let mut s = self.shared.lock();
            for e in s.activate(features & F_UNPLUGGED_INACCESSIBLE != 0) {
                self.shared
                    .apply(&mut s, e)
                    .map_err(|err| ActivateError::Start(format!("cannot map the region: {err}")))?;
            }
        }
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(interrupt.clone());
        let h = MemHandler {
            shared: self.shared.clone(),
        };
        self.worker = Some(
            Worker::spawn("virtio-mem", h, queues, mem, interrupt)
                .map_err(|e| ActivateError::Start(e.to_string()))?,
        );
        *self
            .shared
            .activated
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{chain_of, mem};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    #[allow(unused_imports)]
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;
    const BASE: u64 = 0x1_0000_0000;

    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<Effect>>,
        fail_map: Mutex<bool>,
        fail_unmap: Mutex<bool>,
        /// DMA calls: (map?, offset, len, effects logged before the call).
        dma: Mutex<Vec<(bool, u64, u64, usize)>>,
    }
    impl MemBackend for Recorder {
        fn map_slot(&self, n: usize) -> Result<(), String> {
            if *self.fail_map.lock().unwrap() {
                return Err("no slots".into());
            }
            self.log.lock().unwrap().push(Effect::MapSlot(n));
            Ok(())
        }
        fn unmap_slot(&self, n: usize) -> Result<(), String> {
            if *self.fail_unmap.lock().unwrap() {
                return Err("KVM said no".into());
            }
            self.log.lock().unwrap().push(Effect::UnmapSlot(n));
            Ok(())
        }
        fn populate(&self, offset: u64, len: u64) -> Result<(), String> {
            self.log
                .lock()
                .unwrap()
                .push(Effect::Populate { offset, len });
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> Result<(), String> {
            self.log
                .lock()
                .unwrap()
                .push(Effect::Discard { offset, len });
            Ok(())
        }
        fn dma_map(&self, offset: u64, len: u64, block: u64) -> Result<(), String> {
            assert_eq!(block, 2 * MIB);
            let n = self.log.lock().unwrap().len();
            self.dma.lock().unwrap().push((true, offset, len, n));
            Ok(())
        }
        fn dma_unmap(&self, offset: u64, len: u64) -> Result<(), String> {
            let n = self.log.lock().unwrap().len();
            self.dma.lock().unwrap().push((false, offset, len, n));
            Ok(())
        }
    }

    #[test]
    fn device_dma_follows_plugged_blocks() {
        let backend = Arc::new(Recorder::default());
        let (dev, _) = device(backend.clone());
        let m = mem();
        request(&m, state::REQ_PLUG, BASE + 4 * MIB, 2);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        request(&m, state::REQ_UNPLUG, BASE + 6 * MIB, 1);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        request(&m, state::REQ_UNPLUG_ALL, 0, 0);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        assert_eq!(
            *backend.dma.lock().unwrap(),
            vec![
                (true, 4 * MIB, 4 * MIB, 1),  // after the slot is mapped, before the ACK
                (false, 6 * MIB, 2 * MIB, 1), // before the discard
                (false, 0, 512 * MIB, 2),     // the whole region on UNPLUG_ALL
            ]
        );
        // Asking about state maps nothing.
        request(&m, state::REQ_STATE, BASE, 1);
        send(&dev, &m, &std_descs());
        assert_eq!(backend.dma.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_failed_unplug_gives_device_dma_back_to_the_blocks_still_plugged() {
        let backend = Arc::new(Recorder::default());
        let (dev, _) = device(backend.clone());
        let m = mem();
        request(&m, state::REQ_PLUG, BASE + 4 * MIB, 2);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        request(&m, state::REQ_PLUG, BASE + 10 * MIB, 1);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        backend.dma.lock().unwrap().clear();
        // UNPLUG_ALL unmaps the slot before the ACK: make that fail.
        *backend.fail_unmap.lock().unwrap() = true;
        request(&m, state::REQ_UNPLUG_ALL, 0, 0);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_BUSY));
        let calls: Vec<_> = backend
            .dma
            .lock()
            .unwrap()
            .iter()
            .map(|&(map, o, l, _)| (map, o, l))
            .collect();
        assert_eq!(
            calls,
            vec![
                (false, 0, 512 * MIB),
                (true, 4 * MIB, 4 * MIB), // the plugged runs, not the region
                (true, 10 * MIB, 2 * MIB),
            ]
        );
    }

    fn device(backend: Arc<Recorder>) -> (Mem, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(vec![]));
        let s2 = seen.clone();
        let g = Geometry {
            addr: BASE,
            region_size: 512 * MIB,
            block_size: 2 * MIB,
            slot_size: 128 * MIB,
            node_id: 0,
        };
        let m = Mem::new(
            g,
            256 * MIB,
            false,
            backend,
            Some(Box::new(move |p| s2.lock().unwrap().push(p))),
        );
        (m, seen)
    }

    fn request(m: &GuestMemoryMmap, kind: u16, addr: u64, nb: u16) {
        m.write_obj(kind, GuestAddress(0x100)).unwrap();
        m.write_obj(addr, GuestAddress(0x108)).unwrap();
        m.write_obj(nb, GuestAddress(0x110)).unwrap();
    }

    fn send(dev: &Mem, m: &GuestMemoryMmap, descs: &[Descriptor]) -> (u32, u16) {
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        let used = handle_chain(&dev.shared, chain_of(m, &raw), m);
        (used, m.read_obj(GuestAddress(0x200)).unwrap())
    }

    fn std_descs() -> [Descriptor; 2] {
        [
            Descriptor::new(0x100, 24, 0, 0),
            Descriptor::new(0x200, 10, 2, 0),
        ]
    }

    #[test]
    fn plug_maps_the_slot_before_acking_and_unplug_discards() {
        let backend = Arc::new(Recorder::default());
        let (dev, seen) = device(backend.clone());
        let m = mem();
        request(&m, state::REQ_PLUG, BASE, 4);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        request(&m, state::REQ_UNPLUG, BASE, 4);
        assert_eq!(send(&dev, &m, &std_descs()), (10, state::RESP_ACK));
        assert_eq!(
            *backend.log.lock().unwrap(),
            vec![
                Effect::MapSlot(0),
                Effect::UnmapSlot(0),
                Effect::Discard {
                    offset: 0,
                    len: 8 * MIB
                }
            ]
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![8 * MIB, 0],
            "plugged-size listener"
        );
    }

    #[test]
    fn a_failing_slot_map_answers_busy_and_changes_nothing() {
        let backend = Arc::new(Recorder::default());
        *backend.fail_map.lock().unwrap() = true;
        let (dev, seen) = device(backend);
        let m = mem();
        request(&m, state::REQ_PLUG, BASE, 1);
        assert_eq!(send(&dev, &m, &std_descs()).1, state::RESP_BUSY);
        assert_eq!(dev.handle().info().plugged_size, 0);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn short_or_misdirected_buffers_never_stall_the_queue() {
        let (dev, _) = device(Arc::new(Recorder::default()));
        let m = mem();
        request(&m, state::REQ_PLUG, BASE, 1);
        // Request too short: ERROR in the response.
        assert_eq!(
            send(
                &dev,
                &m,
                &[
                    Descriptor::new(0x100, 8, 0, 0),
                    Descriptor::new(0x200, 10, 2, 0)
                ]
            ),
            (10, state::RESP_ERROR)
        );
        // No writable response buffer: completed with length 0.
        let raw = [RawDescriptor::from(Descriptor::new(0x100, 24, 0, 0))];
        assert_eq!(handle_chain(&dev.shared, chain_of(&m, &raw), &m), 0);
        // Response buffer too small.
        let raw = [
            RawDescriptor::from(Descriptor::new(0x100, 24, 0, 0)),
            RawDescriptor::from(Descriptor::new(0x200, 4, 2, 0)),
        ];
        assert_eq!(handle_chain(&dev.shared, chain_of(&m, &raw), &m), 0);
        // Request split across descriptors still parses.
        assert_eq!(
            send(
                &dev,
                &m,
                &[
                    Descriptor::new(0x100, 10, 0, 0),
                    Descriptor::new(0x10a, 14, 0, 0),
                    Descriptor::new(0x200, 10, 2, 0)
                ]
            ),
            (10, state::RESP_ACK)
        );
        // Request outside guest memory.
        assert_eq!(
            send(
                &dev,
                &m,
                &[
                    Descriptor::new(0xdead_0000_0000, 24, 0, 0),
                    Descriptor::new(0x200, 10, 2, 0)
                ]
            )
            .1,
            state::RESP_ERROR
        );
    }

    #[test]
    fn config_space_layout_and_resize() {
        let (dev, _) = device(Arc::new(Recorder::default()));
        let mut c = [0u8; 56];
        dev.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2 * MIB);
        assert_eq!(u64::from_le_bytes(c[16..24].try_into().unwrap()), BASE);
        assert_eq!(u64::from_le_bytes(c[24..32].try_into().unwrap()), 512 * MIB);
        assert_eq!(u64::from_le_bytes(c[48..56].try_into().unwrap()), 256 * MIB);
        let g = dev.config_generation();
        dev.handle().set_requested(384 * MIB);
        assert_ne!(dev.config_generation(), g);
        let mut far = [0xffu8; 8];
        dev.read_config(52, &mut far);
        assert_eq!(far, [0; 8], "reads past the end return zeros");
        assert_ne!(dev.features() & F_UNPLUGGED_INACCESSIBLE, 0);
        assert_eq!(dev.features() & F_ACPI_PXM, 0, "no NUMA node configured");
    }
}
