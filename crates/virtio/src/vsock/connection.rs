//! One vsock stream between a guest socket and a host Unix stream: its
//! state, its credit (virtio 1.2 §5.10.6.3) in both directions, and the
//! packets it owes the guest.
//!
//! Guest -> host: the device advertises [`BUF_ALLOC`] bytes of receive
//! buffer; what the host stream does not take at once waits in `tx_buf`,
//! which can never hold more than that (a guest that sends beyond its
//! credit is reset). Host -> guest: the stream is read only while the
//! guest's advertised buffer has room, so nothing is buffered for a guest
//! that stops reading: the data stays in the host's socket, whose writer
//! blocks.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{op, shutdown, Header};

/// Receive buffer the device advertises for each connection (bytes the
/// guest may send that the host has not taken yet).
pub const BUF_ALLOC: u32 = 64 * 1024;
/// A credit update is sent once the guest believes fewer bytes than this
/// are free.
const CREDIT_UPDATE_THRESHOLD: u32 = 4 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the REQUEST is (about to be) sent, no RESPONSE yet.
    LocalInit,
    /// Both sides may exchange data.
    Established,
}

/// Control packets a connection owes the guest (bits).
mod owe {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const CREDIT_REQUEST: u8 = 8;
    pub const SHUTDOWN_SEND: u8 = 16;
}

/// What the muxer must do after a guest packet or a host event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The connection goes on.
    Keep,
    /// The connection ends: tell the guest with an RST.
    Reset,
    /// The connection ends; the guest already knows (it sent the RST).
    Drop,
}

/// A connection. The muxer owns the map of them and their epoll interest.
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// The host-side port (the guest's destination port).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// Handshake state.
    pub state: State,
    /// The guest's receive buffer size, from its last packet.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed, from its last packet.
    peer_fwd_cnt: Wrapping<u32>,
    /// Data bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as of the last packet to the guest.
    fwd_cnt_told: Wrapping<u32>,
    /// Guest bytes the host stream has not taken yet (at most
    /// [`BUF_ALLOC`]).
    tx_buf: VecDeque<u8>,
    owed: u8,
    /// The host stream reached end of file (SHUTDOWN SEND owed or sent).
    host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    /// The host stream's write side was shut (the guest sends no more).
    host_write_shut: bool,
    /// The `OK <port>\n` line a host-initiated connection is answered
    /// with once the guest accepts.
    ok_line_owed: bool,
    /// The guest's credit ran out and a CREDIT_REQUEST went out for it.
    credit_requested: bool,
}

