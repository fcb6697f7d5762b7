//! virtio-console (virtio 1.2 §5.3) with a single port: `hvc0` in the guest.
//! Output goes to a writer; input comes from an optional host fd (the
//! terminal), read only while the driver has receive buffers posted.

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory};

use crate::device::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt,
};
use crate::queue_util::drain;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features};

/// `VIRTIO_CONSOLE_F_EMERG_WRITE`
pub const F_EMERG_WRITE: u64 = 1 << 2;
const RX: u16 = 0;
const TX: u16 = 1;
const QUEUE_SIZE: u16 = 256;
const CONFIG_LEN: usize = 12;
const CHUNK: usize = 4096;
/// Most bytes one transmit request may emit: a chain can name the same
/// buffer in thousands of (indirect) descriptors; Linux sends at most a few
/// pages per request.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// Where console output goes; shared so that the worker and emergency writes
/// use the same writer.
pub type ConsoleOutput = Arc<Mutex<Box<dyn Write + Send>>>;

/// Copies the readable bytes of `chain` to `out`, in chunks, taking the
/// output lock for one chunk at a time and stopping after
/// [`MAX_REQUEST_BYTES`]. Returns the bytes emitted.
pub fn transmit<M: GuestMemory>(chain: DescriptorChain<&M>, mem: &M, out: &ConsoleOutput) -> u64 {
    let mut buf = [0u8; CHUNK];
    let mut total = 0u64;
    for d in chain {
        if d.is_write_only() {
            continue;
        }
        let mut off = 0u64;
        while off < u64::from(d.len()) {
            if total >= MAX_REQUEST_BYTES {
                devices::warn_ratelimited!(
                    "virtio-console: a transmit request exceeds {MAX_REQUEST_BYTES} bytes; the rest is dropped"
                );
                return total;
            }
            let n = (u64::from(d.len()) - off)
                .min(CHUNK as u64)
                .min(MAX_REQUEST_BYTES - total) as usize;
            if mem
                .read_slice(&mut buf[..n], GuestAddress(d.addr().0.wrapping_add(off)))
                .is_err()
            {
                devices::warn_ratelimited!(
                    "virtio-console: transmit buffer at {:#x} not readable",
                    d.addr().0
                );
                return total;
            }
            let _ = out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&buf[..n]);
            off += n as u64;
            total += n as u64;
        }
    }
    let _ = out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    total
}

struct ConsoleHandler {
    out: ConsoleOutput,
    input: Option<RawFd>,
    input_eof: bool,
}

impl ConsoleHandler {
    /// Moves input into posted receive buffers. Returns (interrupt rx, keep polling).
    fn receive<M: GuestMemory>(&mut self, queues: &mut [ActiveQueue], mem: &M) -> (bool, bool) {
        let (Some(fd), false) = (self.input, self.input_eof) else {
            return (false, false);
        };
        let Some(rx) = queues.iter_mut().find(|q| q.index == RX) else {
            return (false, false);
        };
        let Some(chain) = rx.queue.pop_descriptor_chain(mem) else {
            // No buffer: stop reading until the driver posts one.
            return (false, false);
        };
        let head = chain.head_index();
        let mut buf = [0u8; CHUNK];
        let room: u64 = chain
            .clone()
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        let want = room.min(CHUNK as u64) as usize;
        let n = match crate::fd_io::read_fd(fd, &mut buf[..want]) {
            Ok(0) => {
                self.input_eof = true;
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.input_eof = true;
                0
            }
        };
        let mut done = 0;
        for d in chain.filter(|d| d.is_write_only()) {
            if done == n {
                break;
            }
            let k = (d.len() as usize).min(n - done);
            if mem.write_slice(&buf[done..done + k], d.addr()).is_err() {
                devices::warn_ratelimited!(
                    "virtio-console: receive buffer at {:#x} not writable",
                    d.addr().0
                );
                break;
            }
            done += k;
        }
        if rx.queue.add_used(mem, head, done as u32).is_err() {
            return (false, false);
        }
        let notify = rx.queue.needs_notification(mem).unwrap_or(true);
        (notify, !self.input_eof)
    }
}

