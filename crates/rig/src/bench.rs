//! `caravel-rig bench`: the same guest booted by Caravel and by QEMU (microvm
//! and q35) in one run, inside the rig. For each boot: process start to first
//! KVM_RUN (Caravel's event monitor), to the guest's marker line, and to exit;
//! the VMM's RSS without guest RAM at the marker (from /proc/PID/smaps); and
//! KVM exits by type up to the marker, as each VMM reads them from its KVM
//! stats fds (KVM_GET_STATS_FD) when the marker arrives: Caravel's `GET
//! vm.counters`, QEMU's QMP `query-stats` (summed over vCPUs).

use std::path::Path;
use std::time::Duration;

use crate::control::Control;
use crate::session::Session;
use crate::Env;

/// Mappings at least this large are taken to be guest RAM and left out of RSS.
const GUEST_RAM_MAPPING_MIN: u64 = 128 << 20;
const GUEST_MEM: &str = "256M";
const TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_STATS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "pf_taken",
    "insn_emulation",
];

/// One VMM configuration to measure.
struct Contender {
    name: &'static str,
    program: String,
    args: Vec<String>,
    event_log: Option<String>,
    /// Its control socket: Caravel's API or QEMU's QMP.
    control: ControlSocket,
}

enum ControlSocket {
    Caravel(String),
    Qmp(String),
}

impl ControlSocket {
    fn path(&self) -> &str {
        match self {
            Self::Caravel(p) | Self::Qmp(p) => p,
        }
    }

    /// KVM exit counters by type, read by the VMM from its KVM stats fds.
    fn kvm_exits(&self) -> Result<Vec<u64>, String> {
        let mut c = match self {
            Self::Caravel(p) => Control::Caravel(p.clone()),
            Self::Qmp(p) => Control::qmp_connect(p)?,
        };
        c.kvm_counters(EXIT_STATS)
    }

    /// Caravel's port I/O accesses (exits) by device range and unclaimed
    /// port; nothing for QEMU.
    fn pio_by_range(&self) -> Result<Vec<(String, u64)>, String> {
        match self {
            Self::Caravel(p) => Control::Caravel(p.clone()).counter_group("pio"),
            Self::Qmp(_) => Ok(Vec::new()),
        }
    }
}

#[derive(Default, Clone)]
struct Sample {
    first_run: Option<f64>,
    marker: f64,
    uptime: f64,
    exit: f64,
    rss_kib: u64,
    /// Of which anonymous.
    anon_kib: u64,
    exits: Vec<u64>,
    /// Caravel: port I/O exits to the marker by device range.
    pio: Vec<(String, u64)>,
    /// Anonymous KiB at the marker by kind of mapping.
    anon_map: Vec<(String, u64)>,
}

fn guest_cmdline() -> String {
    "console=ttyS0 quiet panic=-1 caravel.test=marker".into()
}

fn contenders(env: &Env, vcpus: u32) -> Vec<Contender> {
    let ev = env.tmp.join("bench-events.jsonl").display().to_string();
    let api = env.tmp.join("bench-api.sock").display().to_string();
    let qmp = env.tmp.join("bench-qmp.sock").display().to_string();
    let caravel = |kernel: &str, name: &'static str| Contender {
        name,
        program: env.bin("caravel").display().to_string(),
        args: vec![
            "--kernel".into(),
            env.guest(kernel),
            "--initramfs".into(),
            env.guest("initrd.cpio.gz"),
            "--cmdline".into(),
            guest_cmdline(),
            "--cpus".into(),
            format!("boot={vcpus}"),
            "--memory".into(),
            format!("size={GUEST_MEM}"),
            "--event-monitor".into(),
            format!("path={ev}"),
            "--api-socket".into(),
            format!("path={api}"),
        ],
        event_log: Some(ev.clone()),
        control: ControlSocket::Caravel(api.clone()),
    };
    let qemu = |machine: &str, name: &'static str| Contender {
        name,
        program: "/usr/bin/qemu-system-x86_64".into(),
        args: qemu_guest_args(env, machine, GUEST_MEM, vcpus, &guest_cmdline(), &qmp),
        event_log: None,
        control: ControlSocket::Qmp(qmp.clone()),
    };
    vec![
        caravel("vmlinux", "caravel (vmlinux, PVH)"),
        caravel("bzImage", "caravel (bzImage)"),
        qemu("microvm", "qemu 7.2 -M microvm (vmlinux, PVH)"),
        qemu("q35", "qemu 7.2 -M q35 (vmlinux, PVH)"),
    ]
}

