//! Robustness scenarios: a guest that reboots in a loop must not make
//! Caravel grow (fds, threads, RSS), and a virtio-blk queue kept full by the
//! guest must keep moving.

use crate::guest::{caravel_args, expect_exit, guest_cmd, BOOT_TIMEOUT};
use crate::session::Session;
use crate::Env;

/// Reboots of the reboot-loop scenario unless the outer VM's command line
/// says `rig.reboots=N` (tests/vm/run.sh passes `RIG_REBOOTS`).
const REBOOTS: usize = 30;
/// Boots before the first measurement (caches, lazily opened files).
const WARM_BOOTS: usize = 5;

/// What /proc says about a process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Result<Usage, String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |k: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        fds,
        threads: field("Threads:") as usize,
        rss_kib: field("VmRSS:"),
    })
}

/// Caravel's arguments for guest test `test` with every kind of device: a
/// 1 MiB virtio-blk disk, virtio-console to a file, virtio-rng and a
/// virtio-mem region with 128 MiB plugged at boot; scratch files are named
/// after `tag`.
fn every_device_args(
    env: &Env,
    test: &str,
    tag: &str,
    extra: &[&str],
) -> Result<Vec<String>, String> {
    let disk = env.tmp.join(format!("rig-{tag}-disk.img"));
    std::fs::write(&disk, vec![0u8; 1 << 20]).map_err(|e| format!("{}: {e}", disk.display()))?;
    let hvc = env.tmp.join(format!("rig-{tag}-hvc.txt"));
    let mut dev = vec![
        "--disk".to_string(),
        format!("path={}", disk.display()),
        "--console".into(),
        format!("file={}", hvc.display()),
        "--rng".into(),
    ];
    dev.extend(extra.iter().map(|s| s.to_string()));
    let dev: Vec<&str> = dev.iter().map(String::as_str).collect();
    let mut args = caravel_args(env, "vmlinux", test, &dev);
    if let Some(m) = args.iter_mut().find(|a| a.as_str() == "size=256M") {
        *m = "size=256M,hotplug_size=512M,hotplugged_size=128M".into();
    }
    Ok(args)
}

/// A guest with every device kind (virtio-blk, -console, -rng, -mem) that
/// reboots as soon as it is up: after the warm-up and after the last
/// reboot, Caravel's fd and thread counts must be equal and its RSS flat.
pub fn reboot_loop(env: &Env) -> Result<String, String> {
    let reboots = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("rig.reboots=")?.parse().ok())
        })
        .unwrap_or(REBOOTS)
        .max(WARM_BOOTS + 1);
    let args = every_device_args(env, "reboot-loop", "reboot", &[])?;
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    let mut first = None;
    for boot in 1..=reboots {
        s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)
            .map_err(|e| format!("boot {boot} of {reboots}: {e}"))?;
        // Keep the transcript small over hundreds of boots.
        s.transcript.clear();
        if boot == WARM_BOOTS {
            first = Some(usage(s.pid())?);
        }
    }
    let last = usage(s.pid())?;
    let first = first.ok_or("no measurement after the warm-up")?;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status();
    expect_exit(&mut s, 0)?;
    let growth = last.rss_kib.saturating_sub(first.rss_kib);
    let summary = format!(
        "boot {WARM_BOOTS} -> boot {reboots}: fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        first.fds, last.fds, first.threads, last.threads, first.rss_kib, last.rss_kib
    );
    // A leaked VM costs at least its fds (a dozen) and a worker thread;
    // RSS may wobble by what the guest touched at its marker.
    if last.fds != first.fds || last.threads != first.threads || growth > 16 << 10 {
        return Err(format!(
            "Caravel grew over {reboots} guest reboots: {summary}"
        ));
    }
    Ok(summary)
}

/// 256 reads in flight on a virtio-blk queue of 256 entries: the device
/// drains whole rings at a time and must keep listening to the driver.
pub fn blk_queue_depth_256(env: &Env) -> Result<String, String> {
    let disk = env.tmp.join("rig-qd-disk.img");
    let f = std::fs::File::create(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    f.set_len(64 << 20)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    drop(f);
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(
            env,
            "vmlinux",
            "interactive",
            &["--disk", &format!("path={}", disk.display())],
        ),
    )?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    let depth = guest_cmd(&mut s, "cat /sys/block/vda/mq/0/nr_tags")?;
    let mut results = Vec::new();
    for (mode, bs) in [("rand", 4096), ("seq", 65536)] {
        let out = guest_cmd(
            &mut s,
            &format!("caravel-blkbench /dev/vda {mode} {bs} 3 256"),
        )?;
        let line = out
            .iter()
            .find(|l| l.starts_with("BLKBENCH"))
            .ok_or_else(|| format!("no BLKBENCH line: {out:?}"))?;
        let ops: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ops="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ops < 256 {
            return Err(format!("256 jobs finished only {ops} reads: {line}"));
        }
        results.push(line.clone());
    }
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    let _ = std::fs::remove_file(&disk);
    Ok(format!(
        "queue tags {}; {}",
        depth.last().map_or("?", |d| d.trim()),
        results.join("; ")
    ))
}

/// Every thread of a Caravel with every kind of device, an API socket and
/// consoles runs under a seccomp filter (`Seccomp: 2`), by default.
pub fn seccomp_on_every_thread(env: &Env) -> Result<String, String> {
    let sock = env.tmp.join("rig-seccomp.sock").display().to_string();
    let _ = std::fs::remove_file(&sock);
    let args = every_device_args(
        env,
        "interactive",
        "seccomp",
        &["--api-socket", &sock, "--cpus", "boot=2"],
    )?;
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    // The API's connection threads exist while a request is served; the
    // plug happens on the virtio-mem worker: exercise both.
    crate::guest::remote(env, &sock, "info")?;
    guest_cmd(&mut s, "cat /proc/meminfo | head -1")?;
    let pid = s.pid();
    let mut threads = Vec::new();
    let mut unfiltered = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())? {
        let t = t.map_err(|e| e.to_string())?.path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_string();
        if mode != "2" {
            unfiltered.push(format!("{} (Seccomp: {mode})", name.trim()));
        }
        threads.push(name.trim().to_string());
    }
    threads.sort();
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    for want in [
        "caravel",
        "vcpu0",
        "vcpu1",
        "api",
        "serial-out",
        "hvc0-out",
        "virtio-blk",
        "virtio-rng",
        "virtio-console",
        "virtio-mem",
    ] {
        if !threads.iter().any(|t| t == want) {
            return Err(format!("no thread {want} to check: {threads:?}"));
        }
    }
    if !unfiltered.is_empty() {
        return Err(format!(
            "threads without a seccomp filter: {unfiltered:?} (all: {threads:?})"
        ));
    }
    Ok(format!(
        "{} threads, all Seccomp: 2: {}",
        threads.len(),
        threads.join(" ")
    ))
}
