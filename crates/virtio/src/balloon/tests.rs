//! virtio-balloon over hand-laid rings: inflate/deflate with refusals,
//! malformed buffers, free page reports, the statistics buffer's round
//! trip, configuration space, queue roles, and saved state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::test_util::{activate_on_rings, mem_of, Ring};

/// Records discards; refuses anything at or above `refuse_from`.
#[derive(Default)]
struct Recorder {
    discarded: Mutex<Vec<(u64, u64)>>,
    refuse_from: u64,
}

impl BalloonBackend for Recorder {
    fn discard(&self, gpa: u64, len: u64) -> Result<(), Refusal> {
        if gpa + len > self.refuse_from {
            return Err(Refusal::Unplugged);
        }
        self.discarded.lock().unwrap().push((gpa, len));
        Ok(())
    }
}

struct Rig {
    m: GuestMemoryMmap,
    rings: Vec<Ring>,
    notify: Vec<vmm_sys_util::eventfd::EventFd>,
    dev: Balloon,
    backend: Arc<Recorder>,
}

const DATA: u64 = 0x8_0000;
/// The test backend refuses pages from here up.
const REFUSED: u64 = 1 << 36;

impl Rig {
    /// A balloon with `options`, the driver acking everything offered
    /// except `withheld`.
    fn new(options: BalloonOptions, withheld: u64) -> Self {
        let m = mem_of(0x10_0000);
        let backend = Arc::new(Recorder {
            refuse_from: REFUSED,
            ..Default::default()
        });
        let mut dev = Balloon::new(options, 0, backend.clone()).unwrap();
        let acked = dev.features() & !withheld;
        let rings: Vec<Ring> = (0..roles(acked).len() as u64)
            .map(|i| Ring::new(0x1_0000 * (i + 1), 16))
            .collect();
        let notify = activate_on_rings(&mut dev, &m, &rings, acked);
        Self {
            m,
            rings,
            notify,
            dev,
            backend,
        }
    }

    /// Posts `bytes` as one driver-readable buffer on queue `q`.
    fn post(&mut self, q: usize, bytes: &[u8], writable: bool) {
        let at = DATA + 0x1000 * q as u64;
        self.m.write_slice(bytes, GuestAddress(at)).unwrap();
        self.rings[q].post(&self.m, &[(at, bytes.len() as u32, writable)]);
        self.notify[q].write(1).unwrap();
    }

