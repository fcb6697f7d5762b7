//! `caravel-rig --bench-snapshot`: save a guest to a file and start it
//! again in a new process, Caravel (memory mapped from the file, and copied
//! with `prefault=on`) vs QEMU 7.2, same guest, same rig run.
//!
//! The guest: 512 MiB boot RAM, a 1 GiB virtio-mem region with 256 MiB
//! plugged, 1 vCPU, 64 MiB of random data written into its RAM. Caravel:
//! `vm.pause` + `vm.snapshot` to a directory, then `caravel --restore
//! ...,resume=on`. QEMU: `stop` + `migrate "exec:cat > FILE"`, then the same
//! command line with `-incoming "exec:cat FILE"`. Reported: the time to
//! save, the files' apparent and allocated sizes, and from the new
//! process's start to its first guest instruction (Caravel: the vCPU's
//! first KVM_RUN from `--event-monitor`; QEMU: QMP `query-status` says
//! running) and to the guest's first output line.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::guest::{guest_cmd, remote};
use crate::session::Session;
use crate::Env;

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);
pub const CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 memhp_default_state=online_movable caravel.test=interactive";

#[derive(Default)]
struct Row {
    save: f64,
    state_bytes: u64,
    apparent: u64,
    allocated: u64,
    first_instruction: f64,
    first_output: f64,
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Polls `f` until it says done (or fails), for up to two minutes.
pub fn until<F: FnMut() -> Result<bool, String>>(what: &str, mut f: F) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    while !f()? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Boots, waits for 256 MiB plugged, writes 64 MiB of random data.
fn prepare(s: &mut Session, c: &mut Control) -> Result<(), String> {
    s.expect("CARAVEL-MARKER", TIMEOUT)?;
    until("256 MiB plugged", || Ok(c.plugged()? == 256 * MIB))?;
    guest_cmd(
        s,
        "dd if=/dev/urandom of=/tmp/fill bs=1M count=64 2>/dev/null",
    )?;
    s.expect("CARAVEL-READY", TIMEOUT)?;
    Ok(())
}

fn kill(s: &mut Session) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &s.pid().to_string()])
        .status();
    let _ = s.wait(Duration::from_secs(10));
}

/// The first-run event's time from `--event-monitor` output.
fn first_run(events: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(events).ok()?;
    text.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "first-run").then(|| {
            v["timestamp"]["secs"].as_f64().unwrap_or(0.0)
                + v["timestamp"]["nanos"].as_f64().unwrap_or(0.0) / 1e9
        })
    })
}

