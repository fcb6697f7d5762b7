//! `caravel-rig --bench-balloon`: free page reporting and the memory
//! autopilot, Caravel against QEMU 7.2 on the same guest in one run.
//!
//! 1. Free page reporting: a 1 GiB guest touches 512 MiB and frees it; the
//!    time from the guest's free until the VMM's RSS is back within 64 MiB
//!    of where it started (polled every 50 ms), three rounds per VMM:
//!    Caravel `--balloon size=0,free_page_reporting=on`, QEMU
//!    `-device virtio-balloon-pci,free-page-reporting=on` (q35).
//! 2. The autopilot: the guest's working set ramps 256 MiB -> 1 GiB ->
//!    256 MiB ([`RAMP`]); host RSS each second for Caravel with
//!    `autosize=on` (and free page reporting), the same 1280 MiB guest at a
//!    fixed size with free page reporting, and without a balloon. Printed
//!    as a table, and as `RAMP-CSV` lines for `scripts/plot-ramp`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::balloon_scenarios::{
    plugged_size, run_ramp, Arch, RampPoint, AUTOSIZE_BALLOON, AUTOSIZE_MEMORY, RAMP,
};
use crate::guest::guest_cmd_within;
use crate::mem_scenarios::rss;
use crate::session::Session;
use crate::Env;

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn caravel_args(env: &Env, memory: &str, balloon: Option<&str>, sock: &str) -> Vec<String> {
    crate::balloon_scenarios::caravel_args(env, Arch::X86, memory, balloon, sock, &[])
}

/// Rounds of touch-512-MiB-and-free; seconds until RSS is back for each.
fn reporting_rounds(s: &mut Session) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    // Let boot-time frees be reported first.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..3 {
        let base = rss(s.pid());
        guest_cmd_within(s, "caravel-memhog hold 512", TIMEOUT)?;
        let t0 = Instant::now();
        while rss(s.pid()) > base + 64 * MIB {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "RSS still {} MiB (from {} MiB) 30 s after the free",
                    rss(s.pid()) / MIB,
                    base / MIB
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn poweroff(mut s: Session) {
    if s.expect("CARAVEL-READY", TIMEOUT).is_ok() {
        let _ = s.send("poweroff");
    }
    let _ = s.wait(TIMEOUT);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn reporting(env: &Env, prefix: &str) -> Result<(), String> {
    let sock = env.tmp.join("bench-balloon.sock").display().to_string();
    let mut rows = Vec::new();
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, "size=1G", Some("size=0,free_page_reporting=on"), &sock),
    )?;
    s.expect("CARAVEL-MARKER", TIMEOUT)?;
    rows.push((
        "Caravel --balloon free_page_reporting=on",
        reporting_rounds(&mut s)?,
    ));
    poweroff(s);
    if Path::new(QEMU).exists() {
        let qmp = env.tmp.join("bench-balloon-qmp.sock").display().to_string();
        let _ = std::fs::remove_file(&qmp);
        let mut args = crate::bench::qemu_guest_args(
            env,
            "q35",
            "1G",
            1,
            "console=ttyS0 quiet panic=-1 caravel.test=interactive",
            &qmp,
        );
        args.extend([
            "-device".to_string(),
            "virtio-balloon-pci,free-page-reporting=on".to_string(),
        ]);
        let mut s = Session::spawn(Path::new(QEMU), &args)?;
        s.expect("CARAVEL-MARKER", TIMEOUT)?;
        rows.push((
            "QEMU 7.2 q35 virtio-balloon-pci,free-page-reporting=on",
            reporting_rounds(&mut s)?,
        ));
        poweroff(s);
    }
    println!("{prefix}");
    println!("{prefix}Free page reporting: a 1 GiB guest touches 512 MiB and frees it; seconds until the VMM's RSS is back within 64 MiB (3 rounds):");
    println!("{prefix}");
    println!("{prefix}| VMM | round 1 | round 2 | round 3 | median |");
    println!("{prefix}| --- | --- | --- | --- | --- |");
    for (name, t) in &rows {
        let cells: Vec<String> = t.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "{prefix}| {name} | {} | {:.2} |",
            cells.join(" | "),
            median(t.clone())
        );
    }
    if let [(_, c), (_, q)] = &rows[..] {
        println!(
            "{prefix}Caravel/QEMU median time ratio: {:.2} (below 1 = Caravel returns the memory sooner)",
            median(c.clone()) / median(q.clone())
        );
    }
    Ok(())
}

fn ramp_run(env: &Env, memory: &str, balloon: Option<&str>) -> Result<Vec<RampPoint>, String> {
    let sock = env.tmp.join("bench-ramp.sock").display().to_string();
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, memory, balloon, &sock),
    )?;
    s.expect("CARAVEL-MARKER", TIMEOUT)?;
    let points = run_ramp(&mut s, || plugged_size(env, &sock))?;
    poweroff(s);
    Ok(points)
}

fn autopilot(env: &Env, prefix: &str) -> Result<(), String> {
    let fixed = "size=256M,hotplug_size=1G,hotplugged_size=1G";
    let runs = [
        (
            "autosize",
            ramp_run(env, AUTOSIZE_MEMORY, Some(AUTOSIZE_BALLOON))?,
        ),
        (
            "fixed+fpr",
            ramp_run(env, fixed, Some("size=0,free_page_reporting=on"))?,
        ),
        ("fixed", ramp_run(env, fixed, None)?),
    ];
    println!("{prefix}");
    println!("{prefix}Memory autopilot: `{RAMP}` in a 256 MiB + 1 GiB virtio-mem guest; host RSS (MiB) each ~4 s:");
    println!("{prefix}");
    println!("{prefix}| t (s) | guest working set | autosize: plugged | autosize: RSS | fixed 1280M + reporting: RSS | fixed 1280M: RSS |");
    println!("{prefix}| --- | --- | --- | --- | --- | --- |");
    let a = &runs[0].1;
    for (i, p) in a.iter().enumerate().step_by(4) {
        let at = |r: &[RampPoint]| r.get(i).map_or("-".to_string(), |p| p.rss.to_string());
        println!(
            "{prefix}| {:.0} | {} | {} | {} | {} | {} |",
            p.t,
            p.ws,
            p.plugged,
            p.rss,
            at(&runs[1].1),
            at(&runs[2].1)
        );
    }
    println!("{prefix}");
    for (name, r) in &runs {
        let mean = r.iter().map(|p| p.rss).sum::<u64>() / r.len().max(1) as u64;
        // How far RSS is above the working set, over the samples where the
        // guest held at least 256 MiB.
        let worst = r
            .iter()
            .filter(|p| p.ws >= 256)
            .map(|p| p.rss as f64 / p.ws as f64)
            .fold(0.0, f64::max);
        let end = r.last().map_or(0, |p| p.rss);
        println!(
            "{prefix}{name}: mean RSS {mean} MiB, end {end} MiB, worst RSS/working set {worst:.2} over {} samples",
            r.len()
        );
        for p in r {
            println!(
                "{prefix}RAMP-CSV {name},{:.1},{},{},{}",
                p.t, p.ws, p.rss, p.plugged
            );
        }
    }
    Ok(())
}

/// Runs both parts and prints Markdown tables.
pub fn run(env: &Env, prefix: &str) -> Result<(), String> {
    reporting(env, prefix)?;
    autopilot(env, prefix)
}
