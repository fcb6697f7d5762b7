//! Live migration between Caravel processes in the outer VM: a guest with
//! virtio-blk, -console, -rng and virtio-mem (256 MiB of 1 GiB plugged)
//! keeps rewriting 64 MiB of tmpfs (each 16 MiB file with its md5 next to
//! it) and appending a counter to its disk and hvc0, and moves
//! A -> B over `unix:` and B -> C over `tcp:127.0.0.1`, each source exiting
//! 0. Then a migration C -> D is cut by killing D mid-stream: C's guest
//! runs on. At the end every buffer still matches its checksum (pages
//! dirtied during pre-copy were sent again), the disk holds the last count,
//! hvc0 continued in C's file, and virtio-mem resizes on the destination.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::guest::{expect_exit, guest_cmd, remote, BOOT_TIMEOUT};
use crate::mem_scenarios::{check_total, mem_total, resize_wait};
use crate::session::Session;
use crate::snapshot_scenarios::{numbers, sector};
use crate::Env;

const MIB: u64 = 1 << 20;
/// Disk sectors the counter cycles through.
const SECTORS: u64 = 2000;

/// Arguments of an interactive guest with a 1 GiB virtio-mem region and
/// the API on a socket, plus `extra`.
type StartArgs = fn(&Env, &str, &[&str]) -> Vec<String>;

/// x86_64: vmlinux, 2 vCPUs, private memory, copied on every hop.
pub fn live_migration(env: &Env) -> Result<String, String> {
    let start: StartArgs = |env, sock, extra| {
        let mut a = extra.to_vec();
        a.extend(["--cpus", "boot=2"]);
        crate::mem_scenarios::hotplug_args(env, sock, "", &a)
    };
    migrate_with(env, "mig", start, &[])
}

/// x86_64 with `shared=on` memory: the first hop is local (`--local`: the
/// memfds are handed over as SCM_RIGHTS, nothing copied, no pre-copy); the
/// second copies the shared pages over TCP as any other.
pub fn live_migration_local(env: &Env) -> Result<String, String> {
    let start: StartArgs = |env, sock, extra| {
        let mut a = extra.to_vec();
        a.extend(["--cpus", "boot=2"]);
        crate::mem_scenarios::hotplug_args(env, sock, ",shared=on", &a)
    };
    migrate_with(env, "mig-local", start, &["--local"])
}

/// aarch64: Image, 2 vCPUs, GICv3 + ITS (MSI-X through the ITS); private
/// memory, copied on every hop.
pub fn live_migration_arm64(env: &Env) -> Result<String, String> {
    migrate_with(env, "arm64-mig", crate::arm64_scenarios::hotplug_args, &[])
}

