//! `caravel-rig --bench-net`: TCP between a guest and the outer VM over a
//! TAP, Caravel's virtio-net vs QEMU 7.2 `virtio-net-pci` (`vhost=off`,
//! the userspace baseline, and `vhost=on`, the in-kernel one), same guest
//! (2 vCPUs, 256 MiB, 2 queue pairs), same TAP name and addresses, one run.
//!
//! Load comes from `caravel-netbench` in the guest against three servers
//! here: a sink (guest -> host), a source (host -> guest) and an echo
//! (1-byte request/response). Per contender: throughput of one stream and
//! of two (one per vCPU and queue pair) each way, request/response p50 and
//! p99, and the VMM's CPU time per GiB moved: every thread of the VMM
//! process except its vCPUs (whose time is the guest's), plus QEMU's
//! `vhost-PID` kernel threads.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::guest::{guest_cmd_within, BOOT_TIMEOUT};
use crate::session::Session;
use crate::Env;

const TAP: &str = "crvnet0";
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const SINK: u16 = 5201;
const SOURCE: u16 = 5202;
const ECHO: u16 = 5203;
const SECS: u32 = 5;
const RR_COUNT: u32 = 2000;
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 caravel.test=interactive";
const TIMEOUT: Duration = Duration::from_secs(240);

/// Starts the host's three servers (they live until the rig exits).
fn start_servers() -> Result<(), String> {
    let listen =
        |port: u16| TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind {port}: {e}"));
    let each = |l: TcpListener, f: fn(TcpStream)| {
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || f(c));
            }
        });
    };
    each(listen(SINK)?, |mut c| {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    });
    each(listen(SOURCE)?, |mut c| {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 32 && matches!(c.read(&mut b), Ok(1)) && b[0] != b'\n' {
            line.push(b[0]);
        }
        let secs: f64 = String::from_utf8_lossy(&line).trim().parse().unwrap_or(1.0);
        let end = Instant::now() + Duration::from_secs_f64(secs.min(60.0));
        let buf = vec![0xa5u8; 256 * 1024];
        while Instant::now() < end && c.write_all(&buf).is_ok() {}
    });
    each(listen(ECHO)?, |mut c| {
        let _ = c.set_nodelay(true);
        let mut b = [0u8; 1];
        while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
    });
    Ok(())
}

/// CPU time (s) of `pid`'s threads that are not vCPUs, plus its vhost
/// kernel threads.
fn vmm_cpu(pid: u32) -> f64 {
    let tick = 100.0;
    let ticks = |stat: &str| -> u64 {
        let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
        let f: Vec<&str> = after.split(' ').collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm.starts_with("vcpu") || comm.starts_with("CPU ") {
                continue;
            }
            total += ticks(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default());
        }
    }
    let vhost = format!("vhost-{pid}");
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            if comm.trim() == vhost {
                total += ticks(&std::fs::read_to_string(p.path().join("stat")).unwrap_or_default());
            }
        }
    }
    total as f64 / tick
}

/// One measurement: the figure and the VMM CPU seconds per GiB.
#[derive(Default, Clone, Copy)]
struct Figure {
    mib_s: f64,
    cpu_per_gib: f64,
}

#[derive(Default)]
struct Row {
    g2h1: Figure,
    h2g1: Figure,
    g2h2: Figure,
    h2g2: Figure,
    rr_p50: f64,
    rr_p99: f64,
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// Runs `caravel-netbench ARGS` in the guest; its NETBENCH line.
fn netbench(s: &mut Session, args: &str) -> Result<String, String> {
    let out = guest_cmd_within(s, &format!("caravel-netbench {args}"), TIMEOUT)?;
    out.into_iter()
        .find(|l| l.contains("NETBENCH"))
        .ok_or_else(|| format!("caravel-netbench {args}: no result"))
}

/// The TAP's frame counters as the outer kernel keeps them, the same for
/// every VMM: (to the guest: frames, bytes; from the guest: frames, bytes).
/// A TAP counts what the VMM writes as received and what it reads as sent.
fn frame_counters() -> Option<[u64; 4]> {
    let stat = |n: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{TAP}/statistics/{n}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some([
        stat("tx_packets")?,
        stat("tx_bytes")?,
        stat("rx_packets")?,
        stat("rx_bytes")?,
    ])
}

/// KVM exit counters the VMM reads from its stats fds.
const EXITS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "insn_emulation",
    "irq_injections",
    "request_irq_exits",
    "signal_exits",
    "halt_wakeup",
    "pf_taken",
];