impl QueueHandler for ConsoleHandler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        if index == TX {
            let out = self.out.clone();
            return match queues.iter_mut().find(|q| q.index == TX) {
                Some(q) => drain(q, mem, |chain| {
                    transmit(chain, mem, &out);
                    0
                }),
                None => false,
            };
        }
        // RX notified: new buffers; input polling resumes in the worker.
        false
    }

    fn extra_fd(&self) -> Option<RawFd> {
        self.input
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> (Vec<u16>, bool) {
        let (notify, keep) = self.receive(queues, mem);
        (if notify { vec![RX] } else { vec![] }, keep)
    }
}

/// The console device.
pub struct Console {
    out: ConsoleOutput,
    input: Option<RawFd>,
    worker: Option<Worker<ConsoleHandler>>,
}

impl Console {
    /// A console writing to `out` and, if given, reading from `input`.
    pub fn new(out: Box<dyn Write + Send>, input: Option<RawFd>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            input,
            worker: None,
        }
    }
}

impl VirtioDeviceCommon for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_EMERG_WRITE
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // cols, rows (no F_SIZE), max_nr_ports (no MULTIPORT), emerg_wr (write-only).
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == 8 && data.len() == 4 {
            let mut w = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write_all(&data[..1]);
            let _ = w.flush();
        }
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        Worker::stop_queues(&mut self.worker)
    }

    fn reset(&mut self) {
        drop(self.pause());
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Console {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if !queues.iter().any(|q| q.index == TX) {
            return Err(ActivateError::BadQueue(TX));
        }
        let h = ConsoleHandler {
            out: self.out.clone(),
            input: self.input,
            input_eof: false,
        };
        self.worker = Some(
            Worker::spawn("virtio-console", h, queues, mem, interrupt)
                .map_err(|e| ActivateError::Start(e.to_string()))?,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{chain_of, mem, mem_of};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_copies_readable_bytes_in_chunks() {
        let m = mem();
        let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        m.write_slice(&text, GuestAddress(0x1000)).unwrap();
        let b = Buf::default();
        let out: ConsoleOutput = Arc::new(Mutex::new(Box::new(b.clone())));
        let chain = chain_of(
            &m,
            &[
                RawDescriptor::from(Descriptor::new(0x1000, 10_000, 0, 0)),
                RawDescriptor::from(Descriptor::new(0x9000, 8, 2, 0)),
            ],
        );
        transmit(chain, &m, &out);
        assert_eq!(
            *b.0.lock().unwrap(),
            text,
            "writable descriptors are skipped"
        );
    }

    #[test]
    fn transmit_stops_at_unreadable_memory() {
        let m = mem();
        let b = Buf::default();
        let out: ConsoleOutput = Arc::new(Mutex::new(Box::new(b.clone())));
        let chain = chain_of(
            &m,
            &[RawDescriptor::from(Descriptor::new(
                0xffff_ffff_0000,
                u32::MAX,
                0,
                0,
            ))],
        );
        transmit(chain, &m, &out);
        assert!(b.0.lock().unwrap().is_empty());
    }

    #[test]
    fn one_request_naming_a_buffer_many_times_is_capped() {
        let m = mem();
        m.write_slice(&[b'z'; 0x1000], GuestAddress(0x1000))
            .unwrap();
        let b = Buf::default();
        let out: ConsoleOutput = Arc::new(Mutex::new(Box::new(b.clone())));
        // The same page named by every descriptor of the chain.
        let descs: Vec<_> = (0..16)
            .map(|_| RawDescriptor::from(Descriptor::new(0x1000, 0x1000, 0, 0)))
            .collect();
        let emitted = transmit(chain_of(&m, &descs), &m, &out);
        assert_eq!(emitted, 16 * 0x1000, "under the cap, everything goes out");
        let big = mem_of(8 << 20);
        let descs = [RawDescriptor::from(Descriptor::new(0, 8 << 20, 0, 0))];
        let emitted = transmit(chain_of(&big, &descs), &big, &out);
        assert_eq!(
            emitted, MAX_REQUEST_BYTES,
            "an 8 MiB request stops at the cap"
        );
    }

    #[test]
    fn emergency_write_outputs_one_byte() {
        let b = Buf::default();
        let mut c = Console::new(Box::new(b.clone()), None);
        c.write_config(8, &(b'!' as u32).to_le_bytes());
        c.write_config(0, &[1, 2]);
        assert_eq!(*b.0.lock().unwrap(), b"!");
        assert_ne!(c.features() & F_EMERG_WRITE, 0);
    }
}
