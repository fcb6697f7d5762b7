//! The loop every device runs over a notified queue.

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory};

use crate::device::ActiveQueue;

/// Pops every available chain, hands it to `handle` (which returns the number
/// of bytes written to the chain), completes it, and repeats until the driver
/// has added nothing new after notifications were re-enabled (so no
/// notification is lost with event-idx). Returns whether the driver needs an
/// interrupt.
///
/// Fairness: one call handles at most two passes over the ring, so a driver
/// that keeps publishing cannot pin the worker. When that budget runs out
/// with chains still available, notifications are re-enabled all the same
/// and the queue's own eventfd is signalled, so the worker comes back to
/// this queue after its other events. Every exit leaves notifications
/// enabled: a driver that follows the spec never waits on a device that
/// stopped listening.
pub fn drain<M, F>(aq: &mut ActiveQueue, mem: &M, mut handle: F) -> bool
where
    M: GuestMemory,
    F: FnMut(DescriptorChain<&M>) -> u32,
{
    let queue = &mut aq.queue;
    let mut used_any = false;
    let mut budget = u32::from(queue.size()) * 2;
    // A pass that takes nothing although the driver has published more
    // is a race the next pass settles, once; twice in a row the avail ring
    // is broken (an index more than a ring ahead, an unreadable entry).
    let mut stalled = false;
    loop {
        if queue.disable_notification(mem).is_err() {
            break;
        }
        let budget_before = budget;
        while budget > 0 {
            // Not pop_descriptor_chain: it logs every broken avail ring, a
            // log line a guest could repeat at will.
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    devices::warn_ratelimited!("virtio: queue {}: {e}", aq.index);
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            budget -= 1;
            let head = chain.head_index();
            let len = handle(chain);
            if queue.add_used(mem, head, len).is_err() {
                devices::warn_ratelimited!(
                    "virtio: cannot write the used ring; stopping this pass"
                );
                // Best effort: the ring is broken, but leave it listening.
                let _ = queue.enable_notification(mem);
                return used_any;
            }
            used_any = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) if budget == budget_before && stalled => {
                devices::warn_ratelimited!(
                    "virtio: queue {}: the driver published chains that cannot be taken; \
                     waiting for its next notification",
                    aq.index
                );
                break;
            }
            Ok(true) if budget > 0 => {
                stalled = budget == budget_before;
                continue;
            }
            Ok(true) => {
                // Out of budget with work left: come back after other events.
                if let Err(e) = aq.notify.write(1) {
                    devices::warn_ratelimited!("virtio: cannot re-arm queue {}: {e}", aq.index);
                }
                break;
            }
            _ => break,
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// The next available chain of `queue`, if any; a broken avail ring is
/// logged (rate-limited, prefixed with `what`) and reads as none.
pub fn next_chain<'a, M: GuestMemory>(
    queue: &mut virtio_queue::Queue,
    mem: &'a M,
    what: &str,
) -> Option<DescriptorChain<&'a M>> {
    match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            devices::warn_ratelimited!("{what}: {e}");
            None
        }
    }
}

/// Why a chain's driver-readable bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadChainError {
    /// A device-writable descriptor where only readable ones belong.
    Writable,
    /// More bytes than the caller takes.
    TooLong,
    /// A buffer outside guest memory.
    NotMemory,
}

/// Copies the bytes of `chain`, whose descriptors must all be
/// driver-readable, into `buf` (cleared first; at most `max` bytes).
pub fn read_chain<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), ReadChainError> {
    buf.clear();
    for d in chain {
        if d.is_write_only() {
            return Err(ReadChainError::Writable);
        }
        let len = d.len() as usize;
        if len > max - buf.len() {
            return Err(ReadChainError::TooLong);
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], d.addr())
            .map_err(|_| ReadChainError::NotMemory)?;
    }
    Ok(())
}

/// Room the device may write in `chain`: `None` when it has a
/// driver-readable descriptor.
pub fn writable_room<M: GuestMemory>(chain: &DescriptorChain<&M>) -> Option<u64> {
    let mut room = 0u64;
    for d in chain.clone() {
        if !d.is_write_only() {
            return None;
        }
        room += u64::from(d.len());
    }
    Some(room)
}

