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

/// Caravel with `memory` (a `--memory` value), `--balloon balloon`, an API
/// socket named after `tag` and the interactive guest.
pub fn start(
    env: &Env,
    tag: &str,
    memory: &str,
    balloon: &str,
    cmdline_extra: &str,
) -> Result<(Session, String), String> {
    let sock = env.tmp.join(format!("rig-{tag}.sock")).display().to_string();
    let _ = std::fs::remove_file(&sock);
    let args: Vec<String> = [
        "--kernel",
        &env.guest("vmlinux"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        &format!("console=ttyS0 quiet panic=-1 caravel.test=interactive{cmdline_extra}"),
        "--memory",
        memory,
        "--balloon",
        balloon,
        "--api-socket",
        &format!("path={sock}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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

/// The guest's OOM kills so far (`/proc/vmstat` `oom_kill`).
pub fn oom_kills(s: &mut Session) -> Result<u64, String> {
    let lines = guest_cmd(s, "grep '^oom_kill ' /proc/vmstat")?;
    lines
        .iter()
        .find_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .ok_or_else(|| format!("no oom_kill in {lines:?}"))
}

/// `caravel-remote resize --balloon SIZE --wait`.
pub fn resize_balloon(env: &Env, sock: &str, size: &str) -> Result<String, String> {
    let out = std::process::Command::new(env.bin("caravel-remote"))
        .args([
            "--api-socket",
            sock,
            "resize",
            "--balloon",
            size,
            "--wait",
            "--timeout",
            "60",
        ])
        .output()
        .map_err(|e| format!("cannot run caravel-remote: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text.trim().to_string())
    } else {
        Err(format!("resize --balloon {size}: {}", text.trim()))
    }
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
    let (mut s, sock) = start(
        env,
        "balloon",
        "size=512M",
        "size=0,deflate_on_oom=on,stats_interval=1",
        "",
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
    let actual = info["memory"]["balloon"]["actual"].as_u64().unwrap_or(u64::MAX);
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
    let (mut s, sock) = start(env, "balloon-fpr", "size=1G", "size=0,free_page_reporting=on", "")?;
    let rss0 = rss(s.pid());
    touch_and_free(&mut s, 512)?;
    let freed_at = Instant::now();
    let rss_peak = rss(s.pid());
    let back = wait_for(Duration::from_secs(20), || {
        rss(s.pid()) < rss0 + 64 * MIB
    });
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