/// RSS of `pid` in KiB, leaving out mappings large enough to be guest RAM.
fn rss_without_guest(pid: u32) -> u64 {
    rss_and_anon_without_guest(pid).0
}

/// (RSS, of which anonymous) of `pid` in KiB, leaving out mappings large
/// enough to be guest RAM.
fn rss_and_anon_without_guest(pid: u32) -> (u64, u64) {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return (0, 0);
    };
    let mut total = 0;
    let mut anon = 0;
    let mut current_size = 0;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("Size:") => {
                current_size = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
            }
            Some("Rss:") if current_size < GUEST_RAM_MAPPING_MIN => {
                total += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            }
            Some("Anonymous:") if current_size < GUEST_RAM_MAPPING_MIN => {
                anon += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            }
            _ => {}
        }
    }
    (total, anon)
}

/// Anonymous memory of `pid` (KiB) by kind of mapping, guest RAM left out:
/// `[heap]`, `[stack]`, a file's writable data (its path), and nameless
/// mappings by size (an 8 MiB one is a thread's stack), largest first.
fn anon_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    anon_by_mapping_in(&smaps)
}

fn anon_by_mapping_in(smaps: &str) -> Vec<(String, u64)> {
    let mut groups: std::collections::BTreeMap<String, (u64, u32)> = Default::default();
    let mut label = String::new();
    let mut size = 0u64;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            let (Some(start), Some(end)) = first
                .split_once('-')
                .map(|(a, b)| {
                    (
                        u64::from_str_radix(a, 16).ok(),
                        u64::from_str_radix(b, 16).ok(),
                    )
                })
                .unwrap_or((None, None))
            else {
                continue;
            };
            size = end.saturating_sub(start);
            let path = f.nth(4).unwrap_or("");
            label = if path.is_empty() {
                format!("nameless {} KiB", size / 1024)
            } else {
                path.to_string()
            };
        } else if first == "Anonymous:" && size < GUEST_RAM_MAPPING_MIN {
            let kib = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if kib > 0 {
                let g = groups.entry(label.clone()).or_default();
                g.0 += kib;
                g.1 += 1;
            }
        }
    }
    let mut out: Vec<(String, u64)> = groups
        .into_iter()
        .map(|(k, (kib, n))| (if n > 1 { format!("{k} x{n}") } else { k }, kib))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn first_run_secs(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "first-run").then(|| {
            v["timestamp"]["secs"].as_f64().unwrap_or(0.0)
                + v["timestamp"]["nanos"].as_f64().unwrap_or(0.0) / 1e9
        })
    })
}

fn measure(c: &Contender) -> Result<Sample, String> {
    if let Some(ev) = &c.event_log {
        let _ = std::fs::remove_file(ev);
    }
    let _ = std::fs::remove_file(c.control.path());
    let mut s = Session::spawn(Path::new(&c.program), &c.args)?;
    let (line, marker) = s.expect("CARAVEL-MARKER", TIMEOUT)?;
    let uptime = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let (rss_kib, anon_kib) = rss_and_anon_without_guest(s.pid());
    let anon_map = anon_by_mapping(s.pid());
    let exits = c
        .control
        .kvm_exits()
        .map_err(|e| format!("{}: KVM exit counters: {e}", c.name))?;
    let pio = c.control.pio_by_range().unwrap_or_default();
    let (status, exit) = s.wait(TIMEOUT)?;
    if !status.success() {
        return Err(format!("{} exited with {status}\n{}", c.name, s.tail()));
    }
    Ok(Sample {
        first_run: c.event_log.as_deref().and_then(first_run_secs),
        marker: marker.as_secs_f64(),
        uptime,
        exit: exit.as_secs_f64(),
        rss_kib,
        anon_kib,
        anon_map,
        exits,
        pio,
    })
}

