//! virtio-mem scenarios: resizing a running guest through the API, with the
//! guest's MemTotal and Caravel's RSS checked at each step.

use std::time::Duration;

use crate::guest::{expect_exit, guest_cmd, remote, BOOT_TIMEOUT};
use crate::session::Session;
use crate::Env;

const MIB: u64 = 1 << 20;

/// Caravel with 256 MiB boot RAM, a 1 GiB hotplug region and an API socket.
pub fn start(env: &Env, sock: &str, memory_extra: &str) -> Result<Session, String> {
    start_with(env, sock, memory_extra, &[])
}

/// [`start`] with more caravel arguments.
pub fn start_with(
    env: &Env,
    sock: &str,
    memory_extra: &str,
    extra: &[&str],
) -> Result<Session, String> {
    let args = hotplug_args(env, sock, memory_extra, extra);
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    Ok(s)
}

/// The arguments of [`start_with`] (a stale socket is removed).
pub fn hotplug_args(env: &Env, sock: &str, memory_extra: &str, extra: &[&str]) -> Vec<String> {
    let _ = std::fs::remove_file(sock);
    let mut args: Vec<String> = [
        "--kernel",
        &env.guest("vmlinux"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        "console=ttyS0 quiet panic=-1 memhp_default_state=online_movable caravel.test=interactive",
        "--memory",
        &format!("size=256M,hotplug_method=virtio-mem,hotplug_size=1G{memory_extra}"),
        "--api-socket",
        &format!("path={sock}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The guest's MemTotal in bytes.
pub fn mem_total(s: &mut Session) -> Result<u64, String> {
    let lines = guest_cmd(s, "grep MemTotal /proc/meminfo")?;
    lines
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no MemTotal in {lines:?}"))
}

/// Resident memory of a process in bytes (VmRSS).
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// `caravel-remote resize --memory SIZE --wait`; returns its output line.
pub fn resize_wait(env: &Env, sock: &str, size: &str, timeout: u32) -> Result<String, String> {
    remote_resize(env, sock, "--memory", size, timeout)
}

/// `caravel-remote resize FLAG SIZE --wait` (`--memory` or `--balloon`);
/// returns its output line.
pub fn remote_resize(
    env: &Env,
    sock: &str,
    flag: &str,
    size: &str,
    timeout: u32,
) -> Result<String, String> {
    let out = std::process::Command::new(env.bin("caravel-remote"))
        .args([
            "--api-socket",
            sock,
            "resize",
            flag,
            size,
            "--wait",
            "--timeout",
            &timeout.to_string(),
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
        Err(format!(
            "resize {flag} {size} failed ({}): {}",
            out.status,
            text.trim()
        ))
    }
}

/// Waits (up to 10 s) for the guest's MemTotal to be `base + added` within
/// 8 MiB: the Linux driver onlines a memory block after plugging its blocks,
/// so MemTotal trails plugged_size by a little.
pub fn check_total(s: &mut Session, base: u64, added: u64, what: &str) -> Result<u64, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = mem_total(s)?;
        let got = t as i64 - base as i64;
        if (got - added as i64).unsigned_abs() <= 8 * MIB {
            return Ok(t);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{what}: MemTotal {} MiB, expected boot {} MiB + {} MiB",
                t / MIB,
                base / MIB,
                added / MIB
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fills `mib` MiB of anonymous memory in the guest (every page written).
fn fill(s: &mut Session, mib: u64) -> Result<(), String> {
    guest_cmd(
        s,
        &format!("dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>/dev/null"),
    )?;
    Ok(())
}

fn grow_fill_shrink(
    env: &Env,
    extra: &str,
    sock_name: &str,
) -> Result<(Session, String, u64, Vec<String>), String> {
    let sock = env.tmp.join(sock_name).display().to_string();
    let mut s = start(env, &sock, extra)?;
    let base = mem_total(&mut s)?;
    let mut notes = vec![];
    notes.push(resize_wait(env, &sock, "768M", 30)?);
    check_total(&mut s, base, 512 * MIB, "after resize to 768M")?;
    let rss_before_fill = rss(s.pid());
    fill(&mut s, 448)?;
    let rss_full = rss(s.pid());
    if rss_full < rss_before_fill + 400 * MIB {
        return Err(format!(
            "filling 448 MiB raised RSS only from {} to {} MiB",
            rss_before_fill / MIB,
            rss_full / MIB
        ));
    }
    notes.push(resize_wait(env, &sock, "256M", 60)?);
    check_total(&mut s, base, 0, "after resize back to 256M")?;
    let rss_after = rss(s.pid());
    if rss_full < rss_after + 400 * MIB {
        return Err(format!(
            "RSS only dropped from {} to {} MiB after unplug",
            rss_full / MIB,
            rss_after / MIB
        ));
    }
    notes.push(format!(
        "RSS {} -> {} -> {} MiB",
        rss_before_fill / MIB,
        rss_full / MIB,
        rss_after / MIB
    ));
    Ok((s, sock, base, notes))
}

/// Anonymous memory: grow, fill, shrink (RSS drops), full size and back,
/// reboot with memory plugged.
pub fn resize_anonymous(env: &Env) -> Result<String, String> {
    let (mut s, sock, base, mut notes) = grow_fill_shrink(env, "", "rig-mem.sock")?;
    notes.push(resize_wait(env, &sock, "1280M", 60)?);
    check_total(&mut s, base, 1024 * MIB, "after resize to the full 1280M")?;
    notes.push(resize_wait(env, &sock, "256M", 60)?);
    check_total(&mut s, base, 0, "after resize from full back to 256M")?;
    // Reboot with memory plugged: the new kernel sees plugged_size 0 and plugs
    // the standing request again.
    resize_wait(env, &sock, "768M", 30)?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("reboot")?;
    s.expect("CARAVEL-GOT reboot", BOOT_TIMEOUT)?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    notes.push(format!(
        "after reboot: {}",
        resize_wait(env, &sock, "768M", 30)?
    ));
    check_total(
        &mut s,
        base,
        512 * MIB,
        "after reboot with 512 MiB requested",
    )?;
    resize_wait(env, &sock, "256M", 60)?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    Ok(notes.join("; "))
}

/// memfd backing (`shared=on`): unplugged memory is punched out of the memfd.
pub fn resize_shared(env: &Env) -> Result<String, String> {
    let (mut s, _sock, _base, notes) = grow_fill_shrink(env, ",shared=on", "rig-mem-shared.sock")?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    Ok(notes.join("; "))
}

/// A guest without the driver (unbound through sysfs, which resets the
/// device as an unloaded driver would): `--wait` reports it instead of hanging.
pub fn no_driver(env: &Env) -> Result<String, String> {
    let sock = env.tmp.join("rig-mem-nodrv.sock").display().to_string();
    let mut s = start(env, &sock, "")?;
    guest_cmd(&mut s, "d=/sys/bus/virtio/drivers/virtio_mem; for v in $d/virtio*; do echo -n $(basename $v) > $d/unbind; done")?;
    let t0 = std::time::Instant::now();
    let err = match resize_wait(env, &sock, "768M", 3) {
        Ok(out) => return Err(format!("resize --wait succeeded without a driver: {out}")),
        Err(e) => e,
    };
    if !err.contains("timed out")
        || !err.contains("has not started a virtio-mem driver")
        || t0.elapsed() > Duration::from_secs(10)
    {
        return Err(format!("unclear or late report: {err}"));
    }
    let info: serde_json::Value =
        serde_json::from_str(&remote(env, &sock, "info")?).map_err(|e| e.to_string())?;
    if info["memory"]["hotplug"]["driver_active"] != false
        || info["memory"]["hotplug"]["requested_size"] != 512 * MIB
    {
        return Err(format!("vm.info: {}", info["memory"]));
    }
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    Ok(err.lines().last().unwrap_or("").to_string())
}
