//! virtio-balloon scenarios: inflating takes memory from the guest and
//! gives it back to the host, deflating returns it, a guest with
//! `deflate_on_oom=on` allocates past the balloon without an OOM kill, and
//! free page reporting hands freed guest memory back without any resize.

use std::time::{Duration, Instant};

use crate::guest::{expect_exit, guest_cmd, guest_cmd_within, remote, BOOT_TIMEOUT};
use crate::mem_scenarios::rss;
use crate::session::Session;
use crate::Env;

const MIB: u64 = 1 << 20;

/// Which guest a scenario boots: the x86_64 `vmlinux` on COM1 or the
/// arm64 `Image` on the PL011.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64.
    X86,
    /// aarch64.
    Arm64,
}

/// Caravel's arguments for the interactive guest of `arch` with `memory`
/// (a `--memory` value), `--balloon balloon` if given, an API socket at
/// `sock` (a stale one is removed) and `extra`.
pub fn caravel_args(
    env: &Env,
    arch: Arch,
    memory: &str,
    balloon: Option<&str>,
    sock: &str,
    extra: &[&str],
) -> Vec<String> {
    let (kernel, console) = match arch {
        Arch::X86 => ("vmlinux", "ttyS0"),
        Arch::Arm64 => ("Image", "ttyAMA0"),
    };
    let _ = std::fs::remove_file(sock);
    let cmdline = format!(
        "console={console} quiet panic=-1 memhp_default_state=online_movable caravel.test=interactive"
    );
    let mut args: Vec<String> = [
        "--kernel",
        &env.guest(kernel),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        &cmdline,
        "--memory",
        memory,
        "--api-socket",
        &format!("path={sock}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(b) = balloon {
        args.extend(["--balloon".to_string(), b.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Caravel with `memory` (a `--memory` value), `--balloon balloon`, an API
/// socket named after `tag` and the interactive guest.
pub fn start(
    env: &Env,
    arch: Arch,
    tag: &str,
    memory: &str,
    balloon: &str,
) -> Result<(Session, String), String> {
    let sock = env
        .tmp
        .join(format!("rig-{tag}.sock"))
        .display()
        .to_string();
    let args = caravel_args(env, arch, memory, Some(balloon), &sock, &[]);
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    Ok((s, sock))
}

/// A `/proc/meminfo` field of the guest, in bytes.
pub fn meminfo(s: &mut Session, field: &str) -> Result<u64, String> {
    let lines = guest_cmd(s, &format!("grep '^{field}:' /proc/meminfo"))?;
    lines
        .iter()
        .find_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no {field} in {lines:?}"))
}

/// The guest's OOM kills so far (its kernel log's "Killed process" lines).
pub fn oom_kills(s: &mut Session) -> Result<u64, String> {
    let lines = guest_cmd(s, "echo OOM-KILLS $(dmesg | grep -c 'Killed process')")?;
    lines
        .iter()
        .find_map(|l| l.strip_prefix("OOM-KILLS ")?.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no OOM-KILLS line in {lines:?}"))
}

/// `caravel-remote resize --balloon SIZE --wait`.
pub fn resize_balloon(env: &Env, sock: &str, size: &str) -> Result<String, String> {
    crate::mem_scenarios::remote_resize(env, sock, "--balloon", size, 60)
}

/// One counter of the `balloon` group of `vm.counters`.
pub fn balloon_counter(env: &Env, sock: &str, name: &str) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_str(&remote(env, sock, "counters")?).map_err(|e| e.to_string())?;
    v["balloon"][name]
        .as_u64()
        .ok_or_else(|| format!("no balloon counter {name} in {v}"))
}

/// Touches `mib` MiB in the guest and frees it again (the pages stay
/// resident on the host unless something returns them).
fn touch_and_free(s: &mut Session, mib: u64) -> Result<(), String> {
    guest_cmd_within(
        s,
        &format!("caravel-memhog hold {mib}"),
        Duration::from_secs(120),
    )
    .map(|_| ())
}

/// Waits up to `within` for `f` to hold; returns how long it took.
fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn poweroff(s: &mut Session) -> Result<(), String> {
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(s, 0).map(|_| ())
}

/// Inflate by 256 MiB (guest MemAvailable and host RSS drop), deflate,
/// then a guest with `deflate_on_oom=on` allocates past its balloon and
/// gets the memory back instead of an OOM kill; balloon-stats answers.
pub fn inflate_deflate_oom(env: &Env) -> Result<String, String> {
    inflate_deflate_oom_on(env, Arch::X86)
}

/// [`inflate_deflate_oom`] on the arm64 guest.
pub fn inflate_deflate_oom_arm64(env: &Env) -> Result<String, String> {
    inflate_deflate_oom_on(env, Arch::Arm64)
}

fn inflate_deflate_oom_on(env: &Env, arch: Arch) -> Result<String, String> {
    let (mut s, sock) = start(
        env,
        arch,
        "balloon",
        "size=512M",
        "size=0,deflate_on_oom=on,stats_interval=1",
    )?;
    let mut notes = Vec::new();
    // Make most of guest memory resident on the host first.
    touch_and_free(&mut s, 400)?;
    let avail0 = meminfo(&mut s, "MemAvailable")?;
    let rss0 = rss(s.pid());
    resize_balloon(env, &sock, "256M")?;
    let avail1 = meminfo(&mut s, "MemAvailable")?;
    let rss1 = rss(s.pid());
    if avail0 < avail1 + 240 * MIB {
        return Err(format!(
            "inflating 256 MiB moved MemAvailable only from {} to {} MiB",
            avail0 / MIB,
            avail1 / MIB
        ));
    }
    if rss0 < rss1 + 128 * MIB {
        return Err(format!(
            "inflating 256 MiB moved host RSS only from {} to {} MiB",
            rss0 / MIB,
            rss1 / MIB
        ));
    }
    notes.push(format!(
        "inflate 256M: MemAvailable {} -> {} MiB, RSS {} -> {} MiB",
        avail0 / MIB,
        avail1 / MIB,
        rss0 / MIB,
        rss1 / MIB
    ));
    resize_balloon(env, &sock, "0")?;
    let avail2 = meminfo(&mut s, "MemAvailable")?;
    if avail2 + 16 * MIB < avail0 {
        return Err(format!(
            "after deflating MemAvailable is {} MiB (was {} MiB)",
            avail2 / MIB,
            avail0 / MIB
        ));
    }
    notes.push(format!("deflate: MemAvailable {} MiB", avail2 / MIB));
    let stats: serde_json::Value = serde_json::from_str(&remote(env, &sock, "balloon-stats")?)
        .map_err(|e| format!("balloon-stats: {e}"))?;
    let total = stats["total_memory"].as_u64().unwrap_or(0);
    if total < 400 * MIB || stats["available_memory"].as_u64().is_none() {
        return Err(format!("balloon-stats: {stats}"));
    }
    // 300 MiB of 512 in the balloon, then a 320 MiB allocation.
    resize_balloon(env, &sock, "300M")?;
    let kills0 = oom_kills(&mut s)?;
    touch_and_free(&mut s, 320).map_err(|e| format!("allocating past the balloon: {e}"))?;
    let kills1 = oom_kills(&mut s)?;
    let info: serde_json::Value =
        serde_json::from_str(&remote(env, &sock, "info")?).map_err(|e| e.to_string())?;
    let actual = info["memory"]["balloon"]["actual"]
        .as_u64()
        .unwrap_or(u64::MAX);
    if kills1 != kills0 || actual >= 300 * MIB {
        return Err(format!(
            "allocating past the balloon: oom_kill {kills0} -> {kills1}, balloon actual {} MiB",
            actual / MIB
        ));
    }
    notes.push(format!(
        "320M past a 300M balloon: no OOM kill, balloon deflated to {} MiB",
        actual / MIB
    ));
    poweroff(&mut s)?;
    Ok(notes.join("; "))
}

/// Free page reporting: the guest touches 512 MiB and frees it; host RSS
/// falls back without any resize. Returns the time it took.
pub fn free_page_reporting(env: &Env) -> Result<String, String> {
    free_page_reporting_on(env, Arch::X86)
}

/// [`free_page_reporting`] on the arm64 guest.
pub fn free_page_reporting_arm64(env: &Env) -> Result<String, String> {
    free_page_reporting_on(env, Arch::Arm64)
}

fn free_page_reporting_on(env: &Env, arch: Arch) -> Result<String, String> {
    let (mut s, sock) = start(
        env,
        arch,
        "balloon-fpr",
        "size=1G",
        "size=0,free_page_reporting=on",
    )?;
    let rss0 = rss(s.pid());
    touch_and_free(&mut s, 512)?;
    let freed_at = Instant::now();
    let rss_peak = rss(s.pid());
    let back = wait_for(Duration::from_secs(20), || rss(s.pid()) < rss0 + 64 * MIB);
    let rss1 = rss(s.pid());
    let reported = balloon_counter(env, &sock, "reported_bytes")?;
    let Some(_) = back else {
        return Err(format!(
            "RSS {} MiB before, {} MiB after touching 512 MiB, still {} MiB 20 s after it was freed ({} MiB reported)",
            rss0 / MIB,
            rss_peak / MIB,
            rss1 / MIB,
            reported / MIB
        ));
    };
    if reported < 448 * MIB {
        return Err(format!("only {} MiB reported", reported / MIB));
    }
    let took = freed_at.elapsed();
    poweroff(&mut s)?;
    Ok(format!(
        "RSS {} -> {} -> {} MiB, back {:.1} s after the guest freed 512 MiB ({} MiB reported)",
        rss0 / MIB,
        rss_peak / MIB,
        rss1 / MIB,
        took.as_secs_f64(),
        reported / MIB
    ))
}

/// The working-set ramp both the autopilot scenario and its benchmark
/// run: 256 MiB, up to 1 GiB, back to 256 MiB (`caravel-memhog ramp`).
pub const RAMP: &str = "caravel-memhog ramp 32 1000 256:6 1024:12 256:30";

/// One second of a ramp: time, the guest's working set (MiB, from its
/// last `MEMHOG` line), host RSS and the plugged size (MiB).
#[derive(Debug, Clone, Copy)]
pub struct RampPoint {
    /// Seconds since the ramp started.
    pub t: f64,
    /// The guest's working set, MiB.
    pub ws: u64,
    /// Caravel's RSS, MiB.
    pub rss: u64,
    /// virtio-mem plugged size, MiB (0 without a region).
    pub plugged: u64,
}

/// Starts [`RAMP`] in the guest and samples once a second until it is
/// done; `plugged` reads the plugged size.
pub fn run_ramp(
    s: &mut Session,
    mut plugged: impl FnMut() -> u64,
) -> Result<Vec<RampPoint>, String> {
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    let from = s.transcript.len();
    s.send(RAMP)?;
    let start = Instant::now();
    let mut points = Vec::new();
    let mut ws = 0;
    loop {
        let done = s.expect("MEMHOG done", Duration::from_secs(1)).is_ok();
        if let Some(w) = s.transcript.iter().rev().find_map(|l| {
            l.split("ws=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }) {
            ws = w;
        }
        // busybox sh says "Killed" when the OOM killer took memhog.
        if s.transcript[from..]
            .iter()
            .any(|l| l.trim_start().starts_with("Killed") || l.contains("mmap failed"))
        {
            return Err(format!("the guest's working set was killed\n{}", s.tail()));
        }
        points.push(RampPoint {
            t: start.elapsed().as_secs_f64(),
            ws,
            rss: rss(s.pid()) / MIB,
            plugged: plugged() / MIB,
        });
        if done {
            return Ok(points);
        }
        if start.elapsed() > Duration::from_secs(240) {
            return Err(format!("the ramp did not finish in 240 s\n{}", s.tail()));
        }
    }
}

/// The autopilot's arguments: 256 MiB boot, a 1 GiB region it sizes, the
/// balloon for statistics and free page reporting.
pub const AUTOSIZE_MEMORY: &str = "size=256M,hotplug_size=1G,autosize=on";
/// The balloon the autopilot reads.
pub const AUTOSIZE_BALLOON: &str = "size=0,free_page_reporting=on,stats_interval=1";

/// The plugged size from `vm.info`.
pub fn plugged_size(env: &Env, sock: &str) -> u64 {
    remote(env, sock, "info")
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["memory"]["hotplug"]["plugged_size"].as_u64())
        .unwrap_or(0)
}

/// The memory autopilot follows a 256 MiB -> 1 GiB -> 256 MiB working set:
/// it plugs ahead of the guest, which is never OOM-killed, and unplugs
/// after the set shrinks; every decision is an event and in `vm.info`.
pub fn autosize_ramp(env: &Env) -> Result<String, String> {
    let events = env.tmp.join("rig-autosize.events");
    let _ = std::fs::remove_file(&events);
    let (mut s, sock) = start_with_events(env, &events)?;
    let kills0 = oom_kills(&mut s)?;
    let points = run_ramp(&mut s, || plugged_size(env, &sock)).map_err(|e| {
        let decisions: Vec<String> = std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"autosize\""))
            .map(str::to_string)
            .collect();
        let info = remote(env, &sock, "info").unwrap_or_default();
        let auto = serde_json::from_str::<serde_json::Value>(&info)
            .map(|v| v["memory"]["autosize"].to_string())
            .unwrap_or(info);
        format!("{e}\nautosize: {auto}\ndecisions: {decisions:#?}")
    })?;
    let kills1 = oom_kills(&mut s)?;
    let peak = points.iter().map(|p| p.plugged).max().unwrap_or(0);
    let end = points.last().copied().ok_or("no samples")?;
    let trace: Vec<String> = points
        .iter()
        .step_by(4)
        .map(|p| {
            format!(
                "{:.0}s ws {} plugged {} rss {}",
                p.t, p.ws, p.plugged, p.rss
            )
        })
        .collect();
    if kills1 != kills0 {
        return Err(format!(
            "the guest OOM-killed {} time(s): {trace:?}",
            kills1 - kills0
        ));
    }
    if peak < 768 {
        return Err(format!(
            "plugged only {peak} MiB for a 1 GiB working set: {trace:?}"
        ));
    }
    if end.plugged > 256 {
        return Err(format!(
            "still {} MiB plugged after the working set went back to 256 MiB: {trace:?}",
            end.plugged
        ));
    }
    let info: serde_json::Value =
        serde_json::from_str(&remote(env, &sock, "info")?).map_err(|e| e.to_string())?;
    let auto = &info["memory"]["autosize"];
    if auto["samples"].as_u64().unwrap_or(0) < 10 || auto["last"]["reason"] != "idle" {
        return Err(format!("vm.info autosize: {auto}"));
    }
    let decisions = std::fs::read_to_string(&events)
        .map_err(|e| format!("{}: {e}", events.display()))?
        .lines()
        .filter(|l| l.contains("\"autosize\""))
        .count();
    if decisions < 2 {
        return Err(format!("{decisions} autosize events"));
    }
    poweroff(&mut s)?;
    Ok(format!(
        "no OOM kill; plugged peak {peak} MiB, end {} MiB; {decisions} decisions; RSS end {} MiB for ws {} MiB",
        end.plugged, end.rss, end.ws
    ))
}

/// Caravel with the autopilot and an event monitor writing to `events`.
fn start_with_events(env: &Env, events: &std::path::Path) -> Result<(Session, String), String> {
    let sock = env.tmp.join("rig-autosize.sock").display().to_string();
    let monitor = format!("path={}", events.display());
    let args = caravel_args(
        env,
        Arch::X86,
        AUTOSIZE_MEMORY,
        Some(AUTOSIZE_BALLOON),
        &sock,
        &["--event-monitor", &monitor],
    );
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    Ok((s, sock))
}
