//! Helpers for device tests: guest memory and descriptor chains built with
//! virtio-queue's mock rings.

use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryMmap};

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
