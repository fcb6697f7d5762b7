//! virtio-net on a TAP that Caravel creates in the outer VM (issue #15):
//! the TAP's address and lifetime, ping, 64 MiB over TCP each way with an
//! md5 on both ends, and two parallel streams over two queue pairs.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::guest::{caravel_args, expect_exit, guest_cmd_within, BOOT_TIMEOUT};
use crate::session::Session;
use crate::Env;

const TAP: &str = "crvnet0";
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const MAC: &str = "52:54:00:c0:ff:ee";
/// A mebibyte.
pub const MIB: usize = 1 << 20;
/// Per guest command that moves data: the nested guest runs under TCG.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// The first md5 (32 hex digits) in the guest's output.
pub fn md5_in(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        let w = l.split_whitespace().next()?;
        (w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit())).then(|| w.to_string())
    })
}

/// `len` bytes that do not compress, the same on every run.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Prints a TAP diagnostic at most every 30 s while a transfer runs, so
/// that a slow one is not taken for a silent (wedged) outer VM.
pub struct Progress {
    what: String,
    last: Instant,
}

impl Progress {
    /// Reports on `what`.
    pub fn new(what: String) -> Self {
        Self {
            what,
            last: Instant::now(),
        }
    }

    /// `bytes` have moved so far.
    pub fn at(&mut self, bytes: usize) {
        if self.last.elapsed() >= Duration::from_secs(30) {
            self.last = Instant::now();
            crate::diag(&format!("{}: {} MiB so far", self.what, bytes / MIB));
        }
    }
}

/// Serves `data` to the first connection on `port` (and reads nothing).
fn serve(port: u16, data: Vec<u8>) -> Result<HostSide<Duration>, String> {
    let l = TcpListener::bind((HOST_IP, port)).map_err(|e| format!("bind {port}: {e}"))?;
    Ok(std::thread::spawn(move || {
        let (mut c, _) = l.accept().map_err(|e| format!("accept {port}: {e}"))?;
        let t = Instant::now();
        let mut progress = Progress::new(format!("host -> guest on port {port}"));
        for (i, chunk) in data.chunks(MIB).enumerate() {
            c.write_all(chunk)
                .map_err(|e| format!("send {port}: {e}"))?;
            progress.at((i + 1) * MIB);
        }
        let _ = c.shutdown(Shutdown::Write);
        // Wait for the guest to close: then it has read everything.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        Ok(t.elapsed())
    }))
}

/// A host-side thread's answer.
pub type HostSide<T> = JoinHandle<Result<T, String>>;

/// Stores what the first connection on `port` sends into `path`; answers
/// the byte count and how long it took.
fn sink(port: u16, path: &Path) -> Result<HostSide<(usize, Duration)>, String> {
    let l = TcpListener::bind((HOST_IP, port)).map_err(|e| format!("bind {port}: {e}"))?;
    let path = path.to_path_buf();
    Ok(std::thread::spawn(move || {
        let (mut c, _) = l.accept().map_err(|e| format!("accept {port}: {e}"))?;
        let t = Instant::now();
        let mut got = Vec::with_capacity(64 * MIB);
        let mut progress = Progress::new(format!("guest -> host on port {port}"));
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("receive {port}: {e}")),
            }
            progress.at(got.len());
        }
        let took = t.elapsed();
        std::fs::write(&path, &got).map_err(|e| e.to_string())?;
        Ok((got.len(), took))
    }))
}

/// The host-side thread's answer, once it ends.
pub fn joined<T>(h: HostSide<T>) -> Result<T, String> {
    h.join().map_err(|_| "host side panicked".to_string())?
}

fn mib_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64().max(1e-6)
}

/// Counts of the guest's virtio-net queue interrupts, from /proc/interrupts:
/// (input.0, input.1).
fn input_irqs(lines: &[String]) -> (u64, u64) {
    let count = |q: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l.contains(q))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take_while(|w| w.chars().all(|c| c.is_ascii_digit()))
                    .filter_map(|w| w.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    };
    (count("input.0"), count("input.1"))
}

/// The card: a TAP Caravel creates, two queue pairs.
fn net_option() -> String {
    format!("tap={TAP},ip={HOST_IP},mask=255.255.255.0,mac={MAC},num_queues=4")
}

/// [`tap_ping_tcp_multiqueue_with`] on x86_64 (vmlinux, 2 vCPUs).
pub fn tap_ping_tcp_multiqueue(env: &Env) -> Result<String, String> {
    let net = net_option();
    let args = caravel_args(
        env,
        "vmlinux",
        "interactive",
        &["--cpus", "boot=2", "--net", &net],
    );
    tap_ping_tcp_multiqueue_with(env, &args)
}

/// [`tap_ping_tcp_multiqueue_with`] on aarch64 (Image, 2 vCPUs, MSI-X
/// through the ITS).
pub fn tap_ping_tcp_multiqueue_arm64(env: &Env) -> Result<String, String> {
    let net = net_option();
    let args = crate::arm64_scenarios::args(env, "interactive", &["--net", &net]);
    tap_ping_tcp_multiqueue_with(env, &args)
}

