//! virtio-balloon (virtio 1.2 §5.5): the host asks the guest for memory
//! back by setting `num_pages`; the driver inflates its balloon with pages
//! it no longer uses (and reports how many in `actual`), which the host
//! returns to itself; deflating gives them back to the guest.
//!
//! Besides the inflate and deflate queues the device offers the statistics
//! queue (`VIRTIO_BALLOON_F_STATS_VQ`: the guest's memory figures, asked for
//! at an interval), `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` (the guest deflates
//! rather than OOM-kill) and `VIRTIO_BALLOON_F_PAGE_REPORTING` (the guest
//! reports free page ranges, which the host discards at once).
//!
//! What the host may discard is the [`BalloonBackend`]'s decision: the VMM
//! refuses pages outside RAM, in unplugged virtio-mem blocks or mapped for
//! device DMA, and such pages are counted, never discarded. The device
//! never reads or writes the pages themselves.

mod pages;
mod stats;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory};
use vmm_sys_util::timerfd::TimerFd;

pub use pages::{pfn_runs, MAX_PFNS_PER_BUFFER, PAGE_SIZE};
pub use stats::{GuestMemoryStats, MAX_STATS, STAT_LEN};

use crate::device::{
    read_config_bytes, ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon,
    VirtioInterrupt,
};
use crate::net::Counter;
use crate::queue_util::{drain, next_chain, read_chain};
use crate::state::DeviceState;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features};

/// `VIRTIO_BALLOON_F_MUST_TELL_HOST` (never offered: deflating needs no
/// host action here).
pub const F_MUST_TELL_HOST: u64 = 1 << 0;
/// `VIRTIO_BALLOON_F_STATS_VQ`
pub const F_STATS_VQ: u64 = 1 << 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (not offered).
pub const F_FREE_PAGE_HINT: u64 = 1 << 3;
/// `VIRTIO_BALLOON_F_PAGE_POISON` (not offered: discarded pages read back
/// as zeros, so a guest that poisons free pages keeps reporting off).
pub const F_PAGE_POISON: u64 = 1 << 4;
/// `VIRTIO_BALLOON_F_PAGE_REPORTING`
pub const F_PAGE_REPORTING: u64 = 1 << 5;

/// Device configuration: `num_pages`, `actual`, `free_page_hint_cmd_id`,
/// `poison_val` (the last two unused without their features).
pub const CONFIG_LEN: usize = 16;
const QUEUE_SIZE: u16 = 256;
/// Largest free page report range taken (Linux reports up to 4 MiB).
const MAX_REPORT_BYTES: u64 = 1 << 30;

/// How the device is set up (`--balloon`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Offer `VIRTIO_BALLOON_F_PAGE_REPORTING`.
    pub free_page_reporting: bool,
    /// Time between requests for the guest's statistics; zero: no
    /// statistics queue.
    pub stats_interval: Duration,
}

/// Why the host did not take pages back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not guest RAM.
    NotRam,
    /// In a virtio-mem block the guest has not plugged.
    Unplugged,
    /// Mapped for a passed-through device's DMA (discarding would leave
    /// the device writing to pages the guest no longer sees).
    DmaMapped,
    /// The host call failed.
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRam => f.write_str("not guest RAM"),
            Self::Unplugged => f.write_str("in an unplugged virtio-mem block"),
            Self::DmaMapped => f.write_str("mapped for a passed-through device's DMA"),
            Self::Failed(e) => write!(f, "cannot discard: {e}"),
        }
    }
}

/// Returns guest memory to the host.
pub trait BalloonBackend: Send + Sync {
    /// Discard guest-physical `[gpa, gpa + len)` (page-aligned): its
    /// contents are lost and read back as zeros. Pages that may not be
    /// discarded are refused whole, before anything is discarded.
    fn discard(&self, gpa: u64, len: u64) -> Result<(), Refusal>;
}

/// What the balloon has done, for `vm.counters`.
#[derive(Debug, Default)]
pub struct BalloonCounters {
    /// 4 KiB pages the guest put in the balloon.
    pub inflated_pages: Counter,
    /// Pages the guest took back out.
    pub deflated_pages: Counter,
    /// Inflated pages the host did not discard (refused, see [`Refusal`]).
    pub refused_pages: Counter,
    /// Bytes of free page reports discarded.
    pub reported_bytes: Counter,
    /// Bytes of free page reports refused.
    pub refused_report_bytes: Counter,
    /// Statistics buffers received.
    pub stats_updates: Counter,
    /// Buffers dropped as malformed.
    pub bad_buffers: Counter,
}

