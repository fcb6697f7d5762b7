//! Fuzzes the virtio-mem request path: arbitrary request streams and
//! descriptor framings against the device core, with host resizes mixed in.
//! Checks the spec's invariants after every step.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio::mem::{handle_chain, Geometry, Mem, MemBackend, MemShared};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
const BASE: u64 = 0x1_0000_0000;

struct Nop;
impl MemBackend for Nop {
    fn map_slot(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn unmap_slot(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn populate(&self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
    let g = Geometry {
        addr: BASE,
        region_size: 256 * MIB,
        block_size: 2 * MIB,
        slot_size: 128 * MIB,
        node_id: 0,
    };
    let dev = Mem::new(
        g,
        64 * MIB,
        data.first().is_some_and(|b| b & 1 == 1),
        Arc::new(Nop),
        None,
    );
    let handle = dev.handle();
    let shared: &MemShared = dev.shared();
    for op in data.chunks_exact(12) {
        if op[0] & 0x80 != 0 {
            // Host resize to a block-aligned size within the region.
            handle.set_requested(u64::from(op[1]) * 2 * MIB);
        } else {
            let kind = u16::from(op[0] & 7);
            let addr = BASE.wrapping_add(
                u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]])).wrapping_mul(MIB / 8),
            );
            let nb = u16::from_le_bytes([op[6], op[7]]) & 0x3ff;
            mem.write_obj(kind, GuestAddress(0x100)).unwrap();
            mem.write_obj(addr, GuestAddress(0x108)).unwrap();
            mem.write_obj(nb, GuestAddress(0x110)).unwrap();
            // Framing: split point of the request, response size and direction.
            let split = u32::from(op[8] % 25);
            let resp_len = u32::from(op[9] % 16);
            let mut descs = vec![];
            if split > 0 {
                descs.push(Descriptor::new(0x100, split, 0, 0));
            }
            if split < 24 && op[10] & 1 == 0 {
                descs.push(Descriptor::new(0x100 + u64::from(split), 24 - split, 0, 0));
            }
            descs.push(Descriptor::new(
                0x200,
                resp_len,
                if op[10] & 2 == 0 { 2 } else { 0 },
                0,
            ));
            let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
            let q = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
            let Ok(chain) = q.build_desc_chain(&raw) else {
                continue;
            };
            let used = handle_chain(shared, chain, &mem);
            assert!(used == 0 || used == 10);
        }
        let i = handle.info();
        assert!(
            i.usable_region_size >= i.requested_size,
            "usable >= requested"
        );
        // usable shrinks only on UNPLUG_ALL, which unplugs everything.
        assert!(
            i.plugged_size <= i.usable_region_size,
            "plugged within the usable region"
        );
        assert!(i.usable_region_size <= g.region_size);
        for v in [i.usable_region_size, i.requested_size, i.plugged_size] {
            assert_eq!(v % g.block_size, 0, "block multiples");
        }
    }
});
