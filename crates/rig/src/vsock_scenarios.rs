//! virtio-vsock against Unix sockets in the outer VM (issue #15): the
//! `CONNECT` handshake, 32 MiB each way with an md5 on both ends, refusals
//! both ways, and Caravel's memory staying flat while a guest or a host
//! program stops reading.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::guest::{caravel_args, expect_exit, guest_cmd_within, BOOT_TIMEOUT};
use crate::mem_scenarios::rss;
use crate::net_scenarios::{joined, md5_in, pattern, HostSide, Progress, MIB};
use crate::session::Session;
use crate::Env;

const CID: u32 = 3;
/// Per guest command that moves data: the nested guest runs under TCG.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// `<socket>_<port>`: where guest connections to host port `port` go.
fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to guest port `port` through Caravel's socket: `CONNECT`,
/// then the `OK` line. The guest may not listen yet: tried again for
/// `within`.
pub fn connect(socket: &Path, port: u32, within: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + within;
    loop {
        let err = match try_connect(socket, port) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!("CONNECT {port}: {err}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn try_connect(socket: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // Byte by byte: nothing after the line may be taken here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(0) => return Err("closed without OK (nobody listens in the guest?)".into()),
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&line);
    if !text.starts_with("OK ") {
        return Err(format!("answer {text:?}"));
    }
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(s)
}

/// [`host_guest_md5_flat_rss_with`] on x86_64.
pub fn host_guest_md5_flat_rss(env: &Env) -> Result<String, String> {
    let socket = env.tmp.join("rig-vsock.sock");
    let opt = format!("cid={CID},socket={}", socket.display());
    let args = caravel_args(env, "vmlinux", "interactive", &["--vsock", &opt]);
    host_guest_md5_flat_rss_with(env, &socket, &args)
}

/// [`host_guest_md5_flat_rss_with`] on aarch64.
pub fn host_guest_md5_flat_rss_arm64(env: &Env) -> Result<String, String> {
    let socket = env.tmp.join("rig-vsock.sock");
    let opt = format!("cid={CID},socket={}", socket.display());
    let args = crate::arm64_scenarios::args(env, "interactive", &["--vsock", &opt]);
    host_guest_md5_flat_rss_with(env, &socket, &args)
}

fn host_guest_md5_flat_rss_with(
    env: &Env,
    socket: &Path,
    args: &[String],
) -> Result<String, String> {
    let mut s = Session::spawn(&env.bin("caravel"), args)?;
    let result = checks(env, socket, &mut s);
    result.map_err(|e| format!("{e}\n{}", s.tail()))
}

fn checks(env: &Env, socket: &Path, s: &mut Session) -> Result<String, String> {
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    if !socket.exists() {
        return Err(format!("{} was not created", socket.display()));
    }
    // Host -> guest, 32 MiB.
    let data = pattern(32 * MIB, 21);
    let want = env.tmp.join("rig-vsock-h2g");
    std::fs::write(&want, &data).map_err(|e| e.to_string())?;
    let want_md5 = crate::scenarios::host_md5(&want)?;
    let _ = std::fs::remove_file(&want);
    guest_cmd_within(
        s,
        "(caravel-vsock recv 1234 | md5sum > /tmp/h2g) 2>/dev/null &",
        BOOT_TIMEOUT,
    )?;
    let t = Instant::now();
    let mut c = connect(socket, 1234, Duration::from_secs(60))?;
    let mut progress = Progress::new("vsock host -> guest".into());
    for (i, chunk) in data.chunks(MIB).enumerate() {
        c.write_all(chunk).map_err(|e| format!("vsock send: {e}"))?;
        progress.at((i + 1) * MIB);
    }
    let _ = c.shutdown(std::net::Shutdown::Write);
    // The guest closes once it has read everything: end of file here.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let h2g = t.elapsed();
    let got = guest_cmd_within(s, "wait; cat /tmp/h2g", TRANSFER_TIMEOUT)?;
    if md5_in(&got).as_deref() != Some(want_md5.as_str()) {
        return Err(format!(
            "vsock host -> guest: guest md5 {got:?}, host {want_md5}"
        ));
    }
    // Guest -> host, 32 MiB, to the listener at <socket>_5000.
    let stored = env.tmp.join("rig-vsock-g2h");
    let sink = sink(&port_path(socket, 5000), &stored)?;
    let sent = guest_cmd_within(
        s,
        "dd if=/dev/urandom of=/tmp/blob bs=1M count=32 2>/dev/null && md5sum /tmp/blob && \
         caravel-vsock send 2 5000 /tmp/blob",
        TRANSFER_TIMEOUT,
    )?;
    let (len, g2h) = joined(sink)?;
    let host_md5 = crate::scenarios::host_md5(&stored)?;
    let _ = std::fs::remove_file(&stored);
    if len != 32 * MIB || md5_in(&sent).as_deref() != Some(host_md5.as_str()) {
        return Err(format!(
            "vsock guest -> host: {len} bytes, md5 {host_md5}; the guest said {sent:?}"
        ));
    }
    // Refusals: nobody at <socket>_5001; nobody on guest port 4321.
    let refused = guest_cmd_within(
        s,
        "caravel-vsock send 2 5001 /tmp/blob; echo refused=$?",
        BOOT_TIMEOUT,
    )?;
    if !refused.iter().any(|l| l.contains("refused=1")) {
        return Err(format!(
            "a guest connection to a port nobody serves: {refused:?}"
        ));
    }
    match try_connect(socket, 4321) {
        Err(e) if e.contains("closed without OK") => {}
        other => {
            return Err(format!(
                "CONNECT to a port the guest does not serve: {other:?}"
            ))
        }
    }
    // A guest that stops reading: the host program can push only what the
    // guest's socket and the host's buffers hold; Caravel keeps nothing.
    guest_cmd_within(
        s,
        "caravel-vsock hold 1235 60 2>/dev/null & sleep 1",
        BOOT_TIMEOUT,
    )?;
    let c = connect(socket, 1235, Duration::from_secs(30))?;
    let pid = s.pid();
    let rss_before = rss(pid);
    let pushed = push_for(c, Duration::from_secs(10))?;
    let rss_guest_stalled = rss(pid);
    // A host program that stops reading: the guest's sender blocks.
    let l = UnixListener::bind(port_path(socket, 5002)).map_err(|e| e.to_string())?;
    guest_cmd_within(
        s,
        "(caravel-vsock send 2 5002 /tmp/blob 2>/dev/null &) ; sleep 10",
        TRANSFER_TIMEOUT,
    )?;
    let (_never_read, _) = l.accept().map_err(|e| e.to_string())?;
    let rss_host_stalled = rss(pid);
    let growth = rss_guest_stalled
        .max(rss_host_stalled)
        .saturating_sub(rss_before);
    if pushed > 8 * MIB || growth > 8 * MIB as u64 {
        return Err(format!(
            "a reader that stopped: the host pushed {} KiB into a guest that reads nothing; \
             Caravel's RSS {} -> {} / {} KiB",
            pushed / 1024,
            rss_before / 1024,
            rss_guest_stalled / 1024,
            rss_host_stalled / 1024
        ));
    }
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(s, 0)?;
    if socket.exists() {
        return Err(format!(
            "{} is still there after Caravel exited",
            socket.display()
        ));
    }
    let _ = std::fs::remove_file(port_path(socket, 5000));
    let _ = std::fs::remove_file(port_path(socket, 5002));
    let mib_s = |b: usize, t: Duration| b as f64 / MIB as f64 / t.as_secs_f64().max(1e-6);
    Ok(format!(
        "CONNECT/OK, 32 MiB host->guest {:.1} MiB/s, guest->host {:.1} MiB/s, md5s match; \
         refusals both ways; a stalled guest took {} KiB, RSS {} -> {} KiB (stalled host {} KiB); \
         socket removed at exit",
        mib_s(32 * MIB, h2g),
        mib_s(len, g2h),
        pushed / 1024,
        rss_before / 1024,
        rss_guest_stalled / 1024,
        rss_host_stalled / 1024
    ))
}

/// Writes to `c` without blocking for `time`; returns the bytes taken.
fn push_for(c: UnixStream, time: Duration) -> Result<usize, String> {
    c.set_nonblocking(true).map_err(|e| e.to_string())?;
    let chunk = vec![0x33u8; 64 * 1024];
    let end = Instant::now() + time;
    let mut pushed = 0usize;
    let mut w = &c;
    while Instant::now() < end {
        match w.write(&chunk) {
            Ok(n) => pushed += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("pushing into a stalled guest: {e}")),
        }
    }
    Ok(pushed)
}

/// Stores what the first connection to the listener at `path` sends into
/// `out`; answers the byte count and how long it took.
fn sink(path: &Path, out: &Path) -> Result<HostSide<(usize, Duration)>, String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    let out = out.to_path_buf();
    Ok(std::thread::spawn(move || {
        let (c, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let t = Instant::now();
        let mut got = Vec::with_capacity(32 * MIB);
        let mut progress = Progress::new("vsock guest -> host".into());
        let mut r = BufReader::with_capacity(256 * 1024, c);
        loop {
            let buf = r.fill_buf().map_err(|e| format!("receive: {e}"))?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            got.extend_from_slice(buf);
            r.consume(n);
            progress.at(got.len());
        }
        let took = t.elapsed();
        std::fs::write(&out, &got).map_err(|e| e.to_string())?;
        Ok((got.len(), took))
    }))
}
