//! Live migration between Caravel processes (Cloud Hypervisor's flow).
//!
//! The destination is a `caravel --api-socket D` without a VM; its
//! `vm.receive-migration` listens on a `unix:` or `tcp:` URL ([`Endpoint`]).
//! The source's `vm.send-migration` connects and runs the migration
//! ([`send`]): the stream header is checked first, then the VM's shape; then
//! pre-copy sends all guest memory while the guest runs, with KVM's dirty
//! log and the devices' dirty bitmaps tracking what changes ([`dirty`]),
//! and resends what changed until the rest fits the downtime budget; then
//! the VM pauses, the last pages and the state follow, and the destination
//! ([`receive`]) builds, restores and starts the VM. Any failure before the
//! destination has started the guest leaves it running on the source.
//! `docs/migration.md` describes the stream ([`stream`]) and the knobs.

pub mod dirty;
pub mod receive;
pub mod send;
pub mod stream;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Where a migration connects or listens: `unix:/path` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address (`HOST:PORT`).
    Tcp(String),
}

impl Endpoint {
    /// Parses a URL; `field` names the body field or flag for the error.
    pub fn parse(field: &'static str, url: &str) -> Result<Self> {
        if let Some(p) = url.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(Error::config(field, format!("{url:?} has no socket path")));
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        if let Some(a) = url.strip_prefix("tcp:") {
            match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    return Ok(Self::Tcp(a.to_string()))
                }
                _ => {
                    return Err(Error::config(
                        field,
                        format!("{url:?}: expected tcp:HOST:PORT, e.g. tcp:192.168.1.2:6000"),
                    ))
                }
            }
        }
        Err(Error::config(
            field,
            format!("{url:?} is not a migration URL: use unix:/path/to/socket or tcp:HOST:PORT"),
        ))
    }
}

