//! virtio-net: receive placement, transmit gathering, the control queue
//! and a device driven end to end over a socket-pair TAP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::rx::{place_frame, Placement, Receiver};
use super::tx::{gather, BadFrame};
use super::*;
use crate::test_util::Ring;

fn mem() -> GuestMemoryMmap {
    crate::test_util::mem()
}

/// A frame: the header (zeroes) then `len - HDR_LEN` bytes counting up.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    for (i, b) in f[HDR_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn a_frame_fills_one_chain_and_says_one_buffer() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    let head = ring.post(&m, &[(0x1_0000, 100, true), (0x2_0000, 2000, true)]);
    let mut q = ring.queue();
    let mut f = frame(500);
    let c = NetCounters::default();
    assert_eq!(
        place_frame(&mut q, &m, &mut f, false, &c),
        Placement::Delivered
    );
    assert_eq!(ring.used_idx(&m), 1);
    assert_eq!(ring.used(&m, 0), (u32::from(head), 500));
    let mut got = read(&m, 0x1_0000, 100);
    got.extend(read(&m, 0x2_0000, 400));
    assert_eq!(&got[10..12], &[1, 0], "num_buffers = 1");
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
}

#[test]
fn mergeable_buffers_take_as_many_chains_as_the_frame_needs() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    for i in 0..4u64 {
        ring.post(&m, &[(0x1_0000 + i * 0x1000, 1000, true)]);
    }
    let mut q = ring.queue();
    let mut f = frame(2500);
    let c = NetCounters::default();
    assert_eq!(
        place_frame(&mut q, &m, &mut f, true, &c),
        Placement::Delivered
    );
    assert_eq!(ring.used_idx(&m), 3, "three chains for 2500 bytes");
    assert_eq!(ring.used(&m, 0).1, 1000);
    assert_eq!(ring.used(&m, 1).1, 1000);
    assert_eq!(ring.used(&m, 2).1, 500);
    let mut got = read(&m, 0x1_0000, 1000);
    got.extend(read(&m, 0x1_1000, 1000));
    got.extend(read(&m, 0x1_2000, 500));
    assert_eq!(&got[10..12], &[3, 0], "num_buffers = 3");
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    assert_eq!(q.next_avail(), 3, "the fourth chain is left for later");
}

#[test]
fn without_room_nothing_is_consumed_and_the_frame_waits() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    ring.post(&m, &[(0x1_0000, 1000, true)]);
    let mut q = ring.queue();
    let c = NetCounters::default();
    // Mergeable: two chains needed, one posted.
    let mut f = frame(1500);
    assert_eq!(
        place_frame(&mut q, &m, &mut f, true, &c),
        Placement::NoBuffers
    );
    assert_eq!(q.next_avail(), 0, "the posted chain was not consumed");
    assert_eq!(ring.used_idx(&m), 0);
    ring.post(&m, &[(0x2_0000, 1000, true)]);
    assert_eq!(
        place_frame(&mut q, &m, &mut f, true, &c),
        Placement::Delivered
    );
    assert_eq!(ring.used_idx(&m), 2);
}

#[test]
fn a_frame_larger_than_a_chain_is_dropped_without_mergeable_buffers() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    ring.post(&m, &[(0x1_0000, 1000, true)]);
    let mut q = ring.queue();
    let c = NetCounters::default();
    assert_eq!(
        place_frame(&mut q, &m, &mut frame(1500), false, &c),
        Placement::Dropped
    );
    assert_eq!(q.next_avail(), 0, "the chain stays for a frame that fits");
    assert_eq!(
        place_frame(&mut q, &m, &mut frame(600), false, &c),
        Placement::Delivered
    );
    assert_eq!(ring.used(&m, 0).1, 600);
}

#[test]
fn malformed_receive_chains_are_returned_empty() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    // Device-readable, then too short for the header, then a good one.
    let bad1 = ring.post(&m, &[(0x1_0000, 1000, false)]);
    let bad2 = ring.post(&m, &[(0x1_1000, 4, true)]);
    let good = ring.post(&m, &[(0x1_2000, 1000, true)]);
    let mut q = ring.queue();
    let c = NetCounters::default();
    assert_eq!(
        place_frame(&mut q, &m, &mut frame(100), false, &c),
        Placement::Delivered
    );
    assert_eq!(ring.used(&m, 0), (u32::from(bad1), 0));
    assert_eq!(ring.used(&m, 1), (u32::from(bad2), 0));
    assert_eq!(ring.used(&m, 2), (u32::from(good), 100));
    assert_eq!(c.bad_chains.get(), 2);
}