/// Caravel's command line for the benchmarks' guest: 512 MiB boot RAM, a
/// 1 GiB virtio-mem region with 256 MiB plugged, the API on `sock`.
pub fn caravel_guest_args(env: &Env, sock: &str) -> Vec<String> {
    [
        "--kernel",
        &env.guest("vmlinux"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        CMDLINE,
        "--memory",
        "size=512M,hotplug_method=virtio-mem,hotplug_size=1G,hotplugged_size=256M",
        "--api-socket",
        &format!("path={sock}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// QEMU's command line for the same guest (q35, virtio-mem-pci with
/// 256 MiB of 1 GiB requested), QMP on `qmp`.
pub fn qemu_guest_args(env: &Env, qmp: &str) -> Vec<String> {
    let mut args = crate::bench::qemu_guest_args(env, "q35", "512M,maxmem=1536M", 1, CMDLINE, qmp);
    args.extend(
        [
            "-object",
            "memory-backend-ram,id=vmem0,size=1G",
            "-device",
            "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=256M",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

fn caravel(env: &Env, prefault: bool) -> Result<Row, String> {
    caravel_steps(env, prefault).map_err(|e| format!("Caravel: {e}"))
}

fn caravel_steps(env: &Env, prefault: bool) -> Result<Row, String> {
    let sock = env.tmp.join("bench-snap.sock").display().to_string();
    let sock2 = env.tmp.join("bench-snap2.sock").display().to_string();
    let dir = env.tmp.join("bench-snap");
    let events = env.tmp.join("bench-snap-events.jsonl");
    for p in [&sock, &sock2] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = Session::spawn(&env.bin("caravel"), &caravel_guest_args(env, &sock))?;
    prepare(&mut s, &mut Control::Caravel(sock.clone()))?;
    remote(env, &sock, "pause")?;
    let url = format!("file://{}", dir.display());
    let t0 = Instant::now();
    crate::guest::remote_snapshot(env, &sock, &url)?;
    let save = t0.elapsed().as_secs_f64();
    kill(&mut s);
    let mem = dir.join("memory");
    let mut row = Row {
        save,
        state_bytes: std::fs::metadata(dir.join("state.json")).map_or(0, |m| m.len()),
        apparent: std::fs::metadata(&mem).map_or(0, |m| m.len()),
        allocated: allocated(&mem),
        ..Row::default()
    };
    let mut r = Session::spawn(
        &env.bin("caravel"),
        &[
            "--restore".to_string(),
            format!(
                "source_url={url},resume=on{}",
                if prefault { ",prefault=on" } else { "" }
            ),
            "--api-socket".into(),
            format!("path={sock2}"),
            "--event-monitor".into(),
            format!("path={}", events.display()),
        ],
    )?;
    r.send("echo restored")?;
    let (_, t) = r.expect("CARAVEL-GOT echo restored", TIMEOUT)?;
    row.first_output = t.as_secs_f64();
    row.first_instruction =
        first_run(&events).ok_or("no first-run event from the restored Caravel")?;
    r.expect("CARAVEL-READY", TIMEOUT)?;
    r.send("poweroff")?;
    let _ = r.wait(TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

fn qemu(env: &Env) -> Result<Row, String> {
    qemu_steps(env).map_err(|e| format!("QEMU: {e}"))
}

fn qemu_steps(env: &Env) -> Result<Row, String> {
    let qmp = env.tmp.join("bench-snap-qmp.sock").display().to_string();
    let file = env.tmp.join("bench-snap-qemu.mig");
    let _ = std::fs::remove_file(&qmp);
    let _ = std::fs::remove_file(&file);
    let args = qemu_guest_args(env, &qmp);
    let program = Path::new("/usr/bin/qemu-system-x86_64");
    let mut s = Session::spawn(program, &args)?;
    let mut c = Control::qmp_connect(&qmp)?;
    prepare(&mut s, &mut c)?;
    c.qmp(r#"{"execute":"stop"}"#)?;
    let t0 = Instant::now();
    c.qmp(&format!(
        r#"{{"execute":"migrate","arguments":{{"uri":"exec:cat > {}"}}}}"#,
        file.display()
    ))?;
    until("QEMU's migration to complete", || {
        let st = c.qmp(r#"{"execute":"query-migrate"}"#)?;
        match st["status"].as_str() {
            Some("completed") => Ok(true),
            Some("failed") | Some("cancelled") => Err(format!("QEMU migration: {st}")),
            _ => Ok(false),
        }
    })?;
    let save = t0.elapsed().as_secs_f64();
    drop(c);
    kill(&mut s);
    let mut row = Row {
        save,
        apparent: std::fs::metadata(&file).map_or(0, |m| m.len()),
        allocated: allocated(&file),
        ..Row::default()
    };
    let _ = std::fs::remove_file(&qmp);
    let mut incoming = args.clone();
    incoming.extend([
        "-incoming".to_string(),
        format!("exec:cat {}", file.display()),
    ]);
    let started = Instant::now();
    let mut r = Session::spawn(program, &incoming)?;
    let mut c = Control::qmp_connect(&qmp)?;
    // The source was stopped before the migration, so the incoming VM
    // stays paused once loaded: continue it as `resume=on` does.
    until("QEMU's incoming VM to run", || {
        let st = c.qmp(r#"{"execute":"query-status"}"#)?;
        match st["status"].as_str() {
            Some("running") => Ok(true),
            Some("inmigrate") => Ok(false),
            _ => c.qmp(r#"{"execute":"cont"}"#).map(|_| false),
        }
    })?;
    row.first_instruction = started.elapsed().as_secs_f64();
    r.send("echo restored")?;
    let (_, t) = r.expect("CARAVEL-GOT echo restored", TIMEOUT)?;
    row.first_output = t.as_secs_f64();
    r.expect("CARAVEL-READY", TIMEOUT)?;
    r.send("poweroff")?;
    let _ = r.wait(TIMEOUT);
    let _ = std::fs::remove_file(&file);
    Ok(row)
}

/// Runs the benchmark and prints a Markdown table with the ratios.
pub fn run(env: &Env, prefix: &str) -> Result<(), String> {
    let c = caravel(env, false)?;
    let cp = caravel(env, true)?;
    let q = if Path::new("/usr/bin/qemu-system-x86_64").exists() {
        Some(qemu(env)?)
    } else {
        None
    };
    println!("{prefix}");
    println!("{prefix}Snapshot and restore in a new process: 512 MiB boot RAM, 1 GiB virtio-mem with 256 MiB plugged, 64 MiB of random data in the guest, 1 vCPU:");
    println!("{prefix}");
    println!("{prefix}| VMM | save (s) | state file | memory file apparent / allocated (MiB) | start -> first guest instruction (s) | start -> first guest output (s) |");
    println!("{prefix}| --- | --- | --- | --- | --- | --- |");
    let line = |name: &str, r: &Row| {
        println!(
            "{prefix}| {name} | {:.3} | {} | {} / {} | {:.3} | {:.3} |",
            r.save,
            if r.state_bytes > 0 {
                format!("{} KiB", r.state_bytes / 1024)
            } else {
                "(in the stream)".into()
            },
            r.apparent / MIB,
            r.allocated / MIB,
            r.first_instruction,
            r.first_output
        )
    };
    line(
        "Caravel (vm.snapshot, --restore: memory mapped, the default)",
        &c,
    );
    line("Caravel (--restore ...,prefault=on: memory copied)", &cp);
    if let Some(q) = &q {
        line("QEMU 7.2 q35 (migrate exec:, -incoming exec:)", q);
        println!("{prefix}");
        println!(
            "{prefix}QEMU/Caravel: save {:.2}x, allocated file {:.2}x, to first instruction {:.2}x, to first output {:.2}x (above 1 = Caravel faster or smaller)",
            q.save / c.save,
            q.allocated as f64 / c.allocated.max(1) as f64,
            q.first_instruction / c.first_instruction,
            q.first_output / c.first_output
        );
        println!(
            "{prefix}QEMU/Caravel with prefault=on: to first instruction {:.2}x, to first output {:.2}x",
            q.first_instruction / cp.first_instruction,
            q.first_output / cp.first_output
        );
    }
    Ok(())
}
