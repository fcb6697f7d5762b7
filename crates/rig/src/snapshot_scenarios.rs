//! Snapshot and restore across processes: a guest with virtio-blk,
//! -console, -rng and virtio-mem (512 MiB plugged) runs a workload, is
//! paused and snapshotted, its Caravel is killed, and a new Caravel
//! restores it from the files.
//!
//! The guest's command loop printed its CARAVEL-READY in the old process:
//! the first command after the restore is typed without waiting for one.

use std::time::{Duration, Instant};

use crate::guest::{expect_exit, guest_cmd, remote, remote_snapshot, BOOT_TIMEOUT};
use crate::mem_scenarios::{check_total, mem_total, resize_wait};
use crate::session::Session;
use crate::Env;

const MIB: u64 = 1 << 20;
/// Disk sectors the workload cycles through.
const SECTORS: u64 = 2000;

/// The virtio-net card of the snapshot scenario: a TAP each Caravel
/// creates (the restored one again, after the first one died with it).
const NET_TAP: &str = "crvsnap0";
const NET_HOST: &str = "10.78.0.1";
const NET_MAC: &str = "52:54:00:5a:5a:01";

/// The guest (eth0 set up first when `setup`) pings the TAP's host end
/// with its MAC unchanged.
fn ping_host(s: &mut Session, when: &str, setup: bool) -> Result<(), String> {
    let up = if setup {
        "ifconfig eth0 10.78.0.2 netmask 255.255.255.0 up; "
    } else {
        ""
    };
    let out = crate::guest::guest_cmd_within(
        s,
        &format!("{up}cat /sys/class/net/eth0/address; ping -c 2 -W 10 {NET_HOST}"),
        BOOT_TIMEOUT,
    )
    .map_err(|e| format!("virtio-net {when}: {e}"))?;
    if !out.iter().any(|l| l.trim() == NET_MAC)
        || !out.iter().any(|l| l.contains("2 packets received"))
    {
        return Err(format!("virtio-net {when}: {out:?}"));
    }
    Ok(())
}

/// The lines that are numbers.
/// A host program reaches the guest's vsock listener from before the
/// snapshot: the restored device told the guest its transport was reset
/// and let packets through once the guest had handled that.
fn vsock_after_restore(r: &mut Session, socket: &std::path::Path) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut c = crate::vsock_scenarios::connect(socket, 1300, Duration::from_secs(60))
        .map_err(|e| format!("vsock after the restore: {e}"))?;
    c.write_all(b"vsock-after-restore\n")
        .map_err(|e| e.to_string())?;
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let out = guest_cmd(
        r,
        "for i in 1 2 3 4 5; do [ -s /tmp/vsock-after ] && break; sleep 1; done; cat /tmp/vsock-after",
    )?;
    if !out.iter().any(|l| l.trim() == "vsock-after-restore") {
        return Err(format!("vsock after the restore: the guest got {out:?}"));
    }
    Ok(())
}

pub fn numbers(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .collect()
}

/// The 512-byte sector `n` of `disk`, up to its first newline.
pub fn sector(disk: &std::path::Path, n: u64) -> String {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 512];
    let _ = std::fs::File::open(disk).and_then(|f| f.read_exact_at(&mut b, n * 512));
    String::from_utf8_lossy(&b)
        .split('\n')
        .next()
        .unwrap_or("")
        .to_string()
}

fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// [`restore_with`] on x86_64 (vmlinux, 2 vCPUs).
pub fn restore_in_new_process(env: &Env) -> Result<String, String> {
    restore_with(env, "snap", |env, sock, extra| {
        let mut a = extra.to_vec();
        a.extend(["--cpus", "boot=2"]);
        crate::mem_scenarios::hotplug_args(env, sock, "", &a)
    })
}

/// [`restore_with`] on aarch64 (Image, 2 vCPUs, GICv3 + ITS).
pub fn restore_in_new_process_arm64(env: &Env) -> Result<String, String> {
    restore_with(env, "arm64-snap", crate::arm64_scenarios::hotplug_args)
}

