//! The host side of every vsock connection: the Unix socket host programs
//! connect to (Firecracker's and Cloud Hypervisor's hybrid model), the
//! `<path>_<port>` sockets guest connections reach, and the routing of
//! packets between them and the guest.
//!
//! Host -> guest: a program connects to the socket at `path` and writes
//! `CONNECT <port>\n`; the guest is sent a REQUEST for `port` and, once it
//! accepts, the program reads `OK <local port>\n` and then has a stream to
//! the guest's socket. A guest that does not listen answers RST and the
//! program's connection is closed. Guest -> host: a guest connection to
//! CID 2 port P is a connection to the socket at `<path>_P`; nobody
//! listening there is an RST.
//!
//! Every host fd sits in one epoll set (level-triggered), which the
//! device's worker waits on. A connection is polled for reading only while
//! the guest has credit for more and no packet of it waits for a receive
//! buffer, and for writing only while guest data waits for the host
//! stream; an fd with nothing to wait for is out of the set. So neither a
//! guest nor a host that stops reading makes the worker spin or buffer more
//! than one connection's [`BUF_ALLOC`].

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, State, Verdict, BUF_ALLOC};
use super::packet::{op, Header, HOST_CID, TYPE_STREAM};

/// Connections open at once; a host connection beyond is accepted and
/// closed, a guest REQUEST beyond is answered RST.
pub const MAX_CONNECTIONS: usize = 1023;
/// Host connections that have not finished their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>` line.
const MAX_LINE: usize = 32;
/// RSTs for unknown connections waiting for a receive buffer; more are
/// dropped (the guest's own timeouts end those sockets).
const MAX_LOOSE_RESETS: usize = 256;
/// How long the guest has to accept a host connection, and to let a
/// closing connection's data reach the host.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Host-side ports of host-initiated connections: [2^30, 2^31).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER: u64 = 0;
const TIMER: u64 = 1;
const HANDSHAKE: u64 = 1 << 32;
const CONNECTION: u64 = 2 << 32;

type Key = (u32, u32);

struct Entry {
    conn: Connection,
    /// Events the fd is in the epoll set for (empty: not in the set).
    registered: EventSet,
    /// Waiting in `rx_ready` for a receive buffer.
    queued: bool,
    /// When it is reset unless it got further (handshake, close).
    deadline: Option<Instant>,
}

/// A host connection that has not sent its whole `CONNECT` line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Routes packets between the guest and host Unix sockets.
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<Key, Entry>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with a packet (or possibly data) for the guest, in turn.
    rx_ready: VecDeque<Key>,
    /// RSTs for packets that belong to no connection.
    loose_resets: VecDeque<Header>,
    next_port: u32,
}