/// One migration connection.
pub enum Conn {
    /// Over a Unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Conn {
    /// Connects to `to`, retrying for up to `wait` while nobody listens yet
    /// (the destination may still be setting up).
    pub fn connect(to: &Endpoint, wait: Duration) -> std::io::Result<Self> {
        let deadline = Instant::now() + wait;
        loop {
            let r = match to {
                Endpoint::Unix(p) => UnixStream::connect(p).map(Conn::Unix),
                Endpoint::Tcp(a) => TcpStream::connect(a.as_str()).map(|s| {
                    let _ = s.set_nodelay(true);
                    Conn::Tcp(s)
                }),
            };
            match r {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// Gives up on reads and writes that stall for `t` (a peer that died
    /// without closing, a network that went away).
    pub fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// The Unix socket, for passing file descriptors (local migration).
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            Conn::Unix(s) => Some(s),
            Conn::Tcp(_) => None,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bound migration listener.
pub enum Listener {
    /// On a Unix socket (removed when dropped).
    Unix(UnixListener, PathBuf),
    /// On TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `at`. An existing Unix socket file nobody listens on (left by
    /// a crash) is replaced; one in use is refused.
    pub fn bind(at: &Endpoint) -> Result<Self> {
        match at {
            Endpoint::Unix(p) => {
                if p.exists() {
                    if UnixStream::connect(p).is_ok() {
                        return Err(Error::config(
                            "receiver_url",
                            format!("{} is in use by another listener", p.display()),
                        ));
                    }
                    let _ = std::fs::remove_file(p);
                }
                let l = UnixListener::bind(p).map_err(|e| {
                    Error::config(
                        "receiver_url",
                        format!("cannot listen on {}: {e}", p.display()),
                    )
                })?;
                Ok(Self::Unix(l, p.clone()))
            }
            Endpoint::Tcp(a) => TcpListener::bind(a.as_str()).map(Self::Tcp).map_err(|e| {
                Error::config("receiver_url", format!("cannot listen on tcp:{a}: {e}"))
            }),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }

    /// Waits for the source, or until the fd `cancel` becomes readable (a
    /// termination signal): then `Ok(None)`.
    pub fn accept(&self, cancel: Option<RawFd>) -> std::io::Result<Option<Conn>> {
        use std::os::fd::AsRawFd;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: cancel.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call's
            // duration; a negative fd is ignored by poll(2).
            let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, std::ptr::null(), std::ptr::null()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                return Ok(None);
            }
            if fds[0].revents != 0 {
                return match self {
                    Listener::Unix(l, _) => l.accept().map(|(s, _)| Some(Conn::Unix(s))),
                    Listener::Tcp(l) => l.accept().map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Some(Conn::Tcp(s))
                    }),
                };
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Most memory files a local migration hands over (boot RAM ranges plus
/// the hotplug region).
pub const MAX_MEMORY_FILES: usize = 8;

/// Sends `files` over `sock` with one byte of data (after a `MemoryFds`
/// frame: the files travel as `SCM_RIGHTS` on their own message).
pub fn send_fds(sock: &UnixStream, files: &[std::os::fd::RawFd]) -> std::io::Result<()> {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    match sock.send_with_fds(&[&b"F"[..]], files) {
        Ok(1) => Ok(()),
        Ok(_) => Err(std::io::Error::other("the memory files were not sent")),
        Err(e) => Err(std::io::Error::from_raw_os_error(e.errno())),
    }
}

/// Receives the `want` files [`send_fds`] sent on `sock`.
pub fn recv_fds(sock: &UnixStream, want: usize) -> std::io::Result<Vec<std::fs::File>> {
    use std::os::fd::FromRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    if want == 0 || want > MAX_MEMORY_FILES {
        return Err(std::io::Error::other(format!(
            "{want} memory files (1 to {MAX_MEMORY_FILES})"
        )));
    }
    let mut byte = [0u8; 1];
    let mut iov = [libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }];
    let mut fds = [-1; MAX_MEMORY_FILES];
    // SAFETY: the one iovec points at `byte`, a live 1-byte buffer we own
    // and do not otherwise touch during the call.
    let (n, count) = unsafe { sock.recv_with_fds(&mut iov, &mut fds[..want]) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let files: Vec<std::fs::File> = fds[..count]
        .iter()
        // SAFETY: the first `count` entries are fds the kernel just
        // installed in this process for us; each is owned by one File.
        .map(|&fd| unsafe { std::fs::File::from_raw_fd(fd) })
        .collect();
    if n != 1 || byte[0] != b'F' || count != want {
        return Err(std::io::Error::other(format!(
            "expected {want} memory files, got {count}"
        )));
    }
    Ok(files)
}

/// Progress of a migration in `role` (`source` or `destination`) before
/// anything happened.
pub fn empty_info(role: &str) -> api::types::MigrationInfo {
    api::types::MigrationInfo {
        role: role.into(),
        phase: api::types::MigrationPhase::Setup,
        iterations: 0,
        memory_bytes: 0,
        stream_bytes: 0,
        dirty_bytes: 0,
        dirty_rate: 0,
        throughput: 0,
        total_ms: 0,
        downtime_ms: None,
        error: None,
    }
}

/// The host's page size: the granule of dirty logging.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_unix_paths_or_tcp_host_ports() {
        assert_eq!(
            Endpoint::parse("destination_url", "unix:/tmp/m.sock").unwrap(),
            Endpoint::Unix("/tmp/m.sock".into())
        );
        assert_eq!(
            Endpoint::parse("destination_url", "tcp:127.0.0.1:6000").unwrap(),
            Endpoint::Tcp("127.0.0.1:6000".into())
        );
        for bad in [
            "unix:",
            "tcp:127.0.0.1",
            "tcp::6000",
            "tcp:h:99999",
            "file:///x",
            "/tmp/m",
        ] {
            let e = Endpoint::parse("destination_url", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("destination_url: "), "{bad}: {e}");
        }
    }

    #[test]
    fn a_listener_replaces_a_stale_socket_and_refuses_a_live_one() {
        let p = std::env::temp_dir().join(format!("caravel-mig-{}.sock", std::process::id()));
        let at = Endpoint::Unix(p.clone());
        let stale = UnixListener::bind(&p).unwrap();
        drop(stale); // the file stays, nobody listens
        let l = Listener::bind(&at).unwrap();
        let e = Listener::bind(&at).err().unwrap().to_string();
        assert!(e.contains("in use"), "{e}");
        let c = Conn::connect(&at, Duration::ZERO).unwrap();
        assert!(matches!(l.accept(None).unwrap(), Some(Conn::Unix(_))));
        drop(c);
        drop(l);
        assert!(!p.exists(), "the listener removes its socket");
    }
}