#[test]
fn a_receive_buffer_outside_memory_is_survived() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    ring.post(&m, &[(0xffff_0000_0000, 1000, true)]);
    let mut q = ring.queue();
    let c = NetCounters::default();
    place_frame(&mut q, &m, &mut frame(100), false, &c);
    assert_eq!(ring.used(&m, 0).1, 0, "nothing was written");
    assert_eq!(c.bad_chains.get(), 1);
}

#[test]
fn the_receiver_keeps_one_frame_until_buffers_come_and_then_stops_reading() {
    let m = mem();
    let mut ring = Ring::new(0x8_0000, 16);
    let mut q = ring.queue();
    let (mut tap, mut host) = SocketTap::pair().unwrap();
    for len in [100usize, 200, 300] {
        host.write_all(&frame(len)).unwrap();
    }
    let c = NetCounters::default();
    let mut r = Receiver::new(false);
    let (notify, keep) = r.receive(&mut q, &m, &mut tap, &c);
    assert!(!notify && !keep, "no buffers: stop polling the TAP");
    assert!(r.has_pending(), "one frame read and kept");
    ring.post(&m, &[(0x1_0000, 2000, true)]);
    ring.post(&m, &[(0x1_1000, 2000, true)]);
    let (notify, keep) = r.receive(&mut q, &m, &mut tap, &c);
    assert!(notify);
    assert!(!keep, "two buffers for three frames: stop again");
    assert_eq!(ring.used(&m, 0).1, 100, "the kept frame first");
    assert_eq!(ring.used(&m, 1).1, 200);
    ring.post(&m, &[(0x1_2000, 2000, true)]);
    let (_, keep) = r.receive(&mut q, &m, &mut tap, &c);
    assert!(keep, "the TAP is empty: keep polling it");
    assert_eq!(ring.used(&m, 2).1, 300);
    assert_eq!(c.rx_frames.get(), 3);
    assert_eq!(c.rx_bytes.get(), (100 + 200 + 300 - 3 * HDR_LEN) as u64);
    assert!(!r.has_pending());
}

#[test]
fn transmit_chains_that_are_not_frames_are_refused() {
    let m = mem();
    let mut buf = Vec::new();
    let mut ring = Ring::new(0x8_0000, 16);
    ring.post(&m, &[(0x1_0000, 20, false), (0x1_1000, 20, true)]);
    ring.post(&m, &[(0x1_0000, 8, false)]);
    ring.post(&m, &[(0x1_0000, 60_000, false), (0x1_0000, 60_000, false)]);
    ring.post(&m, &[(0xffff_0000_0000, 100, false)]);
    ring.post(&m, &[(0x1_0000, 4, false), (0x1_1000, 96, false)]);
    let mut q = ring.queue();
    let mut next = || q.pop_descriptor_chain(&m).unwrap();
    assert_eq!(gather(next(), &m, &mut buf), Err(BadFrame::Writable));
    assert_eq!(gather(next(), &m, &mut buf), Err(BadFrame::Short));
    assert_eq!(gather(next(), &m, &mut buf), Err(BadFrame::TooLong));
    assert_eq!(gather(next(), &m, &mut buf), Err(BadFrame::NotMemory));
    assert_eq!(gather(next(), &m, &mut buf), Ok(()));
    assert_eq!(buf.len(), 100, "a header split over descriptors is fine");
}

#[test]
fn receive_offloads_map_to_tap_flags() {
    use features as f;
    assert_eq!(guest_offloads_to_tun(f::GUEST_TSO4), 0, "TSO needs CSUM");
    assert_eq!(guest_offloads_to_tun(f::GUEST_CSUM), tun_flags::CSUM);
    assert_eq!(
        guest_offloads_to_tun(GUEST_OFFLOAD_BITS),
        tun_flags::CSUM | tun_flags::TSO4 | tun_flags::TSO6 | tun_flags::TSO_ECN | tun_flags::UFO
    );
}

/// A device with `pairs` socket TAPs, activated over hand-laid rings
/// (receive and transmit of every pair, then control).
struct Rig {
    m: GuestMemoryMmap,
    rings: Vec<Ring>,
    notify: Vec<EventFd>,
    hosts: Vec<UnixStream>,
    net: Net,
    taps: Vec<Arc<SocketTapProbe>>,
}

/// Shares a socket TAP's recorded offloads with the test.
struct SocketTapProbe(SocketTap);
impl TapQueue for Arc<SocketTapProbe> {
    fn fd(&self) -> std::os::fd::RawFd {
        self.0.fd()
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::fd_io::read_fd(self.0.fd(), buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        crate::fd_io::write_fd(self.0.fd(), frame)
    }
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.0.set_offload(flags)
    }
}