fn stream(
    s: &mut Session,
    pid: u32,
    (vmm, control): (&str, &mut Control),
    (mode, port, n): (&str, u16, u32),
) -> Result<Figure, String> {
    let frames0 = frame_counters();
    let exits0 = control.kvm_counters(EXITS).ok();
    let cpu0 = vmm_cpu(pid);
    let line = netbench(s, &format!("{mode} {HOST_IP}:{port} {SECS} {n}"))?;
    let cpu = vmm_cpu(pid) - cpu0;
    let exits1 = control.kvm_counters(EXITS).ok();
    if let (Some(a), Some(b)) = (frames0, frame_counters()) {
        let avg = |frames: u64, bytes: u64| bytes.checked_div(frames).unwrap_or(0);
        let frames = (b[0] - a[0]) + (b[2] - a[2]);
        let exits = match (exits0, exits1) {
            (Some(x), Some(y)) => EXITS
                .iter()
                .zip(x.iter().zip(&y))
                .map(|(name, (x, y))| {
                    format!("{name} {:.1}", (y - x) as f64 / frames.max(1) as f64)
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => "no KVM counters".into(),
        };
        crate::diag(&format!(
            "{vmm} {mode} x{n}: to the guest {} frames (avg {} B), from the guest {} frames (avg {} B); per frame: {exits}",
            b[0] - a[0],
            avg(b[0] - a[0], b[1] - a[1]),
            b[2] - a[2],
            avg(b[2] - a[2], b[3] - a[3])
        ));
    }
    let bytes = field(&line, "bytes=").unwrap_or(0.0);
    Ok(Figure {
        mib_s: field(&line, "mib_s=").unwrap_or(0.0),
        cpu_per_gib: if bytes > 0.0 {
            cpu / (bytes / f64::from(1u32 << 30))
        } else {
            0.0
        },
    })
}

fn measure(s: &mut Session, pid: u32, vmm: &str, control: &mut Control) -> Result<Row, String> {
    guest_cmd_within(
        s,
        &format!("ifconfig eth0 {GUEST_IP} netmask 255.255.255.0 up && ping -c 1 -W 10 {HOST_IP}"),
        BOOT_TIMEOUT,
    )?;
    // What the guest's TCP pacing runs on.
    let clock = guest_cmd_within(
        s,
        "echo $(cat /sys/devices/system/clockevents/clockevent0/current_device) \
         $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) \
         tsc_deadline=$(grep -c tsc_deadline_timer /proc/cpuinfo) qdisc=$(tc qdisc 2>/dev/null | head -1)",
        BOOT_TIMEOUT,
    )?;
    crate::diag(&format!(
        "{vmm} guest clockevent/clocksource: {}",
        clock.join(" ")
    ));
    let mut row = Row {
        g2h1: stream(s, pid, (vmm, control), ("send", SINK, 1))?,
        h2g1: stream(s, pid, (vmm, control), ("recv", SOURCE, 1))?,
        g2h2: stream(s, pid, (vmm, control), ("send", SINK, 2))?,
        h2g2: stream(s, pid, (vmm, control), ("recv", SOURCE, 2))?,
        ..Row::default()
    };
    let rr = netbench(s, &format!("rr {HOST_IP}:{ECHO} {RR_COUNT}"))?;
    row.rr_p50 = field(&rr, "p50_us=").unwrap_or(0.0);
    row.rr_p99 = field(&rr, "p99_us=").unwrap_or(0.0);
    Ok(row)
}

fn finish(mut s: Session) {
    let _ = s.send("poweroff");
    if s.wait(Duration::from_secs(30)).is_err() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &s.pid().to_string()])
            .status();
        let _ = s.wait(Duration::from_secs(10));
    }
}

fn caravel(env: &Env) -> Result<Row, String> {
    let api = env.tmp.join("bench-net.sock").display().to_string();
    let _ = std::fs::remove_file(&api);
    let net = format!("tap={TAP},ip={HOST_IP},mask=255.255.255.0,num_queues=4");
    let args = crate::guest::caravel_args(
        env,
        "vmlinux",
        "interactive",
        &[
            "--cpus",
            "boot=2",
            "--net",
            &net,
            "--api-socket",
            &format!("path={api}"),
        ],
    );
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    let pid = s.pid();
    let row = measure(&mut s, pid, "caravel", &mut Control::Caravel(api.clone()));
    if let Ok(c) = crate::guest::remote(env, &api, "counters") {
        let v: serde_json::Value = serde_json::from_str(&c).unwrap_or_default();
        crate::diag(&format!("caravel's card: {}", v["virtio-net0"]));
    }
    finish(s);
    row
}