    fn wait_used(&self, q: usize, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.rings[q].used_idx(&self.m) < want {
            assert!(Instant::now() < deadline, "queue {q} never used {want}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn discarded(&self) -> Vec<(u64, u64)> {
        self.backend.discarded.lock().unwrap().clone()
    }
}

fn pfns(p: &[u32]) -> Vec<u8> {
    p.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn stats_buf(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|&(t, v)| {
            let mut e = t.to_le_bytes().to_vec();
            e.extend_from_slice(&v.to_le_bytes());
            e
        })
        .collect()
}

const ALL: BalloonOptions = BalloonOptions {
    deflate_on_oom: true,
    free_page_reporting: true,
    stats_interval: Duration::from_millis(30),
};

#[test]
fn inflated_pages_are_discarded_in_runs_and_refused_ones_are_kept() {
    let mut r = Rig::new(BalloonOptions::default(), 0);
    // 0x4000..0x4002 is one run; the page at REFUSED is refused.
    r.post(
        0,
        &pfns(&[0x4001, 0x4000, 0x4002, 0x9000, (REFUSED / 4096) as u32]),
        false,
    );
    r.wait_used(0, 1);
    assert_eq!(
        r.discarded(),
        vec![(0x400_0000, 3 * 4096), (0x900_0000, 4096)]
    );
    let c = r.dev.handle().counters();
    assert_eq!(c.inflated_pages.get(), 5);
    assert_eq!(c.refused_pages.get(), 1);
    r.post(1, &pfns(&[0x4000, 0x4001]), false);
    r.wait_used(1, 1);
    assert_eq!(c.deflated_pages.get(), 2);
    assert_eq!(r.discarded().len(), 2, "deflating discards nothing");
}

#[test]
fn malformed_buffers_are_dropped_and_the_device_goes_on() {
    let mut r = Rig::new(BalloonOptions::default(), 0);
    r.post(0, &[1, 2, 3, 4, 5], false); // not whole page numbers
    r.post(0, &pfns(&[0x10]), true); // device-writable
    r.post(0, &vec![0u8; (MAX_PFNS_PER_BUFFER + 1) * 4], false); // too many
    r.post(0, &pfns(&[0x20]), false);
    r.wait_used(0, 4);
    assert_eq!(r.dev.handle().counters().bad_buffers.get(), 3);
    assert_eq!(r.discarded(), vec![(0x2_0000, 4096)]);
    // A buffer outside guest memory is survived too.
    r.rings[0].post(&r.m, &[(0xffff_0000_0000, 8, false)]);
    r.notify[0].write(1).unwrap();
    r.wait_used(0, 5);
    assert_eq!(r.dev.handle().counters().bad_buffers.get(), 4);
}

#[test]
fn free_page_reports_are_discarded_when_aligned_and_in_bounds() {
    let mut r = Rig::new(ALL, 0);
    let q = 3; // inflate, deflate, stats, reporting
    let m = r.m.clone();
    r.rings[q].post(
        &m,
        &[
            (0x20_0000, 0x20_0000, true),
            (0x60_0000, 0x40_0000, true),
            (0x80_0001, 0x1000, true), // misaligned
            (REFUSED, 0x1000, true),   // refused by the backend
        ],
    );
    r.notify[q].write(1).unwrap();
    r.wait_used(q, 1);
    assert_eq!(
        r.discarded(),
        vec![(0x20_0000, 0x20_0000), (0x60_0000, 0x40_0000)]
    );
    let c = r.dev.handle().counters();
    assert_eq!(c.reported_bytes.get(), 0x60_0000);
    assert_eq!(c.refused_report_bytes.get(), 0x2000);
}

#[test]
fn without_statistics_the_reporting_queue_is_the_third() {
    let mut r = Rig::new(ALL, F_STATS_VQ);
    assert_eq!(r.rings.len(), 3);
    let m = r.m.clone();
    r.rings[2].post(&m, &[(0x20_0000, 0x20_0000, true)]);
    r.notify[2].write(1).unwrap();
    r.wait_used(2, 1);
    assert_eq!(r.discarded(), vec![(0x20_0000, 0x20_0000)]);
    assert_eq!(r.dev.handle().counters().stats_updates.get(), 0);
}

#[test]
fn the_statistics_buffer_is_held_and_returned_at_each_interval() {
    let mut r = Rig::new(ALL, 0);
    let h = r.dev.handle();
    assert!(h.stats().is_none());
    r.post(2, &stats_buf(&[(5, 1 << 30), (6, 600 << 20)]), false);
    // Returned at the next tick (30 ms), not at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stats().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let (s, _) = h.stats().unwrap();
    assert_eq!(s.total_memory, Some(1 << 30));
    assert_eq!(s.available_memory, Some(600 << 20));
    r.wait_used(2, 1);
    // The driver answers with fresh figures; the listener hears them.
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h2 = heard.clone();
    h.set_stats_listener(Box::new(move |s| {
        h2.lock().unwrap().push(s.available_memory)
    }));
    r.post(2, &stats_buf(&[(6, 500 << 20)]), false);
    r.wait_used(2, 2);
    assert_eq!(h.stats().unwrap().0.available_memory, Some(500 << 20));
    assert_eq!(*heard.lock().unwrap(), vec![Some(500 << 20)]);
    assert_eq!(h.counters().stats_updates.get(), 2);
}

#[test]
fn pause_keeps_the_held_statistics_buffer_in_the_saved_state() {
    let opts = BalloonOptions {
        stats_interval: Duration::from_secs(3600),
        ..ALL
    };
    let mut r = Rig::new(opts, 0);
    r.post(2, &stats_buf(&[(6, 1)]), false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.dev.handle().stats().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    r.dev.handle().set_target(8 << 20).unwrap();
    r.dev.write_config(4, &7u32.to_le_bytes());
    let queues = r.dev.pause();
    assert_eq!(queues.len(), 4);
    let DeviceState::Balloon(saved) = r.dev.save_state() else {
        panic!("not a balloon state");
    };
    assert_eq!(
        saved,
        BalloonSavedState {
            version: 1,
            num_pages: 2048,
            actual: 7,
            held_stats: Some(0)
        }
    );
    let mut fresh = Balloon::new(opts, 0, Arc::new(Recorder::default())).unwrap();
    fresh.restore_state(&DeviceState::Balloon(saved)).unwrap();
    assert_eq!(fresh.save_state(), DeviceState::Balloon(saved));
    let bad = BalloonSavedState {
        version: 2,
        ..saved
    };
    assert!(fresh.restore_state(&DeviceState::Balloon(bad)).is_err());
    assert!(fresh.restore_state(&DeviceState::Stateless).is_err());
}

struct ConfigSignals(Mutex<u32>);
impl VirtioInterrupt for ConfigSignals {
    fn notify_queue(&self, _: u16) {}
    fn notify_config(&self) {
        *self.0.lock().unwrap() += 1;
    }
}

#[test]
fn configuration_space_sizes_and_the_writable_actual() {
    let mut dev = Balloon::new(
        BalloonOptions::default(),
        4 << 20,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let h = dev.handle();
    let sig = Arc::new(ConfigSignals(Mutex::new(0)));
    h.set_interrupt(sig.clone());
    let read32 = |dev: &Balloon, at: u64| {
        let mut b = [0u8; 4];
        dev.read_config(at, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(read32(&dev, 0), 1024);
    let gen = dev.config_generation();
    h.set_target(256 << 20).unwrap();
    assert_eq!(read32(&dev, 0), 65536);
    assert_ne!(dev.config_generation(), gen);
    assert_eq!(*sig.0.lock().unwrap(), 1);
    h.set_target(256 << 20).unwrap();
    assert_eq!(*sig.0.lock().unwrap(), 1, "no change, no interrupt");
    assert!(h.set_target(1 << 45).is_err());
    // The driver writes actual, even byte by byte; num_pages is read-only.
    dev.write_config(4, &0x0102_0304u32.to_le_bytes());
    dev.write_config(7, &[9]);
    assert_eq!(read32(&dev, 4), 0x0902_0304);
    dev.write_config(0, &5u32.to_le_bytes());
    dev.write_config(6, &[0, 0, 0, 0]);
    assert_eq!(read32(&dev, 0), 65536);
    assert_eq!(read32(&dev, 4), 0x0902_0304);
    assert_eq!(h.info().actual, 0x0902_0304 * 4096);
    // Past the end reads as zero.
    assert_eq!(read32(&dev, 12), 0);
    assert_eq!(read32(&dev, 64), 0);
    // A reset empties the balloon but keeps the target.
    dev.reset();
    assert_eq!(h.info().actual, 0);
    assert_eq!(h.info().target, 256 << 20);
}

#[test]
fn features_follow_the_options() {
    let none = Balloon::new(BalloonOptions::default(), 0, Arc::new(Recorder::default())).unwrap();
    assert_eq!(
        none.features() & (F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_REPORTING),
        0
    );
    assert_eq!(none.queue_max_sizes().len(), 2);
    let all = Balloon::new(ALL, 0, Arc::new(Recorder::default())).unwrap();
    assert_eq!(
        all.features() & (F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_REPORTING | F_MUST_TELL_HOST),
        F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_REPORTING
    );
    assert_eq!(all.queue_max_sizes().len(), 4);
}

#[test]
fn a_broken_statistics_ring_does_not_make_the_device_spin() {
    use vm_memory::Bytes;
    let m = mem_of(0x10_0000);
    let rings: Vec<Ring> = (0..3u64)
        .map(|i| Ring::new(0x1_0000 * (i + 1), 16))
        .collect();
    // The driver claims 100 buffers on a ring of 16: none can be taken.
    m.write_obj(100u16, GuestAddress(rings[2].avail + 2))
        .unwrap();
    let mut queues: Vec<ActiveQueue> = rings
        .iter()
        .enumerate()
        .map(|(i, r)| ActiveQueue {
            index: i as u16,
            queue: r.queue(),
            notify: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        process_once(
            features::VERSION_1 | F_STATS_VQ,
            &mut queues,
            &m,
            Arc::new(Recorder::default()),
            true,
        );
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the statistics queue spun on a broken avail ring"
    );
}