/// Called with each statistics update (on the device's worker thread).
pub type StatsListener = Box<dyn Fn(&GuestMemoryStats) + Send + Sync>;

/// The saved device state: the sizes and the statistics buffer the device
/// holds (the driver sends its next statistics only when it gets it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonSavedState {
    /// Format version (1).
    pub version: u32,
    /// `num_pages`: the host's target.
    pub num_pages: u32,
    /// `actual`: what the driver last reported.
    pub actual: u32,
    /// Head of the statistics buffer held by the device.
    pub held_stats: Option<u16>,
}

/// The device's configuration, as the handle reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonInfo {
    /// Bytes the host asks the guest to give (`num_pages`).
    pub target: u64,
    /// Bytes the guest says it gave (`actual`).
    pub actual: u64,
    /// Options the device was made with.
    pub options: BalloonOptions,
    /// The driver has started the device.
    pub driver_active: bool,
}

#[derive(Debug, Default)]
struct Sizes {
    num_pages: u32,
    actual: u32,
    generation: u32,
}

struct Shared {
    options: BalloonOptions,
    sizes: Mutex<Sizes>,
    stats: Mutex<Option<(GuestMemoryStats, Instant)>>,
    counters: Arc<BalloonCounters>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    active: AtomicBool,
    /// The held statistics buffer while the worker is stopped.
    held_stats: Mutex<Option<u16>>,
    listener: Mutex<Option<Arc<StatsListener>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VMM's handle on a balloon.
#[derive(Clone)]
pub struct BalloonHandle(Arc<Shared>);

impl std::fmt::Debug for BalloonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BalloonHandle").field(&self.info()).finish()
    }
}

impl BalloonHandle {
    /// Asks the guest to give `bytes` (rounded down to 4 KiB pages) and
    /// tells the driver; refused above 16 TiB (`num_pages` is 32 bits).
    pub fn set_target(&self, bytes: u64) -> Result<(), String> {
        let pages = u32::try_from(bytes / PAGE_SIZE)
            .map_err(|_| format!("a balloon of {bytes} bytes is more than 16 TiB"))?;
        let changed = {
            let mut s = lock(&self.0.sizes);
            let changed = s.num_pages != pages;
            if changed {
                s.num_pages = pages;
                s.generation = s.generation.wrapping_add(1);
            }
            changed
        };
        if changed {
            if let Some(i) = lock(&self.0.interrupt).as_ref() {
                i.notify_config();
            }
        }
        Ok(())
    }

    /// Gives the handle the transport's interrupt path (for configuration
    /// changes).
    pub fn set_interrupt(&self, interrupt: Arc<dyn VirtioInterrupt>) {
        *lock(&self.0.interrupt) = Some(interrupt);
    }

    /// Sizes and options.
    pub fn info(&self) -> BalloonInfo {
        let s = lock(&self.0.sizes);
        BalloonInfo {
            target: u64::from(s.num_pages) * PAGE_SIZE,
            actual: u64::from(s.actual) * PAGE_SIZE,
            options: self.0.options,
            driver_active: self.0.active.load(Ordering::Acquire),
        }
    }

    /// The guest's latest statistics and how old they are; none before the
    /// first (or without the statistics queue).
    pub fn stats(&self) -> Option<(GuestMemoryStats, Duration)> {
        lock(&self.0.stats).map(|(s, at)| (s, at.elapsed()))
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<BalloonCounters> {
        self.0.counters.clone()
    }

    /// Calls `listener` with every statistics update from now on.
    pub fn set_stats_listener(&self, listener: StatsListener) {
        *lock(&self.0.listener) = Some(Arc::new(listener));
    }
}

/// What a queue of this device is for (the driver leaves out the queues of
/// features it did not accept, so the roles follow the negotiated features).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

fn roles(features: u64) -> Vec<Role> {
    let mut r = vec![Role::Inflate, Role::Deflate];
    if features & F_STATS_VQ != 0 {
        r.push(Role::Stats);
    }
    if features & F_PAGE_REPORTING != 0 {
        r.push(Role::Reporting);
    }
    r
}

/// Carries out the requests of one queue chain at a time; returns nothing
/// to the driver (used length 0 for every request).
struct Requests<'a> {
    shared: &'a Shared,
    backend: &'a dyn BalloonBackend,
    buf: &'a mut Vec<u8>,
}

