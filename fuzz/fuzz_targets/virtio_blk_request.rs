//! Fuzzes the virtio-blk request path: a descriptor chain and guest memory
//! contents from the input, parsed and executed against a small disk.
#![no_main]

use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio::block::{handle_chain, Disk};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 0x2_0000;

fn image() -> File {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("caravel-fuzz-blk-{}", std::process::id()));
        let mut f = File::create(&p).unwrap();
        f.write_all(&[0x5a; 8 * 512]).unwrap();
        p
    });
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let n = usize::from(data[0] % 16) + 1;
    let (descs_raw, rest) = data[1..].split_at((n * 7).min(data.len() - 1));
    let mut descs = Vec::new();
    for d in descs_raw.chunks_exact(7) {
        // Addresses mostly inside memory, sometimes far outside.
        let addr = u64::from(u16::from_le_bytes([d[0], d[1]]))
            * if d[6] & 0x80 != 0 { 0x1_0000_0001 } else { 1 };
        let len = u32::from(u16::from_le_bytes([d[2], d[3]]))
            * if d[6] & 0x40 != 0 { 0x1_0000 } else { 1 };
        let flags = u16::from(d[4] & 0x2); // WRITE; NEXT is set by the mock
        descs.push(RawDescriptor::from(Descriptor::new(
            addr,
            len,
            flags,
            u16::from(d[5]),
        )));
    }
    if descs.is_empty() {
        return;
    }
    // Memory contents (request headers, discard ranges) from the rest.
    let _ = mem.write_slice(&rest[..rest.len().min(0x1000)], GuestAddress(0));
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1_8000), 16);
    let Ok(chain) = q.build_desc_chain(&descs) else {
        return;
    };
    let mut disk = Disk::new(image(), rest.first().is_some_and(|b| b & 1 == 1), "fuzz").unwrap();
    let used = handle_chain(&mut disk, chain, &mem);
    let writable: u64 = descs
        .iter()
        .map(|d| Descriptor::from(*d))
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum();
    assert!(
        u64::from(used) <= writable,
        "used length {used} exceeds the writable bytes {writable}"
    );
});
