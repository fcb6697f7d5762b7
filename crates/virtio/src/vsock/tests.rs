//! virtio-vsock: the muxer's packet state machine against real host Unix
//! sockets (connect both ways, data, credit, half-close, RST, a peer that
//! never reads), and the device over hand-laid rings (transport reset).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{op, shutdown, TYPE_STREAM};
use super::*;
use crate::test_util::Ring;

const CID: u64 = 3;

/// A muxer on a fresh socket path in a directory of its own.
struct Host {
    dir: PathBuf,
    path: PathBuf,
    mux: Muxer,
}

impl Host {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crv-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mux = Muxer::new(CID, &path, listener).unwrap();
        Self { dir, path, mux }
    }

    /// Lets the muxer see what the host sockets have (a few rounds: one
    /// event may lead to another).
    fn pump(&mut self) {
        for _ in 0..4 {
            self.mux.process_host_events();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every packet ready for the guest, with receive buffers of `room`
    /// data bytes.
    fn packets(&mut self, room: usize) -> Vec<(Header, Vec<u8>)> {
        self.pump();
        let mut out = Vec::new();
        let mut buf = vec![0u8; room];
        while let Some((h, n)) = self.mux.next_rx(&mut buf) {
            assert_eq!(h.len as usize, n);
            out.push((h, buf[..n].to_vec()));
            assert!(out.len() < 10_000, "endless packets");
        }
        out
    }

    /// A host program's connection to guest `port`, after its `CONNECT`
    /// line (and `extra` bytes); returns it and the REQUEST sent to the
    /// guest.
    fn host_connect(&mut self, port: u32, extra: &[u8]) -> (UnixStream, Header) {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s.write_all(extra).unwrap();
        let p = self.packets(4096);
        assert_eq!(p.len(), 1, "{p:?}");
        let req = p[0].0;
        assert_eq!(req.op, op::REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
        assert_eq!(req.dst_port, port);
        assert!(req.src_port >= 1 << 30);
        (s, req)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A guest packet on the connection `(guest port, host port)`.
fn guest(op: u16, ports: (u32, u32), buf_alloc: u32, fwd_cnt: u32, len: usize) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: ports.0,
        dst_port: ports.1,
        len: len as u32,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

fn read_some(s: &mut UnixStream, want: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = vec![0u8; want];
    s.read_exact(&mut got).unwrap();
    got
}

/// Whether the peer closed `s` (end of file, or a reset when it dropped
/// unread bytes).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    match s.read(&mut [0u8; 8]) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn a_host_connection_reaches_the_guest_and_data_flows_both_ways() {
    let mut h = Host::new();
    let (mut s, req) = h.host_connect(1234, b"early");
    let ports = (1234, req.src_port);
    h.mux
        .on_guest_packet(&guest(op::RESPONSE, ports, 1 << 20, 0, 0), &[]);
    let ok = read_some(&mut s, format!("OK {}\n", req.src_port).len());
    assert_eq!(ok, format!("OK {}\n", req.src_port).as_bytes());
    // What the program wrote right after its CONNECT line is data.
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::RW]);
    assert_eq!(p[0].1, b"early");
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (req.src_port, 1234));
    assert_eq!(p[0].0.buf_alloc, BUF_ALLOC);
    // Guest -> host.
    h.mux
        .on_guest_packet(&guest(op::RW, ports, 1 << 20, 5, 5), b"hello");
    assert_eq!(read_some(&mut s, 5), b"hello");
    assert_eq!(h.mux.connections(), 1);
}

#[test]
fn a_guest_that_does_not_listen_answers_rst_and_the_host_sees_eof() {
    let mut h = Host::new();
    let (mut s, req) = h.host_connect(99, b"");
    h.mux
        .on_guest_packet(&guest(op::RST, (99, req.src_port), 0, 0, 0), &[]);
    assert_eq!(h.mux.connections(), 0);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn bad_connect_lines_close_the_host_connection_and_a_split_line_works() {
    let mut h = Host::new();
    for line in [
        &b"HELLO 5\n"[..],
        b"CONNECT x\n",
        b"CONNECT 1 2\n",
        &[b'a'; 40],
    ] {
        let mut s = UnixStream::connect(&h.path).unwrap();
        s.write_all(line).unwrap();
        assert!(h.packets(4096).is_empty());
        assert!(closed(&mut s), "{line:?}");
    }
    // A client that closes before its newline is gone, not a loop.
    let s = UnixStream::connect(&h.path).unwrap();
    (&s).write_all(b"CONN").unwrap();
    drop(s);
    assert!(h.packets(4096).is_empty());
    // Split over two writes, lower case.
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"conn").unwrap();
    assert!(h.packets(4096).is_empty());
    s.write_all(b"ect 7\n").unwrap();
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::REQUEST]);
    assert_eq!(p[0].0.dst_port, 7);
    assert_eq!(parse_connect(b"CONNECT 4294967295"), Ok(u32::MAX));
}