impl Requests<'_> {
    /// Reads an inflate or deflate buffer into page runs.
    fn page_runs<M: GuestMemory>(
        &mut self,
        chain: DescriptorChain<&M>,
        mem: &M,
        what: &str,
    ) -> Option<Vec<(u64, u64)>> {
        let runs = read_chain(chain, mem, self.buf, MAX_PFNS_PER_BUFFER * 4)
            .ok()
            .and_then(|()| pfn_runs(self.buf));
        if runs.is_none() {
            self.shared.counters.bad_buffers.inc();
            devices::warn_ratelimited!(
                "virtio-balloon: malformed {what} buffer (not readable page numbers, or more than {MAX_PFNS_PER_BUFFER}); dropped"
            );
        }
        runs
    }

    fn inflate<M: GuestMemory>(&mut self, chain: DescriptorChain<&M>, mem: &M) {
        let Some(runs) = self.page_runs(chain, mem, "inflate") else {
            return;
        };
        let c = &self.shared.counters;
        for (pfn, count) in runs {
            c.inflated_pages.add(count);
            let gpa = pfn * PAGE_SIZE;
            if let Err(why) = self.backend.discard(gpa, count * PAGE_SIZE) {
                c.refused_pages.add(count);
                devices::warn_ratelimited!(
                    "virtio-balloon: {count} inflated page(s) at {gpa:#x} kept by the host: {why}"
                );
            }
        }
    }

    fn deflate<M: GuestMemory>(&mut self, chain: DescriptorChain<&M>, mem: &M) {
        if let Some(runs) = self.page_runs(chain, mem, "deflate") {
            let pages = runs.iter().map(|&(_, n)| n).sum();
            self.shared.counters.deflated_pages.add(pages);
        }
    }

    /// A free page report: each descriptor is a free range, discarded now.
    fn report<M: GuestMemory>(&mut self, chain: DescriptorChain<&M>) {
        let c = &self.shared.counters;
        for d in chain {
            let (gpa, len) = (d.addr().0, u64::from(d.len()));
            let aligned = gpa.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE);
            let in_bounds = len > 0 && len <= MAX_REPORT_BYTES && gpa.checked_add(len).is_some();
            let result = if !aligned || !in_bounds {
                Err(Refusal::NotRam)
            } else {
                self.backend.discard(gpa, len)
            };
            match result {
                Ok(()) => c.reported_bytes.add(len),
                Err(why) => {
                    c.refused_report_bytes.add(len);
                    devices::warn_ratelimited!(
                        "virtio-balloon: free page report of {len:#x} bytes at {gpa:#x} not discarded: {why}"
                    );
                }
            }
        }
    }
}

struct Handler {
    shared: Arc<Shared>,
    backend: Arc<dyn BalloonBackend>,
    roles: Vec<Role>,
    /// The statistics timer, lent by the device while it runs.
    timer: Option<TimerFd>,
    /// The statistics buffer the device holds until it wants new figures.
    held: Option<u16>,
    buf: Vec<u8>,
}

impl Handler {
    fn role(&self, index: u16) -> Option<Role> {
        self.roles.get(usize::from(index)).copied()
    }

    /// Takes the driver's statistics buffers: reads each, keeps the last
    /// one (to hand back when new figures are wanted) and returns any
    /// older one at once.
    fn take_stats<M: GuestMemory>(&mut self, aq: &mut ActiveQueue, mem: &M) -> bool {
        let mut returned = false;
        let mut budget = u32::from(aq.queue.size()) * 2;
        loop {
            let _ = aq.queue.disable_notification(mem);
            let budget_before = budget;
            while budget > 0 {
                let Some(chain) =
                    next_chain(&mut aq.queue, mem, "virtio-balloon: statistics queue")
                else {
                    break;
                };
                budget -= 1;
                let head = chain.head_index();
                match read_chain(chain, mem, &mut self.buf, MAX_STATS * STAT_LEN * 4) {
                    Ok(()) => {
                        let stats = GuestMemoryStats::parse(&self.buf);
                        self.shared.counters.stats_updates.inc();
                        *lock(&self.shared.stats) = Some((stats, Instant::now()));
                        let listener = lock(&self.shared.listener).clone();
                        if let Some(l) = listener {
                            l(&stats);
                        }
                    }
                    Err(e) => {
                        self.shared.counters.bad_buffers.inc();
                        devices::warn_ratelimited!(
                            "virtio-balloon: statistics buffer unreadable ({e:?}); kept without figures"
                        );
                    }
                }
                if let Some(old) = self.held.replace(head) {
                    returned |= aq.queue.add_used(mem, old, 0).is_ok();
                }
            }
            match aq.queue.enable_notification(mem) {
                // More published, and this pass could take some: go on.
                Ok(true) if budget > 0 && budget < budget_before => continue,
                Ok(true) if budget > 0 => {
                    // Published but not takeable (a broken avail ring): wait
                    // for the driver's next notification instead of spinning.
                    devices::warn_ratelimited!(
                        "virtio-balloon: statistics queue: the driver published buffers that cannot be taken"
                    );
                    break;
                }
                _ => break,
            }
        }
        returned && aq.queue.needs_notification(mem).unwrap_or(true)
    }

