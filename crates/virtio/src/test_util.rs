//! Helpers for device tests: guest memory and descriptor chains built with
//! virtio-queue's mock rings.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::DescriptorChain;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// 1 MiB of guest memory at 0.
pub fn mem() -> GuestMemoryMmap {
    mem_of(0x10_0000)
}

/// `size` bytes of guest memory at 0.
pub fn mem_of(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test memory")
}

/// A chain made of `descs` (their `next` fields are filled in), with the
/// mock ring at 0x8_0000.
pub fn chain_of<'a>(
    m: &'a GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> DescriptorChain<&'a GuestMemoryMmap> {
    // The mock ties the chain's lifetime to itself; tests leak it (a few bytes).
    let q: &'a MockSplitQueue<'a, GuestMemoryMmap> = Box::leak(Box::new(MockSplitQueue::create(
        m,
        GuestAddress(0x8_0000),
        16,
    )));
    q.build_desc_chain(descs).expect("chain")
}

/// A split ring laid out by hand in 1 MiB of test memory, and the driver's
/// side of it: post chains, read used entries.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    pub next_desc: u16,
}

impl Ring {
    pub fn new(base: u64, size: u16) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            next_desc: 0,
        }
    }

    /// Publishes one chain of (address, length, device-writable) buffers.
    pub fn post(&mut self, m: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = (idx + 1) % self.size;
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            m.write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)))
                .unwrap();
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        let idx: u16 = m.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let slot = u64::from(idx % self.size);
        m.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        m.write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    pub fn used_idx(&self, m: &GuestMemoryMmap) -> u16 {
        m.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used entry `i`: (head, length).
    pub fn used(&self, m: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = GuestAddress(self.used + 4 + 8 * u64::from(i % self.size));
        (
            m.read_obj(at).unwrap(),
            m.read_obj(at.unchecked_add(4)).unwrap(),
        )
    }

    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }
}

/// Records which queues the device signalled.
#[derive(Default)]
pub struct Signals(pub std::sync::Mutex<Vec<u16>>);

impl crate::VirtioInterrupt for Signals {
    fn notify_queue(&self, index: u16) {
        self.0.lock().unwrap().push(index);
    }
    fn notify_config(&self) {}
}

/// Activates `dev` over `rings` (queue i on ring i, event-idx as `acked`
/// says) with features `acked`; returns the queues' notification eventfds.
pub fn activate_on_rings<D>(
    dev: &mut D,
    m: &GuestMemoryMmap,
    rings: &[Ring],
    acked: u64,
) -> Vec<vmm_sys_util::eventfd::EventFd>
where
    D: crate::VirtioDevice<std::sync::Arc<GuestMemoryMmap>>,
{
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let notify: Vec<EventFd> = rings
        .iter()
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let queues = rings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut queue = r.queue();
            queue.set_event_idx(acked & crate::features::RING_EVENT_IDX != 0);
            crate::ActiveQueue {
                index: i as u16,
                queue,
                notify: notify[i].try_clone().unwrap(),
            }
        })
        .collect();
    dev.activate(
        std::sync::Arc::new(m.clone()),
        std::sync::Arc::new(Signals::default()),
        queues,
        acked,
    )
    .unwrap();
    notify
}
