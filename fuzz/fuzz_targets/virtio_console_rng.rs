//! Fuzzes the virtio-console transmit path and the virtio-rng request path
//! with descriptor chains and memory from the input: bounded output, no
//! panic, used lengths within the chain.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use virtio::console::{transmit, ConsoleOutput, MAX_REQUEST_BYTES};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 0x4_0000;

/// Counts bytes instead of keeping them.
struct Count(Arc<Mutex<u64>>);
impl Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        *self.0.lock().unwrap() += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let n = usize::from(data[1] % 16) + 1;
    let (descs_raw, rest) = data[2..].split_at((n * 6).min(data.len() - 2));
    let descs: Vec<_> = descs_raw
        .chunks_exact(6)
        .map(|d| {
            let addr = u64::from(u16::from_le_bytes([d[0], d[1]]))
                * if d[5] & 0x80 != 0 { 0x1_0001 } else { 1 };
            let len = u32::from(u16::from_le_bytes([d[2], d[3]]))
                * if d[5] & 0x40 != 0 { 0x1_0000 } else { 1 };
            RawDescriptor::from(Descriptor::new(addr, len, u16::from(d[4] & 0x2), 0))
        })
        .collect();
    if descs.is_empty() {
        return;
    }
    let _ = mem.write_slice(&rest[..rest.len().min(0x1000)], GuestAddress(0));
    let q = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), 16);
    let Ok(chain) = q.build_desc_chain(&descs) else {
        return;
    };
    if data[0] & 1 == 0 {
        let count = Arc::new(Mutex::new(0));
        let out: ConsoleOutput = Arc::new(Mutex::new(Box::new(Count(count.clone()))));
        let emitted = transmit(chain, &mem, &out);
        assert!(emitted <= MAX_REQUEST_BYTES);
        assert_eq!(*count.lock().unwrap(), emitted);
    } else {
        let room: u64 = descs
            .iter()
            .map(|d| Descriptor::from(*d))
            .filter(|d| d.flags() & 0x2 != 0)
            .map(|d| u64::from(d.len()))
            .sum();
        let used = virtio::rng::handle_request(chain, &mem);
        assert!(u64::from(used) <= room);
    }
});