    /// The interval is up: hand the statistics buffer back so the driver
    /// sends fresh figures.
    fn request_stats<M: GuestMemory>(&mut self, queues: &mut [ActiveQueue], mem: &M) -> Vec<u16> {
        let Some(index) = self.roles.iter().position(|r| *r == Role::Stats) else {
            return Vec::new();
        };
        let Some(aq) = queues.iter_mut().find(|q| usize::from(q.index) == index) else {
            return Vec::new();
        };
        let Some(head) = self.held.take() else {
            return Vec::new();
        };
        if aq.queue.add_used(mem, head, 0).is_err() {
            devices::warn_ratelimited!("virtio-balloon: cannot return the statistics buffer");
            return Vec::new();
        }
        if aq.queue.needs_notification(mem).unwrap_or(true) {
            vec![aq.index]
        } else {
            Vec::new()
        }
    }
}

impl QueueHandler for Handler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        let role = self.role(index);
        let Some(aq) = queues.iter_mut().find(|q| q.index == index) else {
            return false;
        };
        let mut r = Requests {
            shared: &self.shared,
            backend: &*self.backend,
            buf: &mut self.buf,
        };
        match role {
            Some(Role::Inflate) => drain(aq, mem, |c| {
                r.inflate(c, mem);
                0
            }),
            Some(Role::Deflate) => drain(aq, mem, |c| {
                r.deflate(c, mem);
                0
            }),
            Some(Role::Reporting) => drain(aq, mem, |c| {
                r.report(c);
                0
            }),
            Some(Role::Stats) => self.take_stats(aq, mem),
            None => false,
        }
    }

    fn extra_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(|t| t.as_raw_fd())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> (Vec<u16>, bool) {
        if let Some(t) = &mut self.timer {
            // Readable: the read returns the expirations without blocking.
            let _ = t.wait();
        }
        (self.request_stats(queues, mem), true)
    }
}

/// Handles what `queues` hold once, as the worker would after a
/// notification of each (in order), then, if `tick`, as when the
/// statistics interval is up; without a thread or a timer (fuzzing,
/// benchmarks). `features` are the negotiated ones. Returns the device's
/// counters.
pub fn process_once<M: GuestMemory>(
    features: u64,
    queues: &mut [ActiveQueue],
    mem: &M,
    backend: Arc<dyn BalloonBackend>,
    tick: bool,
) -> Arc<BalloonCounters> {
    let options = BalloonOptions {
        deflate_on_oom: features & F_DEFLATE_ON_OOM != 0,
        free_page_reporting: features & F_PAGE_REPORTING != 0,
        stats_interval: Duration::ZERO,
    };
    let dev = Balloon {
        shared: Balloon::shared(options),
        backend,
        timer: None,
        queue_sizes: Vec::new(),
        worker: None,
    };
    let mut h = Handler {
        shared: dev.shared.clone(),
        backend: dev.backend.clone(),
        roles: roles(features),
        timer: None,
        held: None,
        buf: Vec::new(),
    };
    let indices: Vec<u16> = queues.iter().map(|q| q.index).collect();
    for index in indices {
        h.process_queue(index, queues, mem);
    }
    if tick {
        h.request_stats(queues, mem);
    }
    dev.shared.counters.clone()
}

/// The balloon device.
pub struct Balloon {
    shared: Arc<Shared>,
    backend: Arc<dyn BalloonBackend>,
    /// The statistics timer (with the worker while it runs).
    timer: Option<TimerFd>,
    queue_sizes: Vec<u16>,
    worker: Option<Worker<Handler>>,
}

impl Balloon {
    /// A balloon asking for `target` bytes at start, set up by `options`,
    /// returning memory through `backend`. The statistics timer starts
    /// now (it runs while the VM exists; the device reads it only when
    /// active).
    pub fn new(
        options: BalloonOptions,
        target: u64,
        backend: Arc<dyn BalloonBackend>,
    ) -> std::io::Result<Self> {
        let timer = if !options.stats_interval.is_zero() {
            let mut t = TimerFd::new()?;
            let every = options.stats_interval;
            t.reset(every, Some(every))?;
            Some(t)
        } else {
            None
        };
        let queues = roles(Self::offered(&options)).len();
        let dev = Self {
            shared: Self::shared(options),
            backend,
            timer,
            queue_sizes: vec![QUEUE_SIZE; queues],
            worker: None,
        };
        dev.handle()
            .set_target(target)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(dev)
    }