#[test]
fn a_guest_connection_reaches_the_port_listener_or_gets_rst() {
    let mut h = Host::new();
    // Nobody at <path>_5000 yet.
    h.mux
        .on_guest_packet(&guest(op::REQUEST, (40, 5000), 4096, 0, 0), &[]);
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::RST]);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5000, 40));
    let mut name = h.path.clone().into_os_string();
    name.push("_5000");
    let l = UnixListener::bind(&name).unwrap();
    h.mux
        .on_guest_packet(&guest(op::REQUEST, (41, 5000), 4096, 0, 0), &[]);
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::RESPONSE]);
    let (mut s, _) = l.accept().unwrap();
    h.mux
        .on_guest_packet(&guest(op::RW, (41, 5000), 4096, 0, 3), b"abc");
    assert_eq!(read_some(&mut s, 3), b"abc");
    s.write_all(b"xyz").unwrap();
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::RW]);
    assert_eq!(p[0].1, b"xyz");
}

#[test]
fn host_data_stops_at_the_guests_credit_and_resumes_on_its_update() {
    let mut h = Host::new();
    let (mut s, req) = h.host_connect(10, b"");
    let ports = (10, req.src_port);
    // The guest has an 8-byte receive buffer.
    h.mux
        .on_guest_packet(&guest(op::RESPONSE, ports, 8, 0, 0), &[]);
    read_some(&mut s, format!("OK {}\n", req.src_port).len());
    s.write_all(&[7u8; 100]).unwrap();
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::RW, op::CREDIT_REQUEST]);
    assert_eq!(p[0].1.len(), 8);
    // Nothing more until the guest says it has room: the rest stays in
    // the host's socket, not in Caravel.
    assert!(h.packets(4096).is_empty());
    h.mux
        .on_guest_packet(&guest(op::CREDIT_UPDATE, ports, 8, 8, 0), &[]);
    let p = h.packets(4096);
    assert_eq!(p[0].0.op, op::RW);
    assert_eq!(p[0].1.len(), 8);
    // A receive buffer smaller than the credit bounds the packet too.
    h.mux
        .on_guest_packet(&guest(op::CREDIT_UPDATE, ports, 1000, 16, 0), &[]);
    let p = h.packets(10);
    assert!(p.iter().all(|(h, d)| h.op != op::RW || d.len() <= 10));
    let moved: usize = p.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(moved, 100 - 16);
}

#[test]
fn a_host_that_never_reads_bounds_the_buffer_and_a_guest_beyond_credit_is_reset() {
    let mut h = Host::new();
    let mut name = h.path.clone().into_os_string();
    name.push("_6000");
    let l = UnixListener::bind(&name).unwrap();
    let ports = (50, 6000);
    h.mux
        .on_guest_packet(&guest(op::REQUEST, ports, 4096, 0, 0), &[]);
    assert_eq!(ops(&h.packets(4096)), [op::RESPONSE]);
    let (_never_read, _) = l.accept().unwrap();
    let chunk = vec![1u8; 4096];
    let mut sent = 0usize;
    let mut reset = false;
    // Far more than any socket buffer plus the device's credit.
    for _ in 0..4096 {
        h.mux
            .on_guest_packet(&guest(op::RW, ports, 4096, 0, chunk.len()), &chunk);
        sent += chunk.len();
        assert!(h.mux.buffered() <= BUF_ALLOC as usize);
        if h.mux.connections() == 0 {
            reset = true;
            break;
        }
    }
    assert!(reset, "{sent} bytes beyond credit were taken");
    assert!(ops(&h.packets(4096)).contains(&op::RST));
}

#[test]
fn the_guest_learns_of_freed_buffer_without_asking() {
    let mut h = Host::new();
    let mut name = h.path.clone().into_os_string();
    name.push("_6001");
    let l = UnixListener::bind(&name).unwrap();
    let ports = (51, 6001);
    h.mux
        .on_guest_packet(&guest(op::REQUEST, ports, 4096, 0, 0), &[]);
    h.packets(4096);
    let (mut host, _) = l.accept().unwrap();
    // The guest fills the device's buffer but for 2 KiB; the host reads it
    // all: the guest is told (fwd_cnt) without a CREDIT_REQUEST.
    let data = vec![9u8; BUF_ALLOC as usize - 2048];
    h.mux
        .on_guest_packet(&guest(op::RW, ports, 4096, 0, data.len()), &data);
    let _ = read_some(&mut host, data.len());
    h.mux
        .on_guest_packet(&guest(op::CREDIT_REQUEST, ports, 4096, 0, 0), &[]);
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::CREDIT_UPDATE]);
    assert_eq!(p[0].0.fwd_cnt as usize, data.len());
}

