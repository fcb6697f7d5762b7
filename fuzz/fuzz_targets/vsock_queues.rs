//! Fuzzes virtio-vsock's packet parser and connection state machine: the
//! transmit, receive and event rings and guest memory come from the input,
//! guest connections reach a real listener at `<socket>_1000`, and a host
//! program may connect with a `CONNECT` line and data from the input.
//! No panic, no unbounded growth, and the used rings stay within the
//! chains posted.
#![no_main]

#[path = "common/rings.rs"]
mod rings;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio::vsock::{process_once, Muxer, MAX_CONNECTIONS};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x4_0000;
const SIZE: u16 = 8;

/// The socket path, and the listener guest connections to port 1000 reach.
fn host() -> &'static (PathBuf, UnixListener) {
    static HOST: OnceLock<(PathBuf, UnixListener)> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("crv-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("v");
        let port = dir.join("v_1000");
        let _ = std::fs::remove_file(&port);
        let l = UnixListener::bind(&port).unwrap();
        l.set_nonblocking(true).unwrap();
        (path, l)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (path, port_listener) = host();
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let muxer = Muxer::new(3, path, listener).unwrap();
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let (head, body) = data.split_at(4);
    let _ = mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0));
    let _ = mem.write_slice(&body[..body.len().min(0x3000)], GuestAddress(0x3_0000));
    let mut queues = rings::queues(3, SIZE, head[0] & 1 != 0);
    // A host program: a CONNECT line (or garbage) and some data.
    let _client = (head[1] & 1 != 0).then(|| {
        let mut c = UnixStream::connect(path).unwrap();
        let n = usize::from(head[1] >> 1).min(body.len());
        let _ = c.write_all(format!("CONNECT {}\n", head[3]).as_bytes());
        let _ = c.write_all(&body[..n]);
        c
    });
    let muxer = process_once(&mut queues, &mem, muxer, head[2] & 1 != 0);
    assert!(muxer.connections() <= MAX_CONNECTIONS);
    assert!(muxer.buffered() <= MAX_CONNECTIONS * virtio::vsock::BUF_ALLOC as usize);
    for q in &queues {
        assert!(q.queue.next_used() <= q.queue.next_avail(), "more used than taken");
    }
    // Guest connections that reached port 1000 end with this run.
    while port_listener.accept().is_ok() {}
});
