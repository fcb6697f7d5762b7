//! virtio-rng (virtio 1.2 §5.4): one queue of driver buffers the device fills
//! with random bytes from the host's `getrandom(2)`.

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemory};

use crate::device::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt,
};
use crate::queue_util::drain;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features};

/// Most bytes produced for one request (the driver asks again for more).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the live, writable tail of
        // `buf`; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

/// Fills the writable descriptors of one request; returns bytes written.
pub fn handle_request<M: GuestMemory>(chain: DescriptorChain<&M>, mem: &M) -> u32 {
    let mut written = 0usize;
    let mut buf = vec![0u8; 4096];
    for desc in chain {
        if !desc.is_write_only() {
            devices::warn_ratelimited!("virtio-rng: driver-readable descriptor ignored");
            continue;
        }
        let mut left = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
        let mut addr = desc.addr();
        while left > 0 {
            let n = left.min(buf.len());
            if !fill_random(&mut buf[..n]) || mem.write_slice(&buf[..n], addr).is_err() {
                devices::warn_ratelimited!("virtio-rng: buffer at {:#x} not writable", addr.0);
                return written as u32;
            }
            written += n;
            left -= n;
            addr = vm_memory::GuestAddress(addr.0.wrapping_add(n as u64));
        }
        if written >= MAX_BYTES_PER_REQUEST {
            break;
        }
    }
    written as u32
}

struct RngHandler;

impl QueueHandler for RngHandler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        _index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        match queues.first_mut() {
            Some(q) => drain(q, mem, |chain| handle_request(chain, mem)),
            None => false,
        }
    }
}

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker<RngHandler>>,
}

impl VirtioDeviceCommon for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        Worker::stop_queues(&mut self.worker)
    }

    fn reset(&mut self) {
        drop(self.pause());
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Rng {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if queues.is_empty() {
            return Err(ActivateError::BadQueue(0));
        }
        let w = Worker::spawn("virtio-rng", RngHandler, queues, mem, interrupt)
            .map_err(|e| ActivateError::Start(e.to_string()))?;
        self.worker = Some(w);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{chain_of, mem};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    struct NoInterrupt;
    impl VirtioInterrupt for NoInterrupt {
        fn notify_queue(&self, _: u16) {}
        fn notify_config(&self) {}
    }

    /// The device is generic over its guest memory: here it runs over an
    /// `Arc<GuestMemoryMmap>` instead of the VMM's atomic view, and pauses
    /// with its ring position handed back.
    #[test]
    fn runs_over_any_guest_address_space() {
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let m: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mq = MockSplitQueue::create(&m, GuestAddress(0x8_0000), 16);
        mq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(0x2000, 32, WRITE, 0))],
            0,
        )
        .unwrap();
        let notify = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let queue = ActiveQueue {
            index: 0,
            queue: mq.create_queue().unwrap(),
            notify: notify.try_clone().unwrap(),
        };
        let mut rng = Rng::default();
        VirtioDevice::<Arc<GuestMemoryMmap>>::activate(
            &mut rng,
            Arc::new(m.clone()),
            Arc::new(NoInterrupt),
            vec![queue],
            features::VERSION_1,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while mq.used().idx().load() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(mq.used().idx().load(), 1);
        let queues = rng.pause();
        assert_eq!(queues.len(), 1);
        assert_eq!(
            crate::state::QueueSnapshot::of(&queues[0].queue).next_used,
            1,
            "the ring position comes back"
        );
    }

    #[test]
    fn fills_writable_buffers() {
        let m = mem();
        let chain = chain_of(
            &m,
            &[RawDescriptor::from(Descriptor::new(0x10_000, 64, WRITE, 0))],
        );
        assert_eq!(handle_request(chain, &m), 64);
        let mut got = [0u8; 64];
        m.read_slice(&mut got, vm_memory::GuestAddress(0x10_000))
            .unwrap();
        assert!(
            got.iter().any(|&b| b != 0),
            "64 random bytes are not all zero"
        );
    }

    #[test]
    fn readable_buffers_and_bad_addresses_are_survived() {
        let m = mem();
        let chain = chain_of(
            &m,
            &[
                RawDescriptor::from(Descriptor::new(0x10_000, 16, 0, 0)),
                RawDescriptor::from(Descriptor::new(0xffff_0000_0000, 16, WRITE, 0)),
            ],
        );
        assert_eq!(handle_request(chain, &m), 0);
    }

    #[test]
    fn one_request_is_bounded() {
        let m = mem();
        let chain = chain_of(
            &m,
            &[RawDescriptor::from(Descriptor::new(
                0x10_000, 0x2_0000, WRITE, 0,
            ))],
        );
        assert_eq!(handle_request(chain, &m) as usize, MAX_BYTES_PER_REQUEST);
    }
}
