//! Fuzzes virtio-net's receive, transmit and control paths: rings and
//! guest memory from the input, frames from the input on a socket-pair TAP.
//! No panic, no frame to the TAP shorter than the header or longer than
//! the largest frame, and the used rings stay within the chains posted.
#![no_main]

#[path = "common/rings.rs"]
mod rings;

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use virtio::net::{process_once, SocketTap, HDR_LEN, MAX_FRAME};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x4_0000;
const SIZE: u16 = 8;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    // Rings for three queues at 0x1000 apart from 0x3_0000; the input
    // fills memory from 0 (descriptor tables and avail rings included).
    let (head, body) = data.split_at(4);
    let fill = body.len().min(MEM);
    let _ = mem.write_slice(&body[..fill], GuestAddress(0));
    let ring_bytes = &body[..body.len().min(0x3000)];
    let _ = mem.write_slice(ring_bytes, GuestAddress(0x3_0000));
    let mut queues = rings::queues(3, SIZE, head[0] & 1 != 0);
    let (tap, mut host) = SocketTap::pair().unwrap();
    host.set_nonblocking(true).unwrap();
    // Up to three frames for the receive path, lengths from the input.
    for i in 0..usize::from(head[1] % 4) {
        let len = (usize::from(head[2]) * 37 * (i + 1)) % 3000;
        let _ = host.write_all(&body[..len.min(body.len())]);
    }
    let acked = u64::from(head[3]) << 1 | 1 << 32;
    let _tap = process_once(&mut queues, &mem, Box::new(tap), acked);
    let mut buf = vec![0u8; MAX_FRAME + 1];
    while let Ok(n) = host.read(&mut buf) {
        assert!((HDR_LEN..=MAX_FRAME).contains(&n), "a {n}-byte frame reached the TAP");
    }
    for q in &queues {
        // Only chains the device took can be used.
        assert!(q.queue.next_used() <= q.queue.next_avail(), "more used than taken");
    }
});