impl Rig {
    fn new(pairs: u16, acked: u64) -> Self {
        let m = crate::test_util::mem_of(0x40_0000);
        let mut taps = Vec::new();
        let mut hosts = Vec::new();
        let mut boxed: Vec<Box<dyn TapQueue>> = Vec::new();
        for _ in 0..pairs {
            let (t, h) = SocketTap::pair().unwrap();
            let t = Arc::new(SocketTapProbe(t));
            taps.push(t.clone());
            boxed.push(Box::new(t));
            hosts.push(h);
        }
        let options = NetOptions {
            mac: [2, 0, 0, 0, 0, 1],
            queue_size: 16,
            ufo: false,
        };
        let mut net = Net::new(options, boxed).unwrap();
        let count = 2 * pairs + 1;
        let rings: Vec<Ring> = (0..count)
            .map(|i| Ring::new(0x10_0000 + u64::from(i) * 0x1_0000, 16))
            .collect();
        let notify = crate::test_util::activate_on_rings(&mut net, &m, &rings, acked);
        Self {
            m,
            rings,
            notify,
            hosts,
            net,
            taps,
        }
    }

    fn kick(&self, queue: usize) {
        self.notify[queue].write(1).unwrap();
    }

    fn wait_used(&self, queue: usize, count: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.rings[queue].used_idx(&self.m) < count {
            assert!(Instant::now() < deadline, "queue {queue}: no used buffer");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn acked_all(pairs: u16) -> u64 {
    let mut acked = crate::features::VERSION_1
        | features::CTRL_VQ
        | features::CTRL_GUEST_OFFLOADS
        | features::GUEST_CSUM
        | features::GUEST_TSO4;
    if pairs > 1 {
        acked |= features::MQ;
    }
    acked
}

#[test]
fn frames_travel_both_ways_through_a_running_device() {
    let mut rig = Rig::new(1, acked_all(1));
    assert_eq!(
        rig.taps[0].0.offload(),
        tun_flags::CSUM | tun_flags::TSO4,
        "activation told the TAP what the driver accepted"
    );
    // Transmit.
    let f = frame(300);
    rig.m.write_slice(&f, GuestAddress(0x5_0000)).unwrap();
    rig.rings[1].post(&rig.m, &[(0x5_0000, 300, false)]);
    rig.kick(1);
    let mut got = vec![0u8; 2000];
    let n = rig.hosts[0].read(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    rig.wait_used(1, 1);
    // Receive.
    rig.rings[0].post(&rig.m, &[(0x6_0000, 2000, true)]);
    rig.kick(0);
    rig.hosts[0].write_all(&frame(700)).unwrap();
    rig.wait_used(0, 1);
    assert_eq!(rig.rings[0].used(&rig.m, 0).1, 700);
    let c = rig.net.counters();
    assert_eq!((c.tx_frames.get(), c.rx_frames.get()), (1, 1));
    // Pause hands back every queue with its position, and the TAP.
    let queues = rig.net.pause();
    assert_eq!(queues.len(), 3);
    assert_eq!(queues[0].queue.next_used(), 1);
    assert!(rig.net.taps.iter().all(Option::is_some));
}

#[test]
fn the_control_queue_answers_pairs_and_offloads() {
    let mut rig = Rig::new(2, acked_all(2));
    let ctrl = 4;
    let ask = |rig: &mut Rig, cmd: &[u8], n: u16| -> u8 {
        let at = 0x7_0000 + u64::from(n) * 0x100;
        rig.m.write_slice(cmd, GuestAddress(at)).unwrap();
        rig.rings[ctrl].post(
            &rig.m,
            &[(at, cmd.len() as u32, false), (at + 0x80, 1, true)],
        );
        rig.kick(ctrl);
        rig.wait_used(ctrl, n + 1);
        rig.m.read_obj(GuestAddress(at + 0x80)).unwrap()
    };
    assert_eq!(ask(&mut rig, &[4, 0, 2, 0], 0), 0, "2 pairs: OK");
    assert_eq!(ask(&mut rig, &[4, 0, 3, 0], 1), 1, "3 pairs: ERR");
    assert_eq!(ask(&mut rig, &[4, 0, 0, 0], 2), 1, "0 pairs: ERR");
    let csum_only = features::GUEST_CSUM.to_le_bytes();
    let mut cmd = vec![5, 0];
    cmd.extend_from_slice(&csum_only);
    assert_eq!(ask(&mut rig, &cmd, 3), 0, "checksum only: OK");
    assert_eq!(rig.taps[0].0.offload(), tun_flags::CSUM);
    let mut cmd = vec![5, 0];
    cmd.extend_from_slice(&features::GUEST_UFO.to_le_bytes());
    assert_eq!(ask(&mut rig, &cmd, 4), 1, "UFO was not negotiated: ERR");
    assert_eq!(ask(&mut rig, &[1, 1, 2, 0, 0, 0, 0, 1], 5), 1, "MAC: ERR");
    assert_eq!(ask(&mut rig, &[0, 0, 1], 6), 0, "promiscuous: OK");
    assert_eq!(ask(&mut rig, &[9], 7), 1, "no header: ERR");
    drop(rig.net.pause());
    match rig.net.save_state() {
        DeviceState::Net(s) => assert_eq!(s.guest_offloads, features::GUEST_CSUM),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_second_pair_has_its_own_tap() {
    let rig = Rig::new(2, acked_all(2));
    let f = frame(64);
    rig.m.write_slice(&f, GuestAddress(0x5_0000)).unwrap();
    let mut rings = rig.rings;
    rings[3].post(&rig.m, &[(0x5_0000, 64, false)]);
    rig.notify[3].write(1).unwrap();
    let mut got = vec![0u8; 200];
    let mut host1 = rig.hosts[1].try_clone().unwrap();
    assert_eq!(host1.read(&mut got).unwrap(), 64);
}

/// CPU time of this process's threads named `name` (other tests run
/// workers of the same name, mostly asleep), in clock ticks.
fn thread_ticks(name: &str) -> u64 {
    let mut ticks = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        if comm.trim() == name {
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split(' ').collect();
            ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    ticks
}

#[test]
fn a_driver_that_posts_no_receive_buffers_does_not_make_the_worker_spin() {
    let rig = Rig::new(1, acked_all(1));
    for _ in 0..50 {
        rig.hosts[0]
            .try_clone()
            .unwrap()
            .write_all(&frame(100))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_ticks("virtio-net-qp0");
    std::thread::sleep(Duration::from_millis(500));
    let spent = thread_ticks("virtio-net-qp0").saturating_sub(before);
    // A spinning worker would take about 50 ticks of 10 ms.
    assert!(spent <= 5, "the worker used {spent} ticks while idle");
}

#[test]
fn the_configuration_space_has_the_mac_link_and_pairs() {
    let rig = Rig::new(2, acked_all(2));
    let mut c = [0u8; 12];
    rig.net.read_config(0, &mut c);
    assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(&c[6..8], &[1, 0], "link up");
    assert_eq!(&c[8..10], &[2, 0], "two pairs");
    let mut tail = [0xffu8; 4];
    rig.net.read_config(10, &mut tail);
    assert_eq!(tail, [0; 4], "past the end reads as zero");
    assert_ne!(VirtioDeviceCommon::features(&rig.net) & features::MQ, 0);
}

/// A frame sent straight from guest memory (descriptors across two memory
/// regions), and one of more descriptors than a writev takes (copied),
/// arrive whole.
#[test]
fn transmit_writes_frames_from_guest_memory_whole() {
    let m: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x8_0000),
        (GuestAddress(0x8_0000), 0x8_0000),
    ])
    .unwrap();
    let (mut tap, mut host) = SocketTap::pair().unwrap();
    let c = NetCounters::default();
    let mut buf = Vec::new();
    let f = frame(0x300);
    // Across the regions' boundary.
    m.write_slice(&f, GuestAddress(0x7_ff00)).unwrap();
    let mut ring = Ring::new(0xa_0000, 128);
    ring.post(&m, &[(0x7_ff00, 0x100, false), (0x8_0000, 0x200, false)]);
    // 100 descriptors of 3 bytes: more than one writev takes.
    let g = frame(300);
    m.write_slice(&g, GuestAddress(0x4_0000)).unwrap();
    let many: Vec<(u64, u32, bool)> = (0..100).map(|i| (0x4_0000 + 3 * i, 3, false)).collect();
    ring.post(&m, &many);
    let mut q = ring.queue();
    for want in [&f, &g] {
        let chain = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(super::tx::transmit(chain, &m, &mut buf, &mut tap, &c), 0);
        let mut got = vec![0u8; 4096];
        let n = host.read(&mut got).unwrap();
        assert_eq!(&got[..n], &want[..]);
    }
    assert_eq!(c.tx_frames.get(), 2);
    assert_eq!(c.tx_bytes.get(), (0x300 + 300 - 2 * HDR_LEN) as u64);
}

/// A receive ring whose avail index is more than a ring ahead: the
/// receiver stops polling the TAP instead of spinning on "more available".
#[test]
fn a_broken_receive_ring_stops_the_tap_polling() {
    let m = mem();
    let ring = Ring::new(0x8_0000, 16);
    m.write_obj(48u16, GuestAddress(ring.avail + 2)).unwrap();
    let mut q = ring.queue();
    let (mut tap, mut host) = SocketTap::pair().unwrap();
    host.write_all(&frame(100)).unwrap();
    let c = NetCounters::default();
    let mut r = Receiver::new(true);
    let (notify, keep) = r.receive(&mut q, &m, &mut tap, &c);
    assert!(!notify && !keep);
}
