//! `caravel-rig --bench-migration`: live migration to a second process on
//! the same host, Caravel vs QEMU 7.2, same guest and workload, same rig run.
//!
//! The guest: 512 MiB boot RAM, a 1 GiB virtio-mem region with 256 MiB
//! plugged, 1 vCPU, 64 MiB of random data written into its tmpfs, and a
//! light workload (a counter written every 50 ms) running through the
//! migration. Caravel: an empty `caravel --api-socket` in
//! `receive-migration unix:..`, the source in `send-migration unix:..`
//! (default 300 ms downtime budget). QEMU: the same command line with
//! `-incoming unix:..` and QMP `migrate unix:..` (default downtime limit
//! 300 ms). Reported per run: total time, downtime and guest memory bytes
//! as each VMM reports them (Caravel: `send-migration`'s figures; QEMU:
//! `query-migrate`'s `total-time`, `downtime` and `ram.transferred`), and
//! whether the guest's counter went on on the destination.

use std::path::Path;
use std::time::Duration;

use crate::control::Control;
use crate::guest::guest_cmd;
use crate::migration_scenarios::{destination, finished, remote_child};
use crate::session::Session;
use crate::snapshot_bench::{caravel_guest_args, qemu_guest_args, until};
use crate::Env;

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(180);
const RUNS: usize = 3;

#[derive(Default, Clone, Copy)]
struct Row {
    total_ms: f64,
    downtime_ms: f64,
    bytes: u64,
}

/// Boots, waits for 256 MiB plugged, fills 64 MiB, starts the counter.
fn prepare(s: &mut Session, c: &mut Control) -> Result<(), String> {
    s.expect("CARAVEL-MARKER", TIMEOUT)?;
    until("256 MiB plugged", || Ok(c.plugged()? == 256 * MIB))?;
    guest_cmd(
        s,
        "dd if=/dev/urandom of=/tmp/fill bs=1M count=64 2>/dev/null; \
         (i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done) >/dev/null 2>&1 &",
    )?;
    s.expect("CARAVEL-READY", TIMEOUT)?;
    Ok(())
}

/// The destination's guest answers and its counter is non-zero.
fn check_moved(s: &mut Session) -> Result<(), String> {
    s.send("cat /tmp/count")?;
    s.expect("CARAVEL-GOT cat /tmp/count", TIMEOUT)?;
    let (done, _) = s.expect("CARAVEL-DONE", TIMEOUT)?;
    if !done.contains("rc=0") {
        return Err(format!("the migrated guest's first command failed: {done}"));
    }
    s.expect("CARAVEL-READY", TIMEOUT)?;
    s.send("poweroff")?;
    let _ = s.wait(TIMEOUT);
    Ok(())
}

fn caravel(env: &Env, run: usize) -> Result<Row, String> {
    let sock = env.tmp.join("bench-mig-src.sock").display().to_string();
    let dsock = env.tmp.join("bench-mig-dst.sock").display().to_string();
    let url = format!("unix:{}", env.tmp.join("bench-mig.sock").display());
    let _ = std::fs::remove_file(&sock);
    let mut s = Session::spawn(&env.bin("caravel"), &caravel_guest_args(env, &sock))?;
    prepare(&mut s, &mut Control::Caravel(sock.clone()))?;
    let mut d = destination(env, &dsock, &[])?;
    let recv = remote_child(env, &dsock, &["receive-migration", &url])?;
    let send = remote_child(env, &sock, &["send-migration", &url])?;
    let summary = finished(send, "send-migration")?;
    finished(recv, "receive-migration")?;
    let _ = s.wait(TIMEOUT);
    let v: serde_json::Value =
        serde_json::from_str(&summary).map_err(|e| format!("summary {summary:?}: {e}"))?;
    check_moved(&mut d)?;
    eprintln!("caravel run {run}: {summary}");
    Ok(Row {
        total_ms: v["total_ms"].as_f64().unwrap_or(0.0),
        downtime_ms: v["downtime_ms"].as_f64().unwrap_or(0.0),
        bytes: v["memory_bytes"].as_u64().unwrap_or(0),
    })
}