impl Connection {
    /// A host-initiated connection to guest port `peer_port`: the REQUEST
    /// is owed, then `OK <local_port>` to the host once the guest accepts.
    pub fn host_initiated(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, State::LocalInit);
        c.owed = owe::REQUEST;
        c.ok_line_owed = true;
        c
    }

    /// A guest-initiated connection the host accepted: the RESPONSE is
    /// owed and data may flow.
    pub fn guest_initiated(stream: UnixStream, req: &Header) -> Self {
        let mut c = Self::new(stream, req.dst_port, req.src_port, State::Established);
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.owed = owe::RESPONSE;
        c
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            tx_buf: VecDeque::new(),
            owed: 0,
            host_eof: false,
            peer_shutdown: 0,
            host_write_shut: false,
            ok_line_owed: false,
            credit_requested: false,
        }
    }

    /// Bytes the guest can still take (its buffer minus what is in flight).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest shut both directions.
    pub fn peer_closed(&self) -> bool {
        self.peer_shutdown == shutdown::BOTH
    }

    /// Guest bytes waiting for the host stream.
    pub fn tx_pending(&self) -> usize {
        self.tx_buf.len()
    }

    /// Whether the host stream should be polled for reading: data may flow
    /// to the guest and the guest has room for it.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & shutdown::RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest (besides data,
    /// which needs a read of the host stream to find out).
    pub fn owes_packet(&self) -> bool {
        self.owed != 0
    }

    /// The guest's packet `hdr` (with its `data`) for this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (hdr.op, self.state) {
            (op::RST, _) => Verdict::Drop,
            (op::RESPONSE, State::LocalInit) => {
                self.state = State::Established;
                self.owed &= !owe::REQUEST;
                self.send_ok_line()
            }
            (op::RW, State::Established) => self.take_data(data),
            (op::SHUTDOWN, State::Established) => {
                self.peer_shutdown |= hdr.flags & shutdown::BOTH;
                self.after_shutdown()
            }
            (op::CREDIT_UPDATE, State::Established) => Verdict::Keep,
            (op::CREDIT_REQUEST, State::Established) => {
                self.owed |= owe::CREDIT_UPDATE;
                Verdict::Keep
            }
            // A second REQUEST, a RESPONSE out of turn, data before the
            // handshake, an unknown operation.
            _ => Verdict::Reset,
        }
    }

    /// Writes the `OK` line of a host-initiated connection, raw (it is not
    /// guest data and takes no credit). A host that cannot take a dozen
    /// bytes is gone.
    fn send_ok_line(&mut self) -> Verdict {
        if !self.ok_line_owed {
            return Verdict::Keep;
        }
        self.ok_line_owed = false;
        let line = format!("OK {}\n", self.local_port);
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Verdict::Keep,
            _ => Verdict::Reset,
        }
    }

    fn take_data(&mut self, data: &[u8]) -> Verdict {
        if self.peer_shutdown & shutdown::SEND != 0 {
            return Verdict::Reset;
        }
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            // More than the credit the device gave.
            return Verdict::Reset;
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, rest) {
                Ok(n) => {
                    self.fwd_cnt += n as u32;
                    rest = &rest[n..];
                }
                Err(_) => return Verdict::Reset,
            }
        }
        self.tx_buf.extend(rest);
        self.note_credit();
        Verdict::Keep
    }

    /// The host stream is writable: moves what waits in `tx_buf` there.
    pub fn flush(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (head, _) = self.tx_buf.as_slices();
            match write_some(&mut self.stream, head) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(_) => return Verdict::Reset,
            }
        }
        if self.tx_buf.is_empty() {
            self.tx_buf = VecDeque::new();
        }
        self.note_credit();
        self.after_shutdown()
    }

    /// Owes a credit update when the guest's idea of the free buffer is
    /// low and more is free in fact.
    fn note_credit(&mut self) {
        let believed_used = (self.fwd_cnt - self.fwd_cnt_told).0 as usize + self.tx_buf.len();
        let believed_free = (BUF_ALLOC as usize).saturating_sub(believed_used);
        if believed_free < CREDIT_UPDATE_THRESHOLD as usize && self.fwd_cnt != self.fwd_cnt_told {
            self.owed |= owe::CREDIT_UPDATE;
        }
    }

    /// Acts on the guest's SHUTDOWN flags once everything it sent is with
    /// the host: no more sending shuts the host stream's write side; both
    /// directions closed ends the connection (the guest waits for an RST).
    fn after_shutdown(&mut self) -> Verdict {
        if !self.tx_buf.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shutdown == shutdown::BOTH {
            return Verdict::Reset;
        }
        if self.peer_shutdown & shutdown::SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Verdict::Keep
    }

    /// The next packet for the guest, its data (if any) in `buf`, whose
    /// length is the most the guest's receive buffer takes. `Ok(None)`
    /// when there is nothing to send now; `Err` when the connection must
    /// be reset (the host stream failed).
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Result<Option<(Header, usize)>, ()> {
        let control = |op: u16, flags: u32| Some((packet(op, flags, 0), 0));
        if self.owed & owe::REQUEST != 0 {
            self.owed &= !owe::REQUEST;
            return Ok(control(op::REQUEST, 0).map(|p| self.stamped(p)));
        }
        if self.owed & owe::RESPONSE != 0 {
            self.owed &= !owe::RESPONSE;
            return Ok(control(op::RESPONSE, 0).map(|p| self.stamped(p)));
        }
        if self.state == State::Established && self.wants_read() && !buf.is_empty() {
            let max = buf.len().min(self.peer_credit() as usize);
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.owed |= owe::SHUTDOWN_SEND;
                }
                Ok(n) => {
                    self.rx_cnt += n as u32;
                    self.owed &= !owe::CREDIT_UPDATE;
                    let p = packet(op::RW, 0, n as u32);
                    return Ok(Some(self.stamped((p, n))));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        if self.state == State::Established
            && !self.host_eof
            && self.peer_credit() == 0
            && !self.credit_requested
        {
            self.credit_requested = true;
            self.owed |= owe::CREDIT_REQUEST;
        }
        for (bit, op, flags) in [
            (owe::CREDIT_UPDATE, op::CREDIT_UPDATE, 0),
            (owe::CREDIT_REQUEST, op::CREDIT_REQUEST, 0),
            (owe::SHUTDOWN_SEND, op::SHUTDOWN, shutdown::SEND),
        ] {
            if self.owed & bit != 0 {
                self.owed &= !bit;
                return Ok(control(op, flags).map(|p| self.stamped(p)));
            }
        }
        Ok(None)
    }

    /// Fills in the ports and this side's credit, which every packet
    /// carries.
    fn stamped(&mut self, (mut h, n): (Header, usize)) -> (Header, usize) {
        h.src_port = self.local_port;
        h.dst_port = self.peer_port;
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_told = self.fwd_cnt;
        (h, n)
    }
}

/// A header with `op`, `flags` and `len`, the rest filled in by the sender.
fn packet(op: u16, flags: u32, len: u32) -> Header {
    Header {
        kind: super::packet::TYPE_STREAM,
        op,
        flags,
        len,
        ..Header::default()
    }
}

/// Writes what the non-blocking stream takes now (0 when it is full).
fn write_some(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