#[test]
fn half_close_both_ways_then_the_guests_close_gets_rst() {
    let mut h = Host::new();
    let (mut s, req) = h.host_connect(20, b"");
    let ports = (20, req.src_port);
    h.mux
        .on_guest_packet(&guest(op::RESPONSE, ports, 4096, 0, 0), &[]);
    read_some(&mut s, format!("OK {}\n", req.src_port).len());
    s.write_all(b"last").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let p = h.packets(4096);
    assert_eq!(ops(&p), [op::RW, op::SHUTDOWN]);
    assert_eq!(p[1].0.flags, shutdown::SEND);
    // The guest can still send after the host stopped.
    h.mux
        .on_guest_packet(&guest(op::RW, ports, 4096, 4, 2), b"ok");
    assert_eq!(read_some(&mut s, 2), b"ok");
    // The guest's close: both directions; the device answers RST and the
    // host sees end of file.
    let mut close = guest(op::SHUTDOWN, ports, 4096, 4, 0);
    close.flags = shutdown::BOTH;
    h.mux.on_guest_packet(&close, &[]);
    assert_eq!(ops(&h.packets(4096)), [op::RST]);
    assert_eq!(h.mux.connections(), 0);
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn the_guest_shutting_its_send_side_shuts_the_host_streams_write_side() {
    let mut h = Host::new();
    let (mut s, req) = h.host_connect(21, b"");
    let ports = (21, req.src_port);
    h.mux
        .on_guest_packet(&guest(op::RESPONSE, ports, 4096, 0, 0), &[]);
    read_some(&mut s, format!("OK {}\n", req.src_port).len());
    let mut shut = guest(op::SHUTDOWN, ports, 4096, 0, 0);
    shut.flags = shutdown::SEND;
    h.mux.on_guest_packet(&shut, &[]);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
    // The other direction still works.
    s.write_all(b"reply").unwrap();
    let p = h.packets(4096);
    assert_eq!(p[0].1, b"reply");
    // Data after the guest said it sends no more is a protocol error.
    h.mux
        .on_guest_packet(&guest(op::RW, ports, 4096, 0, 1), b"!");
    assert!(ops(&h.packets(4096)).contains(&op::RST));
}

#[test]
fn stray_packets_get_rst_or_are_dropped() {
    let mut h = Host::new();
    // Data for no connection: RST.
    h.mux.on_guest_packet(&guest(op::RW, (1, 2), 0, 0, 1), b"x");
    assert_eq!(ops(&h.packets(4096)), [op::RST]);
    // An RST for no connection: nothing.
    h.mux.on_guest_packet(&guest(op::RST, (1, 2), 0, 0, 0), &[]);
    assert!(h.packets(4096).is_empty());
    // Another destination CID, or a spoofed source: dropped.
    let mut other = guest(op::REQUEST, (1, 2), 0, 0, 0);
    other.dst_cid = 7;
    h.mux.on_guest_packet(&other, &[]);
    let mut spoof = guest(op::REQUEST, (1, 2), 0, 0, 0);
    spoof.src_cid = 9;
    h.mux.on_guest_packet(&spoof, &[]);
    assert!(h.packets(4096).is_empty());
    // Seqpacket: RST.
    let mut seq = guest(op::REQUEST, (1, 2), 0, 0, 0);
    seq.kind = 2;
    h.mux.on_guest_packet(&seq, &[]);
    assert_eq!(ops(&h.packets(4096)), [op::RST]);
    // A flood of stray packets queues a bounded number of RSTs.
    for i in 0..10_000 {
        h.mux.on_guest_packet(&guest(op::RW, (i, 2), 0, 0, 0), &[]);
    }
    assert!(h.packets(4096).len() <= 256);
}

#[test]
fn an_unanswered_host_connection_times_out() {
    let mut h = Host::new();
    let (mut s, _req) = h.host_connect(30, b"");
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.mux.connections() > 0 {
        assert!(Instant::now() < deadline, "no timeout");
        h.pump();
    }
    assert_eq!(ops(&h.packets(4096)), [op::RST]);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
}

// The device over rings.

struct Device {
    m: GuestMemoryMmap,
    rings: Vec<Ring>,
    notify: Vec<EventFd>,
    dev: Vsock,
    host: Host,
}

impl Device {
    /// A device whose guest posted `rx` receive buffers and `events` event
    /// buffers; `restored` as after a snapshot restore.
    fn new(rx: usize, events: usize, restored: bool, acked: u64) -> Self {
        let m = crate::test_util::mem_of(0x40_0000);
        let host = Host::new();
        let listener = UnixListener::bind(host.dir.join("dev.sock")).unwrap();
        let mut dev = Vsock::new(CID, &host.dir.join("dev.sock"), listener).unwrap();
        if restored {
            let state = dev.save_state();
            dev.restore_state(&state).unwrap();
        }
        let mut rings: Vec<Ring> = (0..3)
            .map(|i| Ring::new(0x10_0000 + i * 0x1_0000, 16))
            .collect();
        for i in 0..rx {
            rings[0].post(&m, &[(0x20_0000 + i as u64 * 0x1000, 0x1000, true)]);
        }
        for i in 0..events {
            rings[2].post(&m, &[(0x30_0000 + 8 * i as u64, 8, true)]);
        }
        let notify = crate::test_util::activate_on_rings(&mut dev, &m, &rings, acked);
        Self {
            m,
            rings,
            notify,
            dev,
            host,
        }
    }

    fn used_within(&self, queue: usize, count: u16, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while self.rings[queue].used_idx(&self.m) < count {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn rx_header(&self, i: u64) -> Header {
        let mut raw = [0u8; HDR_LEN];
        self.m
            .read_slice(&mut raw, GuestAddress(0x20_0000 + i * 0x1000))
            .unwrap();
        Header::from_bytes(&raw)
    }
}

#[test]
fn a_host_connect_becomes_a_request_in_the_receive_queue() {
    let d = Device::new(4, 1, false, crate::features::VERSION_1);
    let mut s = UnixStream::connect(d.host.dir.join("dev.sock")).unwrap();
    s.write_all(b"CONNECT 77\n").unwrap();
    assert!(d.used_within(0, 1, Duration::from_secs(2)), "no REQUEST");
    let h = d.rx_header(0);
    assert_eq!((h.op, h.dst_port, h.dst_cid), (op::REQUEST, 77, CID));
    assert_eq!(d.rings[0].used(&d.m, 0).1 as usize, HDR_LEN);
    let mut c = [0u8; 8];
    d.dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), CID);
}

#[test]
fn a_restored_device_resets_the_transport_and_holds_packets_until_the_guest_acks() {
    let mut d = Device::new(4, 1, true, crate::features::VERSION_1);
    assert!(
        d.used_within(2, 1, Duration::from_secs(2)),
        "no TRANSPORT_RESET event"
    );
    let id: u32 = d.m.read_obj(GuestAddress(0x30_0000)).unwrap();
    assert_eq!(id, 0);
    let mut s = UnixStream::connect(d.host.dir.join("dev.sock")).unwrap();
    s.write_all(b"CONNECT 77\n").unwrap();
    assert!(
        !d.used_within(0, 1, Duration::from_millis(300)),
        "a packet went out before the guest handled the reset"
    );
    // The guest refills the event queue and notifies it: the ack.
    d.rings[2].post(&d.m, &[(0x30_0000, 8, true)]);
    d.notify[2].write(1).unwrap();
    assert!(
        d.used_within(0, 1, Duration::from_secs(2)),
        "the REQUEST did not follow the ack"
    );
    assert_eq!(d.rx_header(0).op, op::REQUEST);
    // A pause keeps the connection; a reset closes it.
    let queues = d.dev.pause();
    assert_eq!(queues.len(), 3);
    d.dev.reset();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn with_event_idx_the_refill_is_noticed_without_a_notification() {
    use crate::features::{RING_EVENT_IDX, VERSION_1};
    // Linux posts 8 event buffers and, with event-idx, notifies a refill
    // only when the device asked for it at the driver's avail index.
    let d = Device::new(4, 8, true, VERSION_1 | RING_EVENT_IDX);
    assert!(
        d.used_within(2, 1, Duration::from_secs(2)),
        "no TRANSPORT_RESET event"
    );
    let ring = &d.rings[2];
    let avail_event: u16 =
        d.m.read_obj(GuestAddress(ring.used + 4 + 8 * u64::from(ring.size)))
            .unwrap();
    assert_eq!(
        avail_event, 8,
        "the device did not ask for the refill's notification"
    );
    // The refill, published without a notification (as if it raced):
    // the next host packet checks for it and goes out.
    let mut rings = d.rings;
    rings[2].post(&d.m, &[(0x30_0000, 8, true)]);
    let d = Device { rings, ..d };
    let mut s = UnixStream::connect(d.host.dir.join("dev.sock")).unwrap();
    s.write_all(b"CONNECT 78\n").unwrap();
    assert!(
        d.used_within(0, 1, Duration::from_secs(2)),
        "the REQUEST was held back"
    );
    assert_eq!(d.rx_header(0).op, op::REQUEST);
}

#[test]
fn reserved_cids_are_refused() {
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(!valid_guest_cid(cid), "{cid}");
    }
    assert!(valid_guest_cid(3));
}