/// Writes `data` over the device-writable descriptors of `chain`, in
/// order; returns how many bytes went in (fewer when the chain is shorter
/// or a buffer is not guest memory).
pub fn write_chain<M: GuestMemory>(chain: DescriptorChain<&M>, mem: &M, data: &[u8]) -> usize {
    let mut off = 0usize;
    for d in chain {
        if off == data.len() {
            break;
        }
        if !d.is_write_only() {
            continue;
        }
        let n = (d.len() as usize).min(data.len() - off);
        if mem.write_slice(&data[off..off + n], d.addr()).is_err() {
            break;
        }
        off += n;
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::Queue;
    #[allow(unused_imports)]
    use vm_memory::GuestMemoryMmap;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const SIZE: u16 = 16;
    const VRING_USED_F_NO_NOTIFY: u16 = 1;
    // Rings laid out by hand: virtio-queue's mock places the used ring over
    // the second half of the avail ring.
    const DESC: GuestAddress = GuestAddress(0x8_0000);
    const AVAIL: GuestAddress = GuestAddress(0x8_1000);
    const USED: GuestAddress = GuestAddress(0x8_2000);

    /// Publishes `count` one-descriptor chains (heads `first..`, taken modulo
    /// the ring size) at the avail ring's current index.
    fn publish(m: &GuestMemoryMmap, first: u16, count: u16) {
        let idx: u16 = m.read_obj(AVAIL.unchecked_add(2)).unwrap();
        for i in 0..count {
            let head = (first + i) % SIZE;
            let desc = Descriptor::new(0x9_0000 + u64::from(head) * 0x100, 0x100, 0, 0);
            m.write_obj(
                RawDescriptor::from(desc),
                DESC.unchecked_add(16 * u64::from(head)),
            )
            .unwrap();
            let slot = u64::from(idx.wrapping_add(i) % SIZE);
            m.write_obj(head, AVAIL.unchecked_add(4 + 2 * slot))
                .unwrap();
        }
        m.write_obj(idx.wrapping_add(count), AVAIL.unchecked_add(2))
            .unwrap();
    }

    fn used_idx(m: &GuestMemoryMmap) -> u16 {
        m.read_obj(USED.unchecked_add(2)).unwrap()
    }

    fn used_flags(m: &GuestMemoryMmap) -> u16 {
        m.read_obj(USED).unwrap()
    }

    /// `avail_event`, after the used ring's entries (EVENT_IDX).
    fn avail_event(m: &GuestMemoryMmap) -> u16 {
        m.read_obj(USED.unchecked_add(4 + 8 * u64::from(SIZE)))
            .unwrap()
    }

    fn active(event_idx: bool) -> ActiveQueue {
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_size(SIZE);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(DESC);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(AVAIL);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(USED);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        queue.set_event_idx(event_idx);
        ActiveQueue {
            index: 0,
            queue,
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// A full ring, then a driver that keeps publishing while the device
    /// works: the call stops at its budget, but notifications stay enabled
    /// (no NO_NOTIFY flag; with EVENT_IDX, avail_event at the next chain)
    /// and the queue's eventfd is signalled so the worker comes back.
    fn full_ring_keeps_listening(event_idx: bool) {
        let m = crate::test_util::mem();
        publish(&m, 0, SIZE);
        let mut aq = active(event_idx);
        let mut handled = 0u16;
        drain(&mut aq, &m, |_| {
            handled += 1;
            // The driver reposts each buffer as soon as it is used (the
            // chain used last has head `handled - 2`), so the ring never
            // empties.
            if handled >= 2 {
                publish(&m, handled - 2, 1);
            }
            0
        });
        assert_eq!(handled, 2 * SIZE, "one call handles its budget");
        assert_eq!(used_idx(&m), 2 * SIZE);
        if event_idx {
            assert_eq!(
                avail_event(&m),
                2 * SIZE,
                "avail_event points at the next chain"
            );
        } else {
            assert_eq!(
                used_flags(&m) & VRING_USED_F_NO_NOTIFY,
                0,
                "notifications enabled"
            );
        }
        assert_eq!(aq.notify.read().ok(), Some(1), "the worker is re-armed");
        // The worker's next round picks up the rest.
        drain(&mut aq, &m, |_| 0);
        assert_eq!(used_idx(&m), 3 * SIZE - 1);
        assert!(aq.notify.read().is_err(), "nothing left: no re-arm");
    }

    #[test]
    fn a_full_ring_leaves_notifications_enabled_without_event_idx() {
        full_ring_keeps_listening(false);
    }

    #[test]
    fn a_full_ring_leaves_notifications_enabled_with_event_idx() {
        full_ring_keeps_listening(true);
    }

    /// An avail index more than a ring ahead: no chain can be taken, and
    /// the call returns instead of looping on "more available".
    #[test]
    fn a_broken_avail_index_does_not_loop() {
        for event_idx in [false, true] {
            let m = crate::test_util::mem();
            m.write_obj(SIZE * 3, AVAIL.unchecked_add(2)).unwrap();
            let mut aq = active(event_idx);
            let mut handled = 0;
            assert!(!drain(&mut aq, &m, |_| {
                handled += 1;
                0
            }));
            assert_eq!(handled, 0);
            assert_eq!(
                used_flags(&m) & VRING_USED_F_NO_NOTIFY,
                0,
                "still listening"
            );
        }
    }

    #[test]
    fn exactly_one_ring_of_chains_is_drained_and_listening() {
        for event_idx in [false, true] {
            let m = crate::test_util::mem();
            publish(&m, 0, SIZE);
            let mut aq = active(event_idx);
            drain(&mut aq, &m, |_| 0);
            assert_eq!(used_idx(&m), SIZE);
            assert_eq!(used_flags(&m) & VRING_USED_F_NO_NOTIFY, 0);
            if event_idx {
                assert_eq!(avail_event(&m), SIZE);
            }
            assert!(aq.notify.read().is_err(), "no work left: not re-armed");
        }
    }
}
