//! `caravel-vsock`: AF_VSOCK streams from inside a test guest (busybox has
//! no vsock), against the host side in `caravel-rig`.
//!
//! ```text
//! caravel-vsock recv PORT            listen on PORT, accept one connection,
//!                                    copy it to stdout until end of file
//! caravel-vsock send CID PORT FILE   connect to CID:PORT, send FILE, shut the
//!                                    write side, wait for the peer to close
//! caravel-vsock hold PORT SECS       listen on PORT, accept one connection and
//!                                    read nothing for SECS seconds
//! ```
//!
//! `recv` and `hold` print `LISTENING` on stderr once they listen.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const USAGE: &str = "usage: caravel-vsock recv PORT | send CID PORT FILE | hold PORT SECS";

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all zeroes is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket(AF_VSOCK)"));
    }
    // SAFETY: fd is a new socket owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn raw(fd: &OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Listens on `port` and returns the first connection.
fn accept_one(port: u32) -> Result<File, String> {
    let l = socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm that outlives the call.
    if unsafe { libc::bind(raw(&l), std::ptr::addr_of!(a).cast(), ADDR_LEN) } < 0 {
        return Err(os_err("bind"));
    }
    // SAFETY: plain call on our socket.
    if unsafe { libc::listen(raw(&l), 1) } < 0 {
        return Err(os_err("listen"));
    }
    eprintln!("LISTENING");
    // SAFETY: null address pointers are allowed (the peer is not wanted).
    let c = unsafe {
        libc::accept4(
            raw(&l),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(os_err("accept"));
    }
    // SAFETY: c is a new socket owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(c) }))
}

fn recv(port: u32) -> Result<(), String> {
    let mut c = accept_one(port)?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.write_all(&buf[..n]).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn send(cid: u32, port: u32, path: &str) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let s = socket()?;
    let a = addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm that outlives the call.
    if unsafe { libc::connect(raw(&s), std::ptr::addr_of!(a).cast(), ADDR_LEN) } < 0 {
        return Err(os_err(&format!("connect to {cid}:{port}")));
    }
    let fd = raw(&s);
    let mut f = File::from(s);
    f.write_all(&data).map_err(|e| format!("write: {e}"))?;
    // SAFETY: plain call on our socket.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    // The peer closes once it has everything.
    let mut rest = Vec::new();
    let _ = f.read_to_end(&mut rest);
    eprintln!("SENT {}", data.len());
    Ok(())
}

fn hold(port: u32, secs: u64) -> Result<(), String> {
    let c = accept_one(port)?;
    std::thread::sleep(Duration::from_secs(secs));
    drop(c);
    Ok(())
}

fn number<T: std::str::FromStr>(s: Option<&String>) -> Result<T, String> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| USAGE.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("recv") => number(args.get(2)).and_then(recv),
        Some("send") => number(args.get(2)).and_then(|cid| {
            let port = number(args.get(3))?;
            let path = args.get(4).ok_or_else(|| USAGE.to_string())?;
            send(cid, port, path)
        }),
        Some("hold") => number(args.get(2)).and_then(|port| hold(port, number(args.get(3))?)),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("caravel-vsock: {e}");
        std::process::exit(1);
    }
}
