//! A thread per active device, woken by queue eventfds (and optionally one
//! more fd, e.g. console input), stopped by a kill eventfd.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_memory::{GuestAddressSpace, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{ActiveQueue, VirtioInterrupt};

/// Called first thing on every worker thread (the VMM installs its sandbox
/// there); set once, before any worker starts.
static THREAD_START_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets the function every worker thread calls when it starts (the VMM's
/// seccomp filter). Later calls are ignored.
pub fn set_thread_start_hook(hook: fn()) {
    let _ = THREAD_START_HOOK.set(hook);
}

/// Device logic run on the worker thread.
pub trait QueueHandler: Send + 'static {
    /// Queue `index` was notified: process it. Returns true when the driver
    /// should be interrupted for that queue.
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool;

    /// An extra fd to wait on (input sources).
    fn extra_fd(&self) -> Option<RawFd> {
        None
    }

    /// The extra fd is readable; returns the queues to interrupt for.
    /// Returning `false` as the second value stops polling the fd until the
    /// next queue notification (no room for input).
    fn process_extra<M: GuestMemory>(
        &mut self,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> (Vec<u16>, bool) {
        let _ = (queues, mem);
        (Vec::new(), false)
    }
}

/// What a stopped worker hands back: the device logic with its state, and
/// the queues with their ring positions (to continue where they were).
pub struct Stopped<H> {
    /// The handler.
    pub handler: H,
    /// The queues, as the worker last left them.
    pub queues: Vec<ActiveQueue>,
}

/// A running worker.
pub struct Worker<H> {
    kill: Arc<EventFd>,
    thread: Option<JoinHandle<Stopped<H>>>,
}

const KILL: u64 = u64::MAX;
const EXTRA: u64 = u64::MAX - 1;

impl<H: QueueHandler> Worker<H> {
    /// Starts `handler` on its own thread named `name`, over the guest
    /// memory of `mem` (loaded afresh for each batch of requests).
    pub fn spawn<A>(
        name: &str,
        mut handler: H,
        mut queues: Vec<ActiveQueue>,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> std::io::Result<Self>
    where
        A: GuestAddressSpace + Send + 'static,
    {
        let kill = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        for (slot, q) in queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                q.notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, slot as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            kill.as_raw_fd(),
            EpollEvent::new(EventSet::IN, KILL),
        )?;
        let extra = handler.extra_fd();
        let mut extra_polled = false;
        if let Some(fd) = extra {
            extra_polled = epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, EXTRA),
                )
                .is_ok();
        }
        let kill2 = kill.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Some(hook) = THREAD_START_HOOK.get() {
                    hook();
                }
                let mut events = vec![EpollEvent::default(); 8];
                // Buffers may already be queued when the device starts.
                let view = mem.memory();
                for slot in 0..queues.len() {
                    let index = queues[slot].index;
                    if handler.process_queue(index, &mut queues, &*view) {
                        interrupt.notify_queue(index);
                    }
                }
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("virtio worker: epoll failed: {e}");
                            break;
                        }
                    };
                    // The current view of guest memory for this batch.
                    let view = mem.memory();
                    for ev in &events[..n] {
                        match ev.data() {
                            KILL => {
                                let _ = kill2.read();
                                return Stopped { handler, queues };
                            }
                            EXTRA => {
                                let (signal, keep) = handler.process_extra(&mut queues, &*view);
                                for q in signal {
                                    interrupt.notify_queue(q);
                                }
                                if !keep {
                                    if let Some(fd) = extra {
                                        let _ = epoll.ctl(
                                            ControlOperation::Delete,
                                            fd,
                                            EpollEvent::default(),
                                        );
                                        extra_polled = false;
                                    }
                                }
                            }
                            slot => {
                                let slot = slot as usize;
                                let _ = queues[slot].notify.read();
                                let index = queues[slot].index;
                                if handler.process_queue(index, &mut queues, &*view) {
                                    interrupt.notify_queue(index);
                                }
                                if let (Some(fd), false) = (extra, extra_polled) {
                                    extra_polled = epoll
                                        .ctl(
                                            ControlOperation::Add,
                                            fd,
                                            EpollEvent::new(EventSet::IN, EXTRA),
                                        )
                                        .is_ok();
                                }
                            }
                        }
                    }
                }
                // Only reached when epoll itself fails; wait to be stopped.
                let _ = kill2.read();
                Stopped { handler, queues }
            })?;
        Ok(Self {
            kill,
            thread: Some(thread),
        })
    }

    /// Stops the worker in `slot`, if any, and returns its queues with
    /// their ring positions (a device's pause); none when there was no
    /// worker.
    pub fn stop_queues(slot: &mut Option<Self>) -> Vec<ActiveQueue> {
        slot.take()
            .and_then(Self::stop)
            .map(|s| s.queues)
            .unwrap_or_default()
    }

    /// Stops the thread and returns the handler (with its state) and the
    /// queues; `None` only if the thread panicked.
    pub fn stop(mut self) -> Option<Stopped<H>> {
        let _ = self.kill.write(1);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.kill.write(1);
            let _ = t.join();
        }
    }
}