impl Muxer {
    /// A muxer for the guest with `guest_cid`, taking host connections on
    /// `listener` (bound at `path`, non-blocking) and making guest
    /// connections to `<path>_<port>`.
    pub fn new(guest_cid: u64, path: &Path, listener: UnixListener) -> std::io::Result<Self> {
        // fcntl, not std's set_nonblocking: that is an ioctl (FIONBIO),
        // which the worker's seccomp filter does not allow.
        crate::fd_io::set_nonblocking(listener.as_raw_fd())?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TIMER),
        )?;
        Ok(Self {
            guest_cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rx_ready: VecDeque::new(),
            loose_resets: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
        })
    }

    /// The fd the worker waits on: readable when a host socket needs
    /// attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Guest data the host streams have not taken yet, over all
    /// connections.
    pub fn buffered(&self) -> usize {
        self.conns.values().map(|e| e.conn.tx_pending()).sum()
    }

    /// Whether a packet may be ready for the guest.
    pub fn has_rx_work(&self) -> bool {
        !self.loose_resets.is_empty() || !self.rx_ready.is_empty()
    }

    /// Closes every connection (a device reset, or the guest's transport
    /// reset): the host ends see end of file.
    pub fn close_all(&mut self) {
        for (_, e) in self.conns.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                e.conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.by_fd.clear();
        self.rx_ready.clear();
        self.loose_resets.clear();
    }

    /// The guest sent `hdr` with `data` (`hdr.len` bytes, checked).
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            devices::warn_ratelimited!(
                "virtio-vsock: packet from CID {} to CID {} dropped (the guest is {}, the host {HOST_CID})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.kind != TYPE_STREAM {
            if hdr.op != op::RST {
                self.reset_unknown(key);
            }
            return;
        }
        let Some(e) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.connect_to_host(hdr),
                op::RST => {}
                _ => self.reset_unknown(key),
            }
            return;
        };
        let verdict = e.conn.on_guest_packet(hdr, data);
        if e.conn.state == State::Established && e.deadline.is_some() && !closing(&e.conn) {
            e.deadline = None;
        }
        self.settle(key, verdict);
    }

    /// Acts on `verdict` for connection `key`: ends it, or updates its
    /// place in the receive queue and the epoll set.
    fn settle(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {
                if let Some(e) = self.conns.get_mut(&key) {
                    if closing(&e.conn) && e.deadline.is_none() {
                        e.deadline = Some(Instant::now() + TIMEOUT);
                        self.arm_timer();
                    }
                }
                self.queue_if_owing(key);
                self.update_interest(key);
            }
            Verdict::Reset => {
                self.remove(key);
                self.reset_unknown(key);
            }
            Verdict::Drop => self.remove(key),
        }
    }

    fn queue_if_owing(&mut self, key: Key) {
        if let Some(e) = self.conns.get_mut(&key) {
            if !e.queued && e.conn.owes_packet() {
                e.queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    /// Queues an RST for `(local, peer)`, which has no connection (any
    /// more).
    fn reset_unknown(&mut self, (local, peer): Key) {
        if self.loose_resets.len() >= MAX_LOOSE_RESETS {
            devices::warn_ratelimited!("virtio-vsock: too many resets waiting; one dropped");
            return;
        }
        let rst = self.rst((local, peer));
        self.loose_resets.push_back(rst);
    }

    /// An RST for the connection `(local, peer)`.
    fn rst(&self, (local, peer): Key) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            kind: TYPE_STREAM,
            op: op::RST,
            buf_alloc: BUF_ALLOC,
            ..Header::default()
        }
    }

    /// A guest REQUEST: connects to `<path>_<port>` without blocking.
    fn connect_to_host(&mut self, req: &Header) {
        let key = (req.dst_port, req.src_port);
        if self.conns.len() >= MAX_CONNECTIONS {
            devices::warn_ratelimited!(
                "virtio-vsock: {MAX_CONNECTIONS} connections open; a guest connection refused"
            );
            return self.reset_unknown(key);
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", req.dst_port));
        match super::unix::connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, req);
                self.insert(key, conn, None);
            }
            Err(e) => {
                log::debug!(
                    "virtio-vsock: guest connection to port {} ({}): {e}",
                    req.dst_port,
                    Path::new(&path).display()
                );
                self.reset_unknown(key);
            }
        }
    }

    fn insert(&mut self, key: Key, conn: Connection, deadline: Option<Instant>) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(
            key,
            Entry {
                conn,
                registered: EventSet::empty(),
                queued: false,
                deadline,
            },
        );
        if deadline.is_some() {
            self.arm_timer();
        }
        self.queue_if_owing(key);
        self.update_interest(key);
    }

    fn remove(&mut self, key: Key) {
        if let Some(e) = self.conns.remove(&key) {
            let fd = e.conn.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            if !e.registered.is_empty() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    /// Puts the connection's fd in the epoll set for what it waits for, or
    /// takes it out (a closed host end would otherwise report HUP forever).
    fn update_interest(&mut self, key: Key) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        let mut want = EventSet::empty();
        if e.conn.wants_read() && !e.queued {
            want |= EventSet::IN;
        }
        if e.conn.tx_pending() > 0 {
            want |= EventSet::OUT;
        }
        if want == e.registered {
            return;
        }
        let fd = e.conn.stream.as_raw_fd();
        let token = CONNECTION | fd as u64;
        let result = match (e.registered.is_empty(), want.is_empty()) {
            (true, _) => self
                .epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(want, token)),
            (false, true) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (false, false) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
            }
        };
        match result {
            Ok(()) => e.registered = want,
            Err(err) => {
                devices::warn_ratelimited!("virtio-vsock: epoll_ctl: {err}; connection reset");
                self.settle(key, Verdict::Reset);
            }
        }
    }

    /// The next packet for the guest, its data in `buf` (whose length is
    /// the most the receive buffer takes); `None` when nothing is ready.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.loose_resets.pop_front() {
            return Some((h, 0));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            e.queued = false;
            match e.conn.next_packet(buf) {
                Ok(Some((mut h, n))) => {
                    h.src_cid = HOST_CID;
                    h.dst_cid = self.guest_cid;
                    let request = h.op == op::REQUEST;
                    if request {
                        // The guest's time to answer starts now.
                        e.deadline = Some(Instant::now() + TIMEOUT);
                    }
                    // Its turn again after the others: more data or a
                    // control packet may follow.
                    e.queued = true;
                    self.rx_ready.push_back(key);
                    self.update_interest(key);
                    if request {
                        self.arm_timer();
                    }
                    return Some((h, n));
                }
                Ok(None) => self.update_interest(key),
                Err(()) => {
                    self.remove(key);
                    return Some((self.rst(key), 0));
                }
            }
        }
        None
    }

    /// Handles what the host sockets have ready (called when
    /// [`Muxer::epoll_fd`] is readable).
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                devices::warn_ratelimited!("virtio-vsock: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let (data, set) = (ev.data(), ev.event_set());
            match data {
                LISTENER => self.accept(),
                TIMER => self.expire(),
                d if d & HANDSHAKE != 0 && d & CONNECTION == 0 => {
                    self.handshake((d & 0xffff_ffff) as RawFd)
                }
                d => {
                    let fd = (d & 0xffff_ffff) as RawFd;
                    if let Some(&key) = self.by_fd.get(&fd) {
                        self.host_ready(key, set);
                    }
                }
            }
        }
    }

    fn host_ready(&mut self, key: Key, set: EventSet) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        let mut verdict = Verdict::Keep;
        if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP)
            && e.conn.tx_pending() > 0
        {
            verdict = e.conn.flush();
        }
        if verdict == Verdict::Keep
            && e.registered.contains(EventSet::IN)
            && set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP)
            && !e.queued
        {
            // Read when a receive buffer is there to read into.
            e.queued = true;
            self.rx_ready.push_back(key);
        }
        self.settle(key, verdict);
    }

    fn accept(&mut self) {
        for _ in 0..16 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    devices::warn_ratelimited!(
                        "virtio-vsock: accept on {}: {e}",
                        self.path.display()
                    );
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNECTIONS {
                devices::warn_ratelimited!("virtio-vsock: too many host connections; one closed");
                continue;
            }
            let fd = stream.as_raw_fd();
            let ok = crate::fd_io::set_nonblocking(fd).is_ok()
                && self
                    .epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, HANDSHAKE | fd as u64),
                    )
                    .is_ok();
            if ok {
                self.handshakes.insert(
                    fd,
                    Handshake {
                        stream,
                        line: Vec::with_capacity(MAX_LINE),
                    },
                );
            }
        }
    }

    /// Reads the `CONNECT` line a byte at a time, so that no byte of the
    /// data after it is taken.
    fn handshake(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match h.stream.read(&mut byte) {
                Ok(0) => break Err("closed before its CONNECT line".to_string()),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&h.line),
                Ok(_) if h.line.len() >= MAX_LINE => break Err("CONNECT line too long".into()),
                Ok(_) => h.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(h) = self.handshakes.remove(&fd) else {
            return;
        };
        match outcome {
            Ok(port) => {
                let local = self.allocate_port(port);
                let conn = Connection::host_initiated(h.stream, local, port);
                self.insert((local, port), conn, None);
            }
            Err(e) => log::info!(
                "virtio-vsock: host connection on {}: {e}",
                self.path.display()
            ),
        }
    }

    /// A host-side port no connection to guest port `peer` uses.
    fn allocate_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = if port == u32::MAX >> 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            // At most MAX_CONNECTIONS ports are taken.
            if !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed {
            let second = Duration::from_secs(1);
            self.timer_armed = self.timer.reset(second, Some(second)).is_ok();
        }
    }

    /// Resets connections past their deadline; stops the timer when none
    /// has one.
    fn expire(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            log::info!("virtio-vsock: connection {key:?} timed out; reset");
            self.settle(key, Verdict::Reset);
        }
        if self.conns.values().all(|e| e.deadline.is_none()) {
            self.timer_armed = false;
            let _ = self.timer.clear();
        }
    }
}

/// The guest closed both directions and its data still waits for the host.
fn closing(c: &Connection) -> bool {
    c.peer_closed() && c.tx_pending() > 0
}

/// The port of a `CONNECT <port>` line (keyword in any case).
pub fn parse_connect(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "CONNECT line is not text".to_string())?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(k), Some(port), None) if k.eq_ignore_ascii_case("connect") => port
            .parse::<u32>()
            .map_err(|_| format!("{port:?} is not a port number")),
        _ => Err(format!("expected \"CONNECT <port>\", got {text:?}")),
    }
}