/// The guest kernel's timestamps of its boot phases, in the order the guest
/// prints them (`caravel.test=timeline`): `(phase, seconds)`, NaN when the
/// guest's log has no such line.
type Timeline = Vec<(String, f64)>;

/// One more boot of `c` with the guest in timeline mode.
fn timeline(c: &Contender) -> Result<Timeline, String> {
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| a.replace("caravel.test=marker", "caravel.test=timeline"))
        .collect();
    let _ = std::fs::remove_file(c.control.path());
    let mut s = Session::spawn(Path::new(&c.program), &args)?;
    let (line, _) = s.expect("CARAVEL-TIMELINE", TIMEOUT)?;
    let (status, _) = s.wait(TIMEOUT)?;
    if !status.success() {
        return Err(format!("{} exited with {status}\n{}", c.name, s.tail()));
    }
    Ok(parse_timeline(&line))
}

/// Timeline boots per VMM (their phases' medians are printed).
const TIMELINE_BOOTS: usize = 3;

/// Each phase's median over `boots` (phases as the first boot names them).
fn median_timeline(boots: &[Timeline]) -> Timeline {
    let Some(first) = boots.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (phase, _))| {
            let values = boots
                .iter()
                .filter_map(|b| b.get(i).map(|p| p.1))
                .filter(|v| !v.is_nan())
                .collect::<Vec<_>>();
            (phase.clone(), median(values))
        })
        .collect()
}

