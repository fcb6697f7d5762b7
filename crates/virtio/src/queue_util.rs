//! The loop every device runs over a notified queue.

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Pops every available chain, hands it to `handle` (which returns the number
/// of bytes written to the chain), completes it, and repeats until the driver
/// has added nothing new after notifications were re-enabled (so no
/// notification is lost with event-idx). Returns whether the driver needs an
/// interrupt. Guest memory errors on the ring itself end the pass.
pub fn drain<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut handle: F) -> bool
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut used_any = false;
    loop {
        if queue.disable_notification(mem).is_err() {
            break;
        }
        // At most one pass over the ring per round: a hostile driver that keeps
        // republishing cannot pin this thread forever.
        let mut budget = queue.size();
        while budget > 0 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            budget -= 1;
            let head = chain.head_index();
            let len = handle(chain);
            if queue.add_used(mem, head, len).is_err() {
                devices::warn_ratelimited!(
                    "virtio: cannot write the used ring; stopping this pass"
                );
                return used_any;
            }
            used_any = true;
        }
        if budget == 0 {
            break;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            _ => break,
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}
