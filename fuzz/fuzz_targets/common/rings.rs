//! Rings for the device fuzz targets: `count` queues of `size` entries at
//! 0x1000 apart from 0x3_0000 (descriptors, then the avail ring at +0x400
//! and the used ring at +0x800), whose bytes the input provides.

use virtio::ActiveQueue;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the rings start in guest memory.
pub const RINGS: u64 = 0x3_0000;

/// The queues, ready, with event-idx as `event_idx` says.
pub fn queues(count: u16, size: u16, event_idx: bool) -> Vec<ActiveQueue> {
    (0..count)
        .map(|i| {
            let base = RINGS + u64::from(i) * 0x1000;
            let mut q = Queue::new(size).unwrap();
            q.set_size(size);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x400) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x800) as u32), Some(0));
            q.set_ready(true);
            q.set_event_idx(event_idx);
            ActiveQueue {
                index: i,
                queue: q,
                notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            }
        })
        .collect()
}
