//! Guest console output that never blocks the guest.
//!
//! A UART or virtio-console writes into a [`BoundedOutput`]: the bytes go
//! into a bounded buffer and a writer thread moves them to the host fd. When
//! the host does not read (stdout is a pipe nobody drains, a stopped
//! terminal), the buffer fills and further bytes are dropped and counted;
//! a vCPU never waits for the host, and the VM can always be shut down.
//!
//! The writer thread waits for the fd with `poll(POLLOUT)` and a short
//! timeout and writes at most one page at a time, so it notices a stop
//! request within that timeout even when the host never reads.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes buffered per console before output is dropped.
pub const CAPACITY: usize = 64 << 10;
/// Largest single write(2); a page fits in a pipe that poll calls writable.
const WRITE_CHUNK: usize = 4096;
/// How often the writer re-checks for a stop request while the host is slow.
const POLL_MS: i32 = 50;

struct Shared {
    buf: Mutex<VecDeque<u8>>,
    ready: Condvar,
    stop: AtomicBool,
    dropped: Arc<AtomicU64>,
    capacity: usize,
}

/// A console's host output: bounded, non-blocking for the writer side.
pub struct BoundedOutput {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BoundedOutput {
    /// Starts a writer thread named `name` that copies buffered bytes to
    /// `out`; `dropped` counts bytes discarded because the buffer was full.
    pub fn new(name: &str, out: File, dropped: Arc<AtomicU64>) -> std::io::Result<Self> {
        Self::with_capacity(name, out, dropped, CAPACITY)
    }

    fn with_capacity(
        name: &str,
        out: File,
        dropped: Arc<AtomicU64>,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            dropped,
            capacity,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Output);
                writer(&s, out)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }
}

impl Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = buf.is_empty();
        let room = self.shared.capacity.saturating_sub(buf.len());
        let take = data.len().min(room);
        buf.extend(&data[..take]);
        if take < data.len() {
            self.shared
                .dropped
                .fetch_add((data.len() - take) as u64, Ordering::Relaxed);
        }
        drop(buf);
        // The writer only sleeps on an empty buffer (checked under the same
        // lock): wake it on the first byte, not on every byte a UART sends.
        if was_empty && take > 0 {
            self.shared.ready.notify_one();
        }
        // Accepted, whether buffered or dropped: the guest never waits.
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BoundedOutput {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ready.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `fd` takes output or `POLL_MS` passed; true when writable.
fn writable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `p` is a valid pollfd on this stack frame and nfds is 1.
    let n = unsafe { libc::poll(&mut p, 1, POLL_MS) };
    n > 0 && p.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
}

fn writer(s: &Shared, mut out: File) {
    let fd = out.as_raw_fd();
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    let mut broken = false;
    loop {
        {
            let mut buf = s.buf.lock().unwrap_or_else(|e| e.into_inner());
            while buf.is_empty() && !s.stop.load(Ordering::Acquire) {
                buf = s
                    .ready
                    .wait_timeout(buf, Duration::from_millis(500))
                    .map(|(b, _)| b)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if buf.is_empty() {
                return; // stopping, nothing left
            }
            if broken {
                // The host end failed for good: count instead of writing.
                s.dropped.fetch_add(buf.len() as u64, Ordering::Relaxed);
                buf.clear();
                continue;
            }
            let n = buf.len().min(WRITE_CHUNK);
            chunk.clear();
            chunk.extend(buf.drain(..n));
        }
        let mut done = 0;
        while done < chunk.len() {
            if !writable(fd) {
                if s.stop.load(Ordering::Acquire) {
                    // Stopping and the host still does not read: the rest is lost.
                    let left = s.buf.lock().map_or(0, |b| b.len());
                    s.dropped
                        .fetch_add((chunk.len() - done + left) as u64, Ordering::Relaxed);
                    return;
                }
                continue;
            }
            match out.write(&chunk[done..]) {
                Ok(0) => broken = true,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => broken = true,
            }
            if broken {
                s.dropped
                    .fetch_add((chunk.len() - done) as u64, Ordering::Relaxed);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::time::Instant;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_host_that_never_reads_costs_dropped_bytes_not_a_blocked_writer() {
        let (_reader, w) = pipe();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut out = BoundedOutput::with_capacity("out-test", w, dropped.clone(), 4096).unwrap();
        let start = Instant::now();
        // Far more than the pipe (64 KiB) and the buffer hold.
        let data = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            out.write_all(&data).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the writer side blocked"
        );
        drop(out); // returns: the thread sees the stop request
        let lost = dropped.load(Ordering::Relaxed);
        assert!(
            lost > (8 << 20) - (128 << 10),
            "only {lost} bytes counted as dropped"
        );
    }

    #[test]
    fn a_reading_host_gets_every_byte_in_order() {
        let (mut r, w) = pipe();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut out = BoundedOutput::new("out-test", w, dropped.clone()).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut got).unwrap();
            got
        });
        let mut want = Vec::new();
        for i in 0..2000u32 {
            let line = format!("line {i}\n");
            out.write_all(line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(out);
        assert_eq!(reader.join().unwrap(), want);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }
}