/// A destination: `caravel --api-socket SOCK` without a kernel, plus
/// `extra` (output options), once its API answers.
pub fn destination(env: &Env, sock: &str, extra: &[String]) -> Result<Session, String> {
    let _ = std::fs::remove_file(sock);
    let mut args = vec!["--api-socket".to_string(), format!("path={sock}")];
    args.extend(extra.iter().cloned());
    let s = Session::spawn(&env.bin("caravel"), &args)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote(env, sock, "ping").is_err() {
        if Instant::now() > deadline {
            return Err(format!("the destination never answered on {sock}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(s)
}

fn console_file(hvc: &std::path::Path) -> Vec<String> {
    vec!["--console".into(), format!("file={}", hvc.display())]
}

pub fn remote_child(env: &Env, sock: &str, args: &[&str]) -> Result<Child, String> {
    Command::new(env.bin("caravel-remote"))
        .args(["--api-socket", sock])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run caravel-remote: {e}"))
}

pub fn finished(mut child: Child, what: &str) -> Result<String, String> {
    // A hang becomes a failure with a message, well before the rig's
    // watchdog takes a silent console for a wedged outer VM.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let err = out.map_or(String::new(), |o| {
                    String::from_utf8_lossy(&o.stderr).trim().to_string()
                });
                return Err(format!("{what} did not finish within 180 s {err}"));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {} {}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// Migrates the guest of `from` (API `from_sock`) to a new destination
/// (API `to_sock`, started with `to_args`) listening on `url`, with
/// `send_args` for `send-migration`; returns the destination and the
/// source's figures in one line.
pub fn hop(
    env: &Env,
    from: &mut Session,
    from_sock: &str,
    to_sock: &str,
    url: &str,
    to_args: &[String],
    send_args: &[&str],
) -> Result<(Session, String), String> {
    let to = destination(env, to_sock, to_args)?;
    let recv = remote_child(env, to_sock, &["receive-migration", url])?;
    let mut args = vec!["send-migration", url];
    args.extend(send_args);
    let send = remote_child(env, from_sock, &args)?;
    let summary = finished(send, "send-migration")?;
    finished(recv, "receive-migration")?;
    expect_exit(from, 0).map_err(|e| format!("the source after migrating: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&summary).map_err(|e| format!("summary {summary:?}: {e}"))?;
    let line = format!(
        "{url}{}: {} passes, {} MiB memory ({} MiB on the wire), downtime {} ms, total {} ms",
        if send_args.is_empty() {
            String::new()
        } else {
            format!(" ({})", send_args.join(" "))
        },
        v["iterations"],
        v["memory_bytes"].as_u64().unwrap_or(0) / MIB,
        v["stream_bytes"].as_u64().unwrap_or(0) / MIB,
        v["downtime_ms"],
        v["total_ms"]
    );
    Ok((to, line))
}

/// x86: the guest waits for a contended spinlock by halting (KVM's pv
/// qspinlock, `KVM_FEATURE_PV_UNHALT` in Caravel's CPUID), not by spinning
/// with interrupts off. A spinning waiter whose lock holder is a preempted
/// vCPU thread wedged the single-CPU TCG outer VM: QEMU 7.2 left the outer
/// kernel's timer interrupt pending while the guest spun (tests/vm/README.md).
fn pv_spinlocks_enabled(s: &mut Session) -> Result<(), String> {
    let lines = guest_cmd(s, "dmesg | grep -i 'pv spinlocks'")?;
    if lines.iter().any(|l| l.contains("PV spinlocks enabled")) {
        Ok(())
    } else {
        Err(format!(
            "the guest does not use pv spinlocks (CONFIG_PARAVIRT_SPINLOCKS and \
             KVM_FEATURE_PV_UNHALT): {lines:?}"
        ))
    }
}

/// Runs `cmd` right after a migration (the guest printed its prompt in
/// the old process: type without waiting for it); fails unless it exits 0.
fn first_cmd_after_move(s: &mut Session, cmd: &str) -> Result<(), String> {
    s.send(cmd)?;
    s.expect(&format!("CARAVEL-GOT {cmd}"), BOOT_TIMEOUT)?;
    let (done, _) = s.expect("CARAVEL-DONE", BOOT_TIMEOUT)?;
    if !done.contains("rc=0") {
        return Err(format!(
            "first command after migrating, `{cmd}`, failed: {done}\n{}",
            s.tail()
        ));
    }
    Ok(())
}

/// The counter the guest's workload keeps, read right after a migration.
fn count_after_move(s: &mut Session, before: u64) -> Result<u64, String> {
    first_cmd_after_move(s, "cat /tmp/count")?;
    let after = numbers(&s.transcript).last().copied().unwrap_or(0);
    if after < before {
        return Err(format!("the counter went back from {before} to {after}"));
    }
    // ... and it keeps counting.
    std::thread::sleep(Duration::from_millis(500));
    let later = numbers(&guest_cmd(s, "cat /tmp/count")?);
    if later.first().is_none_or(|&c| c <= after) {
        return Err(format!(
            "the workload stopped after migrating: {later:?} after {after}"
        ));
    }
    Ok(after)
}

fn migrate_with(
    env: &Env,
    tag: &str,
    start: StartArgs,
    first_hop: &[&str],
) -> Result<String, String> {
    let disk = env.tmp.join(format!("rig-{tag}-disk.img"));
    std::fs::write(&disk, vec![0u8; (SECTORS * 512) as usize]).map_err(|e| e.to_string())?;
    let hvc: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| env.tmp.join(format!("rig-{tag}-hvc0-{n}.log")))
        .collect();
    hvc.iter().for_each(|f| drop(std::fs::remove_file(f)));
    let sock = |n: &str| {
        env.tmp
            .join(format!("rig-{tag}-{n}.sock"))
            .display()
            .to_string()
    };
    let (sa, sb, sc, sd) = (sock("a"), sock("b"), sock("c"), sock("d"));
    let stream_sock = env.tmp.join(format!("rig-{tag}-stream.sock"));
    let port = 40_000 + std::process::id() % 20_000;

    let mut a = Session::spawn(
        &env.bin("caravel"),
        &start(
            env,
            &sa,
            &[
                "--rng",
                "--disk",
                &format!("path={}", disk.display()),
                "--console",
                &format!("file={}", hvc[0].display()),
            ],
        ),
    )?;
    a.expect("CARAVEL-MARKER", Duration::from_secs(120))?;
    if cfg!(target_arch = "x86_64") {
        pv_spinlocks_enabled(&mut a)?;
    }
    let base = mem_total(&mut a)?;
    resize_wait(env, &sa, "512M", 60)?;
    check_total(&mut a, base, 256 * MIB, "before migrating")?;
    // The workloads: a counter (to disk and hvc0), and 64 MiB of tmpfs
    // rewritten 16 MiB at a time (one file a second: the single outer vCPU
    // runs the guest and both Caravels), each file with its md5 next to it.
    guest_cmd(
        &mut a,
        &format!(
            "(i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; \
             echo \"block $i\" | dd of=/dev/vda bs=512 seek=$((i % {SECTORS})) conv=notrunc,fsync 2>/dev/null; \
             echo \"hvc $i\" > /dev/hvc0; sleep 0.05; done) >/dev/null 2>&1 &"
        ),
    )?;
    guest_cmd(
        &mut a,
        "(k=0; while [ ! -e /tmp/stop ]; do k=$((k+1)); f=/tmp/buf$((k % 4)); \
         dd if=/dev/urandom of=$f.new bs=1M count=16 2>/dev/null; md5sum < $f.new > $f.sum.new; \
         mv $f.new $f; mv $f.sum.new $f.sum; sleep 1; done; touch /tmp/memdone) >/dev/null 2>&1 &",
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let before = numbers(&guest_cmd(&mut a, "cat /tmp/count")?);
    let count_a = before.first().copied().unwrap_or(0);
    if count_a == 0 {
        return Err("the workload did not count".into());
    }
    a.expect("CARAVEL-READY", BOOT_TIMEOUT)?;

    // A -> B over a Unix socket.
    let unix_url = format!("unix:{}", stream_sock.display());
    let (mut b, hop1) = hop(
        env,
        &mut a,
        &sa,
        &sb,
        &unix_url,
        &console_file(&hvc[1]),
        first_hop,
    )?;
    drop(a);
    crate::diag(&format!("  A -> B {hop1}"));
    let count_b = count_after_move(&mut b, count_a)?;
    resize_wait(env, &sb, "768M", 60)?;
    check_total(&mut b, base, 512 * MIB, "grown on the destination")?;
    b.expect("CARAVEL-READY", BOOT_TIMEOUT)?;

    // B -> C over TCP.
    let tcp_url = format!("tcp:127.0.0.1:{port}");
    let (mut c, hop2) = hop(env, &mut b, &sb, &sc, &tcp_url, &console_file(&hvc[2]), &[])?;
    drop(b);
    crate::diag(&format!("  B -> C {hop2}"));
    let count_c = count_after_move(&mut c, count_b)?;

    // C -> D, cut: D dies once memory flows; C's guest runs on.
    let mut d = destination(env, &sd, &console_file(&hvc[3]))?;
    let recv = remote_child(env, &sd, &["receive-migration", &unix_url])?;
    let send = remote_child(env, &sc, &["send-migration", &unix_url])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = remote(env, &sc, "info").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        // (vm.info shows C's own receive until its send starts.)
        let m = &v["migration"];
        if m["role"] == "source" && m["memory_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the third migration never sent memory: {info}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &d.pid().to_string()])
        .status();
    let _ = d.wait(Duration::from_secs(10));
    drop(d);
    let cut = match finished(send, "send-migration") {
        Ok(out) => return Err(format!("the cut migration succeeded: {out}")),
        Err(e) => e,
    };
    let _ = finished(recv, "receive-migration");
    let info = remote(env, &sc, "info")?;
    let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
    if v["state"] != "Running" || v["migration"]["phase"] != "failed" {
        return Err(format!(
            "after the cut the source is {} with migration {}",
            v["state"], v["migration"]
        ));
    }
    let after_cut = numbers(&guest_cmd(&mut c, "sleep 0.5; cat /tmp/count")?);
    if after_cut.first().is_none_or(|&n| n <= count_c) {
        return Err(format!(
            "the source's guest stopped counting after the cut: {after_cut:?}"
        ));
    }

    // Stop the workloads and check what moved.
    let checked = guest_cmd(
        &mut c,
        "touch /tmp/stop; while [ ! -e /tmp/memdone ]; do sleep 0.1; done; sleep 0.2; \
         for f in /tmp/buf0 /tmp/buf1 /tmp/buf2 /tmp/buf3; do \
         if [ \"$(md5sum < $f)\" = \"$(cat $f.sum)\" ]; then echo SUM-OK; else echo SUM-BAD $f; fi; done; cat /tmp/count",
    )?;
    let ok = checked.iter().filter(|l| l.trim() == "SUM-OK").count();
    if ok != 4 {
        return Err(format!(
            "the guest's buffers after two migrations: {checked:?}"
        ));
    }
    let Some(&last) = numbers(&checked).last() else {
        return Err("no final count".into());
    };
    let on_disk = sector(&disk, last % SECTORS);
    if on_disk != format!("block {last}") {
        return Err(format!("disk sector of {last} holds {on_disk:?}"));
    }
    let hvc_text = std::fs::read_to_string(&hvc[2]).unwrap_or_default();
    if !hvc_text.contains(&format!("hvc {last}")) {
        return Err(format!(
            "hvc0 output did not continue into the last destination (no 'hvc {last}')"
        ));
    }
    resize_wait(env, &sc, "512M", 60)?;
    check_total(&mut c, base, 256 * MIB, "shrunk after two migrations")?;
    c.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    c.send("poweroff")?;
    expect_exit(&mut c, 0)?;
    let _ = std::fs::remove_file(&disk);
    Ok(format!(
        "{hop1}; {hop2}; counter {count_a} -> {count_b} -> {count_c} -> {last}, 64 MiB of buffers match their md5s, \
         disk and hvc0 continue, resize on the destination; cut migration: {}",
        cut.split_whitespace().collect::<Vec<_>>().join(" ")
    ))
}

/// The TAP the network migration scenario's Caravel creates.
const NET_TAP: &str = "crvmig0";
const NET_HOST_IP: &str = "10.78.0.1";
const NET_GUEST_IP: &str = "10.78.0.2";

/// x86_64: a guest with a virtio-net card on a TAP that the source Caravel
/// creates pings the host five times a second while it moves A -> B over
/// `unix:`. B opens the same TAP while A still holds it, its queues parked
/// until the guest runs there. After the move the guest's pings go on, the
/// host reaches the guest, and the TAP outlives A (B holds it); it goes
/// with B.
pub fn live_migration_net(env: &Env) -> Result<String, String> {
    let sock = |n: &str| {
        env.tmp
            .join(format!("rig-mignet-{n}.sock"))
            .display()
            .to_string()
    };
    let (sa, sb) = (sock("a"), sock("b"));
    let url = format!("unix:{}", env.tmp.join("rig-mignet-stream.sock").display());
    let net = format!("tap={NET_TAP},ip={NET_HOST_IP},mask=255.255.255.0,mac=52:54:00:c0:ff:02");
    let mut a = Session::spawn(
        &env.bin("caravel"),
        &crate::mem_scenarios::hotplug_args(env, &sa, "", &["--cpus", "boot=2", "--net", &net]),
    )?;
    a.expect("CARAVEL-MARKER", Duration::from_secs(120))?;
    let sys = std::path::Path::new("/sys/class/net").join(NET_TAP);
    let flags = std::fs::read_to_string(sys.join("tun_flags")).unwrap_or_default();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    if flags & 0x100 == 0 {
        return Err(format!(
            "the source's TAP is not multi-queue (tun_flags {flags:#x}): a destination could not open it too"
        ));
    }
    guest_cmd(
        &mut a,
        &format!(
            "ifconfig eth0 {NET_GUEST_IP} netmask 255.255.255.0 up; ping -c 2 -W 10 {NET_HOST_IP} >/dev/null; \
             (while [ ! -e /tmp/stop ]; do if ping -c 1 -W 1 {NET_HOST_IP} >/dev/null 2>&1; \
             then echo >> /tmp/ping.ok; else echo >> /tmp/ping.lost; fi; sleep 0.2; done; \
             touch /tmp/pingdone) >/dev/null 2>&1 &"
        ),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let before = numbers(&guest_cmd(&mut a, "wc -l < /tmp/ping.ok")?)
        .first()
        .copied()
        .unwrap_or(0);
    if before == 0 {
        return Err("the guest's pings to the host did not get through before migrating".into());
    }
    a.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    let (mut b, line) = hop(env, &mut a, &sa, &sb, &url, &[], &[])?;
    drop(a);
    crate::diag(&format!("  A -> B {line}"));
    // The source has exited; the TAP it created lives on in B.
    if !sys.exists() {
        return Err(format!("{NET_TAP} went away with the source"));
    }
    first_cmd_after_move(&mut b, &format!("ping -c 3 -W 5 {NET_HOST_IP}"))?;
    let host_to_guest = Command::new("ping")
        .args(["-c", "3", "-W", "5", NET_GUEST_IP])
        .output()
        .map_err(|e| format!("ping from the outer VM: {e}"))?;
    if !host_to_guest.status.success() {
        return Err(format!(
            "the host does not reach the migrated guest: {}",
            String::from_utf8_lossy(&host_to_guest.stdout).trim()
        ));
    }
    std::thread::sleep(Duration::from_secs(1));
    let counted = guest_cmd(
        &mut b,
        "touch /tmp/stop; while [ ! -e /tmp/pingdone ]; do sleep 0.1; done; \
         wc -l < /tmp/ping.ok; cat /tmp/ping.lost 2>/dev/null | wc -l",
    )?;
    let n = numbers(&counted);
    let (ok, lost) = (
        n.first().copied().unwrap_or(0),
        n.get(1).copied().unwrap_or(0),
    );
    if ok <= before {
        return Err(format!(
            "the guest's pings stopped with the migration: {ok} answered, {before} before it"
        ));
    }
    b.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    b.send("poweroff")?;
    expect_exit(&mut b, 0)?;
    if sys.exists() {
        return Err(format!(
            "{NET_TAP} outlived the destination that held it last"
        ));
    }
    Ok(format!(
        "{line}; pings: {before} answered before, {ok} in all, {lost} lost; host -> guest ok \
         after; the TAP (multi-queue) outlived the source and went with the destination"
    ))
}