fn parse_timeline(line: &str) -> Timeline {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

/// Prints the phases side by side, with each VMM's time from the previous
/// phase and the first VMM's difference to `reference` (QEMU microvm).
fn print_timelines(prefix: &str, rows: &[(&str, Timeline)], reference: usize) {
    let Some((_, first)) = rows.first() else {
        return;
    };
    println!("{prefix}");
    println!(
        "{prefix}Guest-time phases (median of {TIMELINE_BOOTS} boots each, guest printk timestamps in s; in brackets the time since the previous phase; last column: {} minus {} per phase):",
        rows[0].0,
        rows.get(reference).map_or("-", |r| r.0)
    );
    println!("{prefix}");
    let names: Vec<&str> = rows.iter().map(|r| r.0).collect();
    println!("{prefix}| phase | {} | difference |", names.join(" | "));
    println!("{prefix}|{}", " --- |".repeat(names.len() + 2));
    let step = |t: &Timeline, i: usize| {
        let now = t.get(i).map_or(f64::NAN, |p| p.1);
        let before = (0..i)
            .rev()
            .filter_map(|j| t.get(j).map(|p| p.1))
            .find(|v| !v.is_nan())
            .unwrap_or(0.0);
        (now, now - before)
    };
    for (i, (phase, _)) in first.iter().enumerate() {
        let cells: Vec<String> = rows
            .iter()
            .map(|(_, t)| match step(t, i) {
                (now, _) if now.is_nan() => "-".to_string(),
                (now, d) => format!("{now:.3} ({d:+.3})"),
            })
            .collect();
        let diff = rows
            .get(reference)
            .map(|(_, r)| step(&rows[0].1, i).1 - step(r, i).1)
            .filter(|d| !d.is_nan())
            .map_or("-".to_string(), |d| format!("{d:+.3}"));
        println!("{prefix}| {phase} | {} | {diff} |", cells.join(" | "));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs the benchmark and prints a Markdown table (lines prefixed by `prefix`).
pub fn run(env: &Env, runs: usize, vcpus: u32, prefix: &str) -> Result<(), String> {
    let contenders = contenders(env, vcpus);
    let mut results: Vec<Option<Vec<Sample>>> = contenders
        .iter()
        .map(|c| Path::new(&c.program).exists().then(Vec::new))
        .collect();
    for (c, r) in contenders.iter().zip(&results) {
        if r.is_none() {
            println!("{prefix}# {}: {} not present, skipped", c.name, c.program);
        }
    }
    // One warm-up boot each (the first boot after the outer VM starts is
    // ~1 s slower), then the VMMs take turns, so that the outer VM's slow
    // and fast minutes fall on all of them alike.
    for round in 0..=runs {
        for (c, r) in contenders.iter().zip(results.iter_mut()) {
            let Some(samples) = r else { continue };
            let s = measure(c)?;
            if round > 0 {
                samples.push(s);
            }
        }
    }
    let med = |s: &[Sample], f: &dyn Fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let fastest = |s: &[Sample]| s.iter().map(|x| x.marker).fold(f64::INFINITY, f64::min);
    let base = results[0]
        .as_ref()
        .map(|s| med(s, &|x| x.marker))
        .unwrap_or(f64::NAN);
    println!("{prefix}");
    println!("{prefix}Median of {runs} boots per VMM after one warm-up (VMMs in turn), {vcpus} vCPUs, {GUEST_MEM} guest RAM, same kernel and initramfs:");
    println!("{prefix}");
    println!(
        "{prefix}| VMM | start -> first KVM_RUN | start -> marker (fastest) | vs first row | guest uptime at marker | start -> exit | RSS without guest RAM (anonymous) | KVM exits to marker: {} |",
        EXIT_STATS.join(" / ")
    );
    println!("{prefix}| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (c, r) in contenders.iter().zip(&results) {
        let Some(s) = r else { continue };
        let first = med(s, &|x| x.first_run.unwrap_or(f64::NAN));
        let marker = med(s, &|x| x.marker);
        let exits: Vec<String> = (0..EXIT_STATS.len())
            .map(|i| {
                format!(
                    "{:.0}",
                    med(s, &|x| x.exits.get(i).copied().unwrap_or(0) as f64)
                )
            })
            .collect();
        println!(
            "{prefix}| {} | {} | {:.3} s ({:.3}) | {:.2}x | {:.2} s | {:.3} s | {:.1} MiB ({:.2}) | {} |",
            c.name,
            if first.is_nan() {
                "–".to_string()
            } else {
                format!("{:.1} ms", first * 1000.0)
            },
            marker,
            fastest(s),
            marker / base,
            med(s, &|x| x.uptime),
            med(s, &|x| x.exit),
            med(s, &|x| x.rss_kib as f64) / 1024.0,
            med(s, &|x| x.anon_kib as f64) / 1024.0,
            exits.join(" / ")
        );
    }
    // Where Caravel's port I/O exits go (the last boot of each contender).
    for (c, r) in contenders.iter().zip(&results) {
        let Some(last) = r.as_ref().and_then(|s| s.last()) else {
            continue;
        };
        if last.pio.is_empty() {
            continue;
        }
        // Writes KVM coalesced reach the devices without an exit.
        let exits: u64 = last
            .pio
            .iter()
            .filter(|(k, _)| k != "coalesced writes")
            .map(|(_, n)| n)
            .sum();
        let ranges: Vec<String> = last.pio.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("{prefix}");
        println!(
            "{prefix}{} port I/O to the marker ({exits} exits, last boot): {}",
            c.name,
            ranges.join(", ")
        );
    }
    // Where the anonymous memory is (the last boot of each Caravel row).
    for (c, r) in contenders.iter().zip(&results) {
        let Some(last) = r.as_ref().and_then(|s| s.last()) else {
            continue;
        };
        if last.pio.is_empty() {
            continue;
        }
        let parts: Vec<String> = last
            .anon_map
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        println!("{prefix}");
        println!(
            "{prefix}{} anonymous KiB at the marker by mapping (last boot, {} KiB): {}",
            c.name,
            last.anon_kib,
            parts.join(", ")
        );
    }
    // Where the guest's time goes: timeline boots, VMMs in turn, the
    // median of each phase.
    let mut boots: Vec<(&str, Vec<Timeline>)> = contenders
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_some())
        .map(|(c, _)| (c.name, Vec::new()))
        .collect();
    for _ in 0..TIMELINE_BOOTS {
        for (c, (_, t)) in contenders
            .iter()
            .filter(|c| Path::new(&c.program).exists())
            .zip(boots.iter_mut())
        {
            t.push(timeline(c)?);
        }
    }
    let timelines: Vec<(&str, Timeline)> = boots
        .into_iter()
        .map(|(name, t)| (name, median_timeline(&t)))
        .collect();
    let reference = timelines
        .iter()
        .position(|(n, _)| n.contains("microvm"))
        .unwrap_or(0);
    print_timelines(prefix, &timelines, reference);
    Ok(())
}

/// One blkbench result line, parsed.
fn blkbench(s: &mut Session, mode: &str, bs: u32, secs: u32) -> Result<(f64, f64), String> {
    let lines =
        crate::guest::guest_cmd(s, &format!("caravel-blkbench /dev/vda {mode} {bs} {secs}"))?;
    let line = lines
        .iter()
        .find(|l| l.starts_with("BLKBENCH"))
        .ok_or_else(|| format!("no result: {lines:?}"))?;
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((get("mib_s="), get("iops=")))
}

/// `caravel-rig --bench-blk`: virtio-blk throughput and IOPS, and exits to the
/// guest marker with virtio devices attached, Caravel vs QEMU q35.
pub fn run_blk(env: &Env, secs: u32, prefix: &str) -> Result<(), String> {
    let img = env.tmp.join("bench-disk.img");
    let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i >> 9) as u8).collect();
    let mut data = Vec::with_capacity(256 << 20);
    for _ in 0..256 {
        data.extend_from_slice(&pattern);
    }
    std::fs::write(&img, &data).map_err(|e| format!("cannot write {}: {e}", img.display()))?;
    drop(data);
    let cmdline = "console=ttyS0 quiet panic=-1 caravel.test=interactive";
    let api = env.tmp.join("bench-blk-api.sock").display().to_string();
    let qmp = env.tmp.join("bench-blk-qmp.sock").display().to_string();
    let caravel_args: Vec<String> = [
        "--kernel",
        &env.guest("vmlinux"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        cmdline,
        "--memory",
        &format!("size={GUEST_MEM}"),
        "--disk",
        &format!("path={}", img.display()),
        "--rng",
        "--api-socket",
        &format!("path={api}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut qemu_args = qemu_guest_args(env, "q35", GUEST_MEM, 1, cmdline, &qmp);
    qemu_args.extend(
        [
            "-drive",
            &format!("file={},if=none,id=d0,format=raw", img.display()),
            "-device",
            "virtio-blk-pci,drive=d0",
            "-device",
            "virtio-rng-pci",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let runs = [
        (
            "caravel",
            env.bin("caravel").display().to_string(),
            caravel_args,
            ControlSocket::Caravel(api),
        ),
        (
            "qemu 7.2 -M q35 virtio-blk-pci",
            "/usr/bin/qemu-system-x86_64".to_string(),
            qemu_args,
            ControlSocket::Qmp(qmp),
        ),
    ];
    let mut rows = Vec::new();
    for (name, program, args, control) in &runs {
        if !Path::new(program).exists() {
            println!("{prefix}# {name}: {program} not present, skipped");
            continue;
        }
        let _ = std::fs::remove_file(control.path());
        let mut s = Session::spawn(Path::new(program), args)?;
        let (_, marker) = s.expect("CARAVEL-MARKER", TIMEOUT)?;
        let exits = control
            .kvm_exits()
            .map_err(|e| format!("{name}: KVM exit counters: {e}"))?;
        let rss = rss_without_guest(s.pid());
        blkbench(&mut s, "seq", 1 << 20, 1)?; // warm-up
        let (seq_mib, _) = blkbench(&mut s, "seq", 1 << 20, secs)?;
        let (rand_mib, rand_iops) = blkbench(&mut s, "rand", 4096, secs)?;
        s.expect("CARAVEL-READY", TIMEOUT)?;
        s.send("poweroff")?;
        let _ = s.wait(TIMEOUT)?;
        rows.push((
            *name,
            marker.as_secs_f64(),
            exits,
            rss,
            seq_mib,
            rand_mib,
            rand_iops,
        ));
    }
    let base = rows.first().cloned();
    println!("{prefix}");
    println!("{prefix}virtio-blk, 256 MiB raw image in the outer VM's tmpfs, guest O_DIRECT reads for {secs} s each, 1 vCPU:");
    println!("{prefix}");
    println!("{prefix}| VMM | start -> marker | KVM exits to marker: {} | RSS without guest RAM | seq 1 MiB read | rand 4 KiB read | rand 4 KiB IOPS |", EXIT_STATS.join(" / "));
    println!("{prefix}| --- | --- | --- | --- | --- | --- | --- |");
    for (name, marker, exits, rss, seq, rand, iops) in &rows {
        let ratio = |v: f64, b: f64| {
            if b > 0.0 {
                format!(" ({:.2}x)", v / b)
            } else {
                String::new()
            }
        };
        let (bs, br, bi) = base.as_ref().map_or((0.0, 0.0, 0.0), |b| (b.4, b.5, b.6));
        println!(
            "{prefix}| {name} | {marker:.3} s | {} | {:.1} MiB | {seq:.1} MiB/s{} | {rand:.1} MiB/s{} | {iops:.0}{} |",
            exits.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" / "),
            *rss as f64 / 1024.0,
            ratio(*seq, bs),
            ratio(*rand, br),
            ratio(*iops, bi),
        );
    }
    let _ = std::fs::remove_file(&img);
    Ok(())
}

/// QEMU's command line for the rig's Linux guest: `machine` with KVM and
/// the host CPU, `mem` and `vcpus`, the kernel and initramfs, the console
/// on stdio and QMP on `qmp`. Callers add their devices.
pub fn qemu_guest_args(
    env: &Env,
    machine: &str,
    mem: &str,
    vcpus: u32,
    cmdline: &str,
    qmp: &str,
) -> Vec<String> {
    [
        "-L",
        "/usr/share/qemu",
        "-L",
        "/usr/share/seabios",
        "-M",
        machine,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        mem,
        "-smp",
        &vcpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        &env.guest("vmlinux"),
        "-initrd",
        &env.guest("initrd.cpio.gz"),
        "-append",
        cmdline,
        "-qmp",
        &format!("unix:{qmp},server=on,wait=off"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_line_parses_with_missing_phases_as_nan() {
        let t =
            parse_timeline("CARAVEL-TIMELINE tsc=0.012000 acpi=- run-init=1.020000 marker=1.05");
        assert_eq!(t.len(), 4);
        assert_eq!(t[0], ("tsc".to_string(), 0.012));
        assert!(t[1].1.is_nan());
        assert_eq!(t[3], ("marker".to_string(), 1.05));
    }

    #[test]
    fn anonymous_memory_is_grouped_by_mapping() {
        let smaps = "\
55d0-55e0 rw-p 00000000 00:00 0 [heap]
Size: 64 kB
Anonymous: 40 kB
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
Size: 8192 kB
Anonymous: 8 kB
7f0000800000-7f0001000000 rw-p 00000000 00:00 0
Size: 8192 kB
Anonymous: 12 kB
400000-401000 rw-p 00001000 08:01 77 /bin/caravel
Size: 4 kB
Anonymous: 4 kB
7e0000000000-7e0010000000 rw-p 00000000 00:00 0
Size: 262144 kB
Anonymous: 9000 kB
";
        let got = anon_by_mapping_in(smaps);
        assert_eq!(got[0], ("[heap]".to_string(), 40));
        assert_eq!(got[1], ("nameless 8192 KiB x2".to_string(), 20));
        assert!(
            got.iter().any(|(k, n)| k == "/bin/caravel" && *n == 4),
            "{got:?}"
        );
        assert!(
            !got.iter().any(|(_, n)| *n == 9000),
            "guest RAM left out: {got:?}"
        );
    }

    #[test]
    fn phases_take_the_median_of_the_boots_that_have_them() {
        let boots = [
            parse_timeline("T tsc=0.1 acpi=- marker=3"),
            parse_timeline("T tsc=0.3 acpi=0.5 marker=1"),
            parse_timeline("T tsc=0.2 acpi=- marker=2"),
        ];
        let m = median_timeline(&boots);
        assert_eq!(m[0], ("tsc".to_string(), 0.2));
        assert_eq!(m[1], ("acpi".to_string(), 0.5));
        assert_eq!(m[2], ("marker".to_string(), 2.0));
    }
}