fn qemu(env: &Env, run: usize) -> Result<Row, String> {
    let qmp = env.tmp.join("bench-mig-qmp.sock").display().to_string();
    let dqmp = env.tmp.join("bench-mig-qmp2.sock").display().to_string();
    let stream = env.tmp.join("bench-mig-qemu.sock");
    for p in [&qmp, &dqmp] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(&stream);
    let args = |qmp: &str| qemu_guest_args(env, qmp);
    let program = Path::new("/usr/bin/qemu-system-x86_64");
    let mut s = Session::spawn(program, &args(&qmp))?;
    let mut c = Control::qmp_connect(&qmp)?;
    prepare(&mut s, &mut c)?;
    let mut incoming = args(&dqmp);
    incoming.extend([
        "-incoming".to_string(),
        format!("unix:{}", stream.display()),
    ]);
    let mut d = Session::spawn(program, &incoming)?;
    let mut dc = Control::qmp_connect(&dqmp)?;
    until("QEMU's incoming socket", || Ok(stream.exists()))?;
    c.qmp(&format!(
        r#"{{"execute":"migrate","arguments":{{"uri":"unix:{}"}}}}"#,
        stream.display()
    ))?;
    let mut last = serde_json::Value::Null;
    until("QEMU's migration to complete", || {
        let st = c.qmp(r#"{"execute":"query-migrate"}"#)?;
        let done = match st["status"].as_str() {
            Some("completed") => true,
            Some("failed") | Some("cancelled") => return Err(format!("QEMU migration: {st}")),
            _ => false,
        };
        last = st;
        Ok(done)
    })?;
    until("QEMU's incoming VM to run", || {
        let st = dc.qmp(r#"{"execute":"query-status"}"#)?;
        Ok(st["status"] == "running")
    })?;
    drop(c);
    let _ = s.wait(Duration::from_secs(10));
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &s.pid().to_string()])
        .status();
    drop(dc);
    check_moved(&mut d)?;
    eprintln!("qemu run {run}: {last}");
    Ok(Row {
        total_ms: last["total-time"].as_f64().unwrap_or(0.0),
        downtime_ms: last["downtime"].as_f64().unwrap_or(0.0),
        bytes: last["ram"]["transferred"].as_u64().unwrap_or(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the benchmark (runs interleaved) and prints a Markdown table.
pub fn run(env: &Env, prefix: &str) -> Result<(), String> {
    let has_qemu = Path::new("/usr/bin/qemu-system-x86_64").exists();
    let (mut cr, mut qr) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        cr.push(caravel(env, i).map_err(|e| format!("Caravel: {e}"))?);
        if has_qemu {
            qr.push(qemu(env, i).map_err(|e| format!("QEMU: {e}"))?);
        }
    }
    println!("{prefix}");
    println!("{prefix}Live migration to a second process on one host (unix socket): 512 MiB boot RAM, 1 GiB virtio-mem with 256 MiB plugged, 64 MiB of random data and a counter written every 50 ms in the guest, 1 vCPU; {RUNS} runs each, interleaved:");
    println!("{prefix}");
    println!("{prefix}| VMM | total time (ms), runs | downtime (ms), runs | guest memory sent (MiB), runs |");
    println!("{prefix}| --- | --- | --- | --- |");
    let line = |name: &str, rows: &[Row]| {
        let list = |f: &dyn Fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>().join(" / ");
        println!(
            "{prefix}| {name} | {} | {} | {} |",
            list(&|r| format!("{:.0}", r.total_ms)),
            list(&|r| format!("{:.0}", r.downtime_ms)),
            list(&|r| format!("{:.1}", r.bytes as f64 / MIB as f64))
        )
    };
    line("Caravel (send-migration unix:)", &cr);
    if has_qemu {
        line("QEMU 7.2 q35 (migrate unix:, -incoming)", &qr);
        let m = |rows: &[Row], f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
        println!("{prefix}");
        println!(
            "{prefix}QEMU/Caravel medians: total time {:.2}x, downtime {:.2}x, bytes {:.2}x (above 1 = Caravel faster or smaller)",
            m(&qr, |r| r.total_ms) / m(&cr, |r| r.total_ms).max(1.0),
            m(&qr, |r| r.downtime_ms) / m(&cr, |r| r.downtime_ms).max(1.0),
            m(&qr, |r| r.bytes as f64) / m(&cr, |r| r.bytes as f64).max(1.0)
        );
    }
    Ok(())
}
