//! Fuzzes virtio-balloon's inflate, deflate, statistics and free page
//! reporting queues: rings and guest memory come from the input, the
//! backend refuses part of the address space. No panic, every discard
//! page-aligned and inside what was asked, the used rings within the
//! chains posted, and pages counted no more than the buffers could hold.
#![no_main]

#[path = "common/rings.rs"]
mod rings;

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use virtio::balloon::{
    process_once, BalloonBackend, Refusal, F_DEFLATE_ON_OOM, F_PAGE_REPORTING, F_STATS_VQ,
    MAX_PFNS_PER_BUFFER, PAGE_SIZE,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x4_0000;
const SIZE: u16 = 8;

/// Accepts discards below 1 TiB, records their sizes.
#[derive(Default)]
struct Backend(Mutex<u64>);

impl BalloonBackend for Backend {
    fn discard(&self, gpa: u64, len: u64) -> Result<(), Refusal> {
        assert!(gpa % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && len > 0);
        assert!(gpa.checked_add(len).is_some());
        if gpa + len > 1 << 40 {
            return Err(Refusal::NotRam);
        }
        *self.0.lock().unwrap() += len;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (head, body) = data.split_at(2);
    let mut features = 0;
    for (bit, f) in [(1, F_STATS_VQ), (2, F_PAGE_REPORTING), (4, F_DEFLATE_ON_OOM)] {
        if head[0] & bit != 0 {
            features |= f;
        }
    }
    let count = 2 + u16::from(features & F_STATS_VQ != 0) + u16::from(features & F_PAGE_REPORTING != 0);
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let _ = mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0));
    let _ = mem.write_slice(&body[..body.len().min(0x4000)], GuestAddress(rings::RINGS));
    let mut queues = rings::queues(count, SIZE, head[0] & 8 != 0);
    let backend = Arc::new(Backend::default());
    let c = process_once(features, &mut queues, &mem, backend.clone(), head[1] & 1 != 0);
    for q in &queues {
        assert!(q.queue.next_used() <= q.queue.next_avail(), "more used than taken");
    }
    // Each chain taken holds at most MAX_PFNS_PER_BUFFER page numbers.
    let taken: u64 = queues.iter().take(2).map(|q| u64::from(q.queue.next_avail())).sum();
    assert!(c.inflated_pages.get() + c.deflated_pages.get() <= taken * MAX_PFNS_PER_BUFFER as u64);
    assert!(c.refused_pages.get() <= c.inflated_pages.get());
    let discarded = *backend.0.lock().unwrap();
    assert!(discarded <= (c.inflated_pages.get() - c.refused_pages.get()) * PAGE_SIZE + c.reported_bytes.get());
});