/// Boots an interactive 2-vCPU guest with `args` (which hold
/// [`net_option`]) and checks the TAP, ping, 64 MiB each way and two
/// parallel streams on two queue pairs.
fn tap_ping_tcp_multiqueue_with(env: &Env, args: &[String]) -> Result<String, String> {
    let sys = Path::new("/sys/class/net").join(TAP);
    if sys.exists() {
        return Err(format!("{TAP} exists before the test"));
    }
    let mut s = Session::spawn(&env.bin("caravel"), args)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    // The TAP Caravel created: up, with its address.
    let addr = std::process::Command::new("ip")
        .args(["-4", "addr", "show", TAP])
        .output()
        .map_err(|e| format!("ip addr: {e}"))?;
    let addr = String::from_utf8_lossy(&addr.stdout).into_owned();
    if !addr.contains(&format!("{HOST_IP}/24")) || !addr.contains("UP") {
        return Err(format!("{TAP} on the host: {addr:?}"));
    }
    let flags = std::fs::read_to_string(sys.join("tun_flags")).unwrap_or_default();
    // The guest's NIC.
    let nic = guest_cmd_within(
        &mut s,
        &format!(
            "cat /sys/class/net/eth0/address; ifconfig eth0 {GUEST_IP} netmask 255.255.255.0 up; \
             ping -c 3 -W 10 {HOST_IP}"
        ),
        BOOT_TIMEOUT,
    )?;
    if !nic.iter().any(|l| l.trim() == MAC) {
        return Err(format!("guest eth0 has not the MAC {MAC}: {nic:?}"));
    }
    if !nic.iter().any(|l| l.contains("3 packets received")) {
        return Err(format!("ping: {nic:?}"));
    }
    // 64 MiB host -> guest, md5 on both ends.
    let data = pattern(64 * MIB, 15);
    let want = env.tmp.join("rig-net-h2g");
    std::fs::write(&want, &data).map_err(|e| e.to_string())?;
    let want_md5 = crate::scenarios::host_md5(&want)?;
    let _ = std::fs::remove_file(&want);
    let server = serve(5002, data)?;
    let got = guest_cmd_within(
        &mut s,
        &format!("nc {HOST_IP} 5002 </dev/null | md5sum"),
        TRANSFER_TIMEOUT,
    )?;
    let h2g = joined(server)?;
    if md5_in(&got).as_deref() != Some(want_md5.as_str()) {
        return Err(format!("host -> guest: guest md5 {got:?}, host {want_md5}"));
    }
    // 64 MiB guest -> host.
    let stored = env.tmp.join("rig-net-g2h");
    let receiver = sink(5001, &stored)?;
    let sent = guest_cmd_within(
        &mut s,
        &format!(
            "dd if=/dev/urandom of=/tmp/blob bs=1M count=64 2>/dev/null && md5sum /tmp/blob && \
             caravel-netbench put {HOST_IP}:5001 /tmp/blob; rm -f /tmp/blob"
        ),
        TRANSFER_TIMEOUT,
    )?;
    let (len, g2h) = joined(receiver)?;
    let host_md5 = crate::scenarios::host_md5(&stored)?;
    let _ = std::fs::remove_file(&stored);
    if len != 64 * MIB || md5_in(&sent).as_deref() != Some(host_md5.as_str()) {
        return Err(format!(
            "guest -> host: {len} bytes, md5 {host_md5}; the guest said {sent:?}"
        ));
    }
    // Two streams at once, one per vCPU: each flow's packets leave through
    // the queue of the CPU that sent them, and the TAP steers the replies
    // to the same queue.
    let before = guest_cmd_within(&mut s, "cat /proc/interrupts", BOOT_TIMEOUT)?;
    let (a0, a1) = input_irqs(&before);
    let d0 = pattern(16 * MIB, 3);
    let d1 = pattern(16 * MIB, 5);
    let (m0, m1) = {
        let p = env.tmp.join("rig-net-mq");
        std::fs::write(&p, &d0).map_err(|e| e.to_string())?;
        let m0 = crate::scenarios::host_md5(&p)?;
        std::fs::write(&p, &d1).map_err(|e| e.to_string())?;
        let m1 = crate::scenarios::host_md5(&p)?;
        let _ = std::fs::remove_file(&p);
        (m0, m1)
    };
    let (s0, s1) = (serve(5003, d0)?, serve(5004, d1)?);
    let par = guest_cmd_within(
        &mut s,
        &format!(
            "taskset 1 sh -c 'nc {HOST_IP} 5003 </dev/null | md5sum > /tmp/m0' & \
             taskset 2 sh -c 'nc {HOST_IP} 5004 </dev/null | md5sum > /tmp/m1' & wait; \
             cat /tmp/m0 /tmp/m1; cat /proc/interrupts"
        ),
        TRANSFER_TIMEOUT,
    )?;
    joined(s0)?;
    joined(s1)?;
    let sums: Vec<String> = par
        .iter()
        .filter_map(|l| md5_in(std::slice::from_ref(l)))
        .collect();
    if sums != [m0.clone(), m1.clone()] {
        return Err(format!("parallel streams: guest {sums:?}, host {m0} {m1}"));
    }
    let (b0, b1) = input_irqs(&par);
    if b0 <= a0 || b1 <= a1 {
        return Err(format!(
            "both receive queues should have worked: input.0 {a0} -> {b0}, input.1 {a1} -> {b1}\n{par:?}"
        ));
    }
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    if sys.exists() {
        return Err(format!("{TAP} is still there after Caravel exited"));
    }
    Ok(format!(
        "TAP created up with {HOST_IP}/24 (tun_flags {}), ping ok, 64 MiB host->guest {:.1} MiB/s, \
         guest->host {:.1} MiB/s, md5s match; 2 streams on 2 queue pairs (input irqs +{} / +{}); TAP gone at exit",
        flags.trim(),
        mib_per_s(64 * MIB, h2g),
        mib_per_s(len, g2h),
        b0 - a0,
        b1 - a1
    ))
}
