//! Fuzzes PCI configuration and BAR accesses of a virtio-pci function:
//! every width at every offset, in any order, must leave the function
//! identifiable and never panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pci::{MsixSink, PciDevice};
use virtio::rng::Rng;
use virtio::transport::{VirtioPciDevice, BAR0_SIZE};
use vm_memory::GuestAddress;

struct NullSink;
impl MsixSink for NullSink {
    fn update_route(&self, _vector: u16, _message: Option<(u64, u32)>) {}
    fn deliver(&self, _vector: u16) {}
}

fuzz_target!(|data: &[u8]| {
    let mem = virtio::DeviceRam::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let mut dev = VirtioPciDevice::new(
        "fuzz",
        Box::new(Rng::default()),
        virtio::DeviceMemory::new(mem),
        0x1_0000_0000,
        Arc::new(NullSink),
    )
    .unwrap();
    for op in data.chunks_exact(8) {
        let len = [1usize, 2, 4, 8][usize::from(op[0] & 3)];
        let value = &op[4..8];
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(value);
        buf[4..].copy_from_slice(value);
        if op[0] & 0x80 == 0 {
            let off = u16::from_le_bytes([op[1], op[2]]) & 0x1fff;
            if op[0] & 0x40 == 0 {
                let _ = dev.write_config(off, &buf[..len]);
            } else {
                dev.read_config(off, &mut buf[..len]);
            }
        } else {
            let off = u64::from(u32::from_le_bytes([op[1], op[2], op[3], 0])) % (BAR0_SIZE + 16);
            if op[0] & 0x40 == 0 {
                dev.write_bar(0, off, &buf[..len]);
            } else {
                dev.read_bar(0, off, &mut buf[..len]);
            }
        }
    }
    let mut id = [0u8; 4];
    dev.read_config(0, &mut id);
    assert_eq!(
        u32::from_le_bytes(id),
        0x1044_1af4,
        "vendor/device IDs are read-only"
    );
});