fn qemu(env: &Env, vhost: bool) -> Result<Row, String> {
    let qmp = env.tmp.join("bench-net-qmp.sock").display().to_string();
    let mut args = crate::bench::qemu_guest_args(env, "q35", "256M", 2, CMDLINE, &qmp);
    args.extend(
        [
            "-name",
            "guest,debug-threads=on",
            "-netdev",
            &format!(
                "tap,id=n0,ifname={TAP},script=no,downscript=no,queues=2,vhost={}",
                if vhost { "on" } else { "off" }
            ),
            "-device",
            "virtio-net-pci,netdev=n0,mq=on,vectors=6,romfile=",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut s = Session::spawn(std::path::Path::new("/usr/bin/qemu-system-x86_64"), &args)?;
    if let Err(e) = s.expect("CARAVEL-MARKER", BOOT_TIMEOUT) {
        let why = s.stderr().split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(format!("{e}; QEMU said: {why}"));
    }
    for cmd in [
        vec!["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP],
        vec!["link", "set", TAP, "up"],
    ] {
        let st = std::process::Command::new("ip").args(&cmd).status();
        if !st.is_ok_and(|s| s.success()) {
            finish(s);
            return Err(format!("ip {}: failed", cmd.join(" ")));
        }
    }
    let pid = s.pid();
    let mut control = match Control::qmp_connect(&qmp) {
        Ok(c) => c,
        Err(e) => {
            finish(s);
            return Err(format!("QMP: {e}"));
        }
    };
    let name = if vhost {
        "qemu vhost=on"
    } else {
        "qemu vhost=off"
    };
    let row = measure(&mut s, pid, name, &mut control);
    finish(s);
    row
}

fn cell(f: Figure) -> String {
    format!("{:.1} MiB/s ({:.1} s/GiB)", f.mib_s, f.cpu_per_gib)
}

/// Runs the benchmark and prints a Markdown table (and a TAP plan); with
/// `only`, just the contenders whose name contains it (`Caravel`, `vhost=off`).
pub fn run(env: &Env, prefix: &str, only: Option<&str>) -> Result<(), String> {
    start_servers()?;
    println!("{prefix}TAP version 13");
    println!("{prefix}1..1");
    // None: Caravel; Some(vhost): QEMU.
    let contenders = [
        ("Caravel virtio-net", None),
        ("QEMU 7.2 virtio-net-pci vhost=off", Some(false)),
        ("QEMU 7.2 virtio-net-pci vhost=on", Some(true)),
    ];
    println!("{prefix}| VMM | guest->host 1 stream | host->guest 1 stream | guest->host 2 streams | host->guest 2 streams | 1-byte RR p50 / p99 |");
    println!("{prefix}| --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for (name, qemu_vhost) in contenders {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let result = match qemu_vhost {
            None => caravel(env),
            Some(vhost) => qemu(env, vhost),
        };
        match result {
            Ok(r) => {
                println!(
                    "{prefix}| {name} | {} | {} | {} | {} | {:.0} / {:.0} us |",
                    cell(r.g2h1),
                    cell(r.h2g1),
                    cell(r.g2h2),
                    cell(r.h2g2),
                    r.rr_p50,
                    r.rr_p99
                );
                rows.push((name, r));
            }
            Err(e) => println!(
                "{prefix}| {name} | failed: {} |",
                e.lines().next().unwrap_or("")
            ),
        }
    }
    if let (Some((_, c)), Some((_, q))) = (rows.first(), rows.get(1)) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        println!(
            "{prefix}# Caravel / QEMU vhost=off throughput: g2h {:.2}x, h2g {:.2}x, g2h x2 {:.2}x, h2g x2 {:.2}x; RR p50 {:.2}x",
            ratio(c.g2h1.mib_s, q.g2h1.mib_s),
            ratio(c.h2g1.mib_s, q.h2g1.mib_s),
            ratio(c.g2h2.mib_s, q.g2h2.mib_s),
            ratio(c.h2g2.mib_s, q.h2g2.mib_s),
            ratio(c.rr_p50, q.rr_p50),
        );
    }
    if rows.is_empty() {
        return Err("no contender finished".into());
    }
    println!("{prefix}ok 1 net benchmark");
    Ok(())
}