    fn shared(options: BalloonOptions) -> Arc<Shared> {
        Arc::new(Shared {
            options,
            sizes: Mutex::new(Sizes::default()),
            stats: Mutex::new(None),
            counters: Arc::default(),
            interrupt: Mutex::new(None),
            active: AtomicBool::new(false),
            held_stats: Mutex::new(None),
            listener: Mutex::new(None),
        })
    }

    fn offered(o: &BalloonOptions) -> u64 {
        let mut f = features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC;
        if !o.stats_interval.is_zero() {
            f |= F_STATS_VQ;
        }
        if o.deflate_on_oom {
            f |= F_DEFLATE_ON_OOM;
        }
        if o.free_page_reporting {
            f |= F_PAGE_REPORTING;
        }
        f
    }

    /// The VMM's handle.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(self.shared.clone())
    }

    fn stop(&mut self) -> Vec<ActiveQueue> {
        let Some(stopped) = self.worker.take().and_then(Worker::stop) else {
            return Vec::new();
        };
        *lock(&self.shared.held_stats) = stopped.handler.held;
        if stopped.handler.timer.is_some() {
            self.timer = stopped.handler.timer;
        }
        stopped.queues
    }
}

impl VirtioDeviceCommon for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        Self::offered(&self.shared.options)
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = lock(&self.shared.sizes);
        let mut config = [0u8; CONFIG_LEN];
        config[0..4].copy_from_slice(&s.num_pages.to_le_bytes());
        config[4..8].copy_from_slice(&s.actual.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    /// The driver writes `actual` (whole or in part); the rest is read-only.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if offset < 4 || end > 8 {
            devices::warn_ratelimited!(
                "virtio-balloon: driver write of {} byte(s) at config offset {offset} ignored (only actual is writable)",
                data.len()
            );
            return;
        }
        let mut s = lock(&self.shared.sizes);
        let mut actual = s.actual.to_le_bytes();
        let at = (offset - 4) as usize;
        actual[at..at + data.len()].copy_from_slice(data);
        s.actual = u32::from_le_bytes(actual);
    }

    fn config_generation(&self) -> u32 {
        lock(&self.shared.sizes).generation
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        self.stop()
    }

    fn save_state(&self) -> DeviceState {
        let s = lock(&self.shared.sizes);
        DeviceState::Balloon(BalloonSavedState {
            version: 1,
            num_pages: s.num_pages,
            actual: s.actual,
            held_stats: *lock(&self.shared.held_stats),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        let DeviceState::Balloon(saved) = state else {
            return Err(format!("not a virtio-balloon state: {state:?}"));
        };
        if saved.version != 1 {
            return Err(format!(
                "virtio-balloon state version {} (this Caravel reads 1)",
                saved.version
            ));
        }
        {
            let mut s = lock(&self.shared.sizes);
            s.num_pages = saved.num_pages;
            s.actual = saved.actual;
        }
        let held = saved
            .held_stats
            .filter(|_| !self.shared.options.stats_interval.is_zero());
        *lock(&self.shared.held_stats) = held;
        Ok(())
    }

    /// A reset empties the balloon (the guest starts over with all of its
    /// memory); the host's target stays.
    fn reset(&mut self) {
        drop(self.stop());
        *lock(&self.shared.held_stats) = None;
        lock(&self.shared.sizes).actual = 0;
        self.shared.active.store(false, Ordering::Release);
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Balloon {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        features: u64,
    ) -> Result<(), ActivateError> {
        let roles = roles(features & self.features());
        for i in 0..2u16 {
            if !queues.iter().any(|q| q.index == i) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        if let Some(q) = queues.iter().find(|q| usize::from(q.index) >= roles.len()) {
            return Err(ActivateError::BadQueue(q.index));
        }
        let handler = Handler {
            shared: self.shared.clone(),
            backend: self.backend.clone(),
            timer: if roles.contains(&Role::Stats) {
                self.timer.take()
            } else {
                None
            },
            roles,
            held: lock(&self.shared.held_stats).take(),
            buf: Vec::new(),
        };
        let w = Worker::spawn("virtio-balloon", handler, queues, mem, interrupt)
            .map_err(|e| ActivateError::Start(e.to_string()))?;
        self.worker = Some(w);
        self.shared.active.store(true, Ordering::Release);
        Ok(())
    }
}