/// The caravel arguments of an interactive guest with a 1 GiB virtio-mem
/// region and the API on a socket, plus `extra`.
type StartArgs = fn(&Env, &str, &[&str]) -> Vec<String>;

/// Pause, snapshot, kill, restore in a new process, resume: the guest goes
/// on (counter, disk, serial, hvc0, MemTotal, clock), and resizes after.
fn restore_with(env: &Env, tag: &str, start: StartArgs) -> Result<String, String> {
    let disk = env.tmp.join(format!("rig-{tag}-disk.img"));
    std::fs::write(&disk, vec![0u8; (SECTORS * 512) as usize]).map_err(|e| e.to_string())?;
    let hvc = env.tmp.join(format!("rig-{tag}-hvc0.log"));
    let hvc_restored = env.tmp.join(format!("rig-{tag}-hvc0-restored.log"));
    let snap = env.tmp.join(format!("rig-{tag}"));
    let _ = std::fs::remove_dir_all(&snap);
    for f in [&hvc, &hvc_restored] {
        let _ = std::fs::remove_file(f);
    }
    let sock = env
        .tmp
        .join(format!("rig-{tag}.sock"))
        .display()
        .to_string();
    let sock2 = env
        .tmp
        .join(format!("rig-{tag}2.sock"))
        .display()
        .to_string();
    let _ = std::fs::remove_file(&sock2);
    let vsock = env.tmp.join(format!("rig-{tag}-vsock.sock"));
    let vsock_opt = format!("cid=3,socket={}", vsock.display());
    let args = start(
        env,
        &sock,
        &[
            "--rng",
            "--disk",
            &format!("path={}", disk.display()),
            "--console",
            &format!("file={}", hvc.display()),
            "--net",
            &format!("tap={NET_TAP},ip={NET_HOST},mac={NET_MAC}"),
            "--vsock",
            &vsock_opt,
        ],
    );
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    s.expect("CARAVEL-MARKER", Duration::from_secs(120))?;
    let base = mem_total(&mut s)?;
    ping_host(&mut s, "before the snapshot", true)?;
    // A vsock listener that must outlive the restore (the transport reset
    // ends connections, not listeners).
    guest_cmd(
        &mut s,
        "caravel-vsock recv 1300 > /tmp/vsock-after 2>/dev/null &",
    )?;
    resize_wait(env, &sock, "768M", 60)?;
    check_total(&mut s, base, 512 * MIB, "before the snapshot")?;
    // The workload: a counter in guest memory (replaced by a rename, so a
    // snapshot never catches the file empty), each value written to its
    // disk sector (fsync'd) and to hvc0, until /tmp/stop appears.
    guest_cmd(
        &mut s,
        &format!(
            "(i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; \
             echo \"block $i\" | dd of=/dev/vda bs=512 seek=$((i % {SECTORS})) conv=notrunc,fsync 2>/dev/null; \
             echo \"hvc $i\" > /dev/hvc0; sleep 0.05; done) >/dev/null 2>&1 &"
        ),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let before = numbers(&guest_cmd(&mut s, "cat /tmp/count; date +%s")?);
    let [count_before, clock_before] = before[..] else {
        return Err(format!("unexpected counter/clock output: {before:?}"));
    };
    if count_before == 0 {
        return Err("the workload did not count".into());
    }
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;

    remote(env, &sock, "pause")?;
    let paused_at = Instant::now();
    let url = format!("file://{}", snap.display());
    let t0 = Instant::now();
    remote_snapshot(env, &sock, &url)?;
    let snapshot_time = t0.elapsed();
    let state_bytes = std::fs::metadata(snap.join("state.json")).map_or(0, |m| m.len());
    let mem_file = snap.join("memory");
    let mem_size = std::fs::metadata(&mem_file).map_or(0, |m| m.len());
    let mem_alloc = allocated(&mem_file);
    // The old process dies as a crashed host process would.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &s.pid().to_string()])
        .status();
    let _ = s.wait(Duration::from_secs(10));
    drop(s);
    let _ = std::fs::remove_file(&sock);

    let started = Instant::now();
    let mut r = Session::spawn(
        &env.bin("caravel"),
        &[
            "--restore".to_string(),
            format!("source_url={url}"),
            "--api-socket".into(),
            format!("path={sock2}"),
            "--console".into(),
            format!("file={}", hvc_restored.display()),
        ],
    )?;
    let mut api_ready = None;
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(info) = remote(env, &sock2, "info") {
            let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
            // The API answers while the VM is being restored ("Created").
            if v["state"] == "Created" {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if v["state"] != "Paused" {
                return Err(format!("a restored VM without resume=on is {}", v["state"]));
            }
            api_ready = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let api_ready =
        api_ready.ok_or_else(|| format!("the restored Caravel never answered\n{}", r.tail()))?;
    let resumed = Instant::now();
    remote(env, &sock2, "resume")?;
    r.send("cat /tmp/count; date +%s")?;
    r.expect("CARAVEL-GOT cat /tmp/count", BOOT_TIMEOUT)?;
    let first_output = resumed.elapsed();
    let (done, _) = r.expect("CARAVEL-DONE", BOOT_TIMEOUT)?;
    if !done.contains("rc=0") {
        return Err(format!("first command after restore failed: {done}"));
    }
    let after: Vec<u64> = numbers(&r.transcript);
    let [.., count_after, clock_after] = after[..] else {
        return Err(format!(
            "no counter/clock after restore: {:?}",
            r.transcript
        ));
    };
    let host_gap = paused_at.elapsed().as_secs() + 2;
    if count_after < count_before {
        return Err(format!(
            "the counter went back from {count_before} to {count_after}"
        ));
    }
    if clock_after < clock_before || clock_after > clock_before + host_gap + 2 {
        return Err(format!(
            "guest clock {clock_before} -> {clock_after} across a {host_gap} s pause"
        ));
    }
    std::thread::sleep(Duration::from_secs(1));
    let later = numbers(&guest_cmd(&mut r, "cat /tmp/count")?);
    if later.first().is_none_or(|&c| c <= count_after) {
        return Err(format!(
            "the workload stopped after restore: {later:?} after {count_after}"
        ));
    }
    let last = numbers(&guest_cmd(
        &mut r,
        "touch /tmp/stop; sleep 1; cat /tmp/count",
    )?);
    let Some(&last) = last.first() else {
        return Err("no final count".into());
    };
    let on_disk = sector(&disk, last % SECTORS);
    if on_disk != format!("block {last}") {
        return Err(format!("disk sector of {last} holds {on_disk:?}"));
    }
    let hvc_text = std::fs::read_to_string(&hvc_restored).unwrap_or_default();
    if !hvc_text.contains(&format!("hvc {last}")) {
        return Err(format!(
            "hvc0 output did not continue into the restored process (no 'hvc {last}'; {} bytes)",
            hvc_text.len()
        ));
    }
    ping_host(&mut r, "after the restore", false)?;
    vsock_after_restore(&mut r, &vsock)?;
    check_total(&mut r, base, 512 * MIB, "after the restore")?;
    resize_wait(env, &sock2, "1024M", 60)?;
    check_total(&mut r, base, 768 * MIB, "grown after the restore")?;
    resize_wait(env, &sock2, "512M", 60)?;
    check_total(&mut r, base, 256 * MIB, "shrunk after the restore")?;
    r.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    r.send("poweroff")?;
    expect_exit(&mut r, 0)?;
    Ok(format!(
        "snapshot {} ms (state {} KiB, memory file {} MiB apparent / {} MiB allocated); \
         restore: API answers Paused {} ms after process start, first guest output {} ms after resume; \
         counter {count_before} -> {count_after} -> {last}, disk and hvc0 continue, clock +{} s over a {} s gap; \
         resize 1024M and 512M after; virtio-net pings the host from a recreated TAP; \
         a vsock listener from before the snapshot is reached after the transport reset",
        snapshot_time.as_millis(),
        state_bytes / 1024,
        mem_size / MIB,
        mem_alloc / MIB,
        api_ready.as_millis(),
        first_output.as_millis(),
        clock_after - clock_before,
        host_gap - 2
    ))
}
