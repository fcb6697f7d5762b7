//! `caravel-rig`: real-guest scenarios for Caravel, run inside the nested
//! test VM (see tests/vm/README.md). Prints TAP 13, one test per scenario.
//!
//! Usage: `caravel-rig [--bin DIR] [--guest DIR] [--prefix STR] [--list] [SCENARIO...]`
//! or `caravel-rig --bench RUNS [--bench-vcpus N]` (see `bench.rs`; also
//! `--bench-blk`, `--bench-mem`, `--bench-snapshot`, `--bench-migration`,
//! `--bench-net`, `--bench-balloon`), `caravel-rig --plot-ramp < LOG`,
//! or `caravel-rig --vfio [SCENARIO...]` (see `vfio_scenarios.rs`),
//! or `caravel-rig --arm64 [SCENARIO...]` (see `arm64_scenarios.rs`).
//! (default: every scenario). Binaries are taken from `--bin` (default
//! `/bin`), guest kernels and images from `--guest` (default `/guest`).

mod arm64_its_guest;
mod arm64_scenarios;
mod balloon_bench;
mod balloon_scenarios;
mod bench;
#[cfg(target_arch = "aarch64")]
mod capture;
mod control;
mod guest;
mod mem_bench;
mod mem_scenarios;
mod migration_bench;
mod migration_scenarios;
mod net_bench;
mod net_scenarios;
mod plot;
mod robust_scenarios;
mod scenarios;
mod session;
mod snapshot_bench;
mod snapshot_scenarios;
mod vfio_scenarios;
mod vsock_scenarios;

use std::path::PathBuf;
use std::time::Instant;

/// Where things are.
pub struct Env {
    /// Directory with caravel, caravel-remote.
    pub bin: PathBuf,
    /// Directory with vmlinux, bzImage, initrd.cpio.gz.
    pub guest: PathBuf,
    /// Scratch directory.
    pub tmp: PathBuf,
}

impl Env {
    /// Path of a binary.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Path of a guest file, as a string argument.
    pub fn guest(&self, name: &str) -> String {
        self.guest.join(name).display().to_string()
    }
}

thread_local! {
    static PREFIX: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Prints one line of the TAP stream (with the `--prefix`, if any).
macro_rules! tap {
    ($($arg:tt)*) => {
        PREFIX.with(|p| println!("{}{}", p.borrow(), format!($($arg)*)))
    };
}

/// Prints a TAP diagnostic line now (a long scenario's progress: the rig's
/// watchdog treats a console silent for minutes as a wedge).
pub fn diag(msg: &str) {
    tap!("# {msg}");
}

fn main() {
    let mut env = Env {
        bin: "/bin".into(),
        guest: "/guest".into(),
        tmp: std::env::temp_dir(),
    };
    let mut wanted = Vec::new();
    let mut bench_runs = None;
    let mut bench_vcpus = 1;
    let mut bench_blk = None;
    let mut bench_mem = false;
    let mut bench_balloon = false;
    let mut bench_snapshot = false;
    let mut bench_migration = false;
    let mut bench_net = false;
    let mut bench_net_only = None;
    let mut vfio = false;
    let mut arm64 = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => env.bin = args.next().unwrap_or_default().into(),
            "--guest" => env.guest = args.next().unwrap_or_default().into(),
            "--prefix" => PREFIX.with(|p| *p.borrow_mut() = args.next().unwrap_or_default()),
            "--bench" => bench_runs = Some(args.next().and_then(|n| n.parse().ok()).unwrap_or(5)),
            "--bench-blk" => {
                bench_blk = Some(args.next().and_then(|n| n.parse().ok()).unwrap_or(5))
            }
            "--bench-mem" => bench_mem = true,
            "--bench-balloon" => bench_balloon = true,
            "--bench-snapshot" => bench_snapshot = true,
            "--bench-migration" => bench_migration = true,
            "--bench-net" => bench_net = true,
            "--bench-net-only" => bench_net_only = args.next(),
            "--vfio" => vfio = true,
            "--arm64" => arm64 = true,
            "--bench-vcpus" => bench_vcpus = args.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            "--plot-ramp" => {
                let mut log = String::new();
                let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut log);
                print!("{}", plot::ramp_svg(&log));
                return;
            }
            // What a run without names runs (tests/vm/run.sh resumes a
            // wedged run with the ones that have not passed).
            "--list" | "--list-default" => {
                for s in scenarios::ALL {
                    println!("{}", s.name);
                }
                return;
            }
            _ => wanted.extend(a.split(',').filter(|s| !s.is_empty()).map(str::to_string)),
        }
    }
    if bench_net {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = net_bench::run(&env, &prefix, bench_net_only.as_deref()) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if bench_migration {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = migration_bench::run(&env, &prefix) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if bench_snapshot {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = snapshot_bench::run(&env, &prefix) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if bench_balloon {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = balloon_bench::run(&env, &prefix) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if bench_mem {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = mem_bench::run(&env, &prefix) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(secs) = bench_blk {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = bench::run_blk(&env, secs, &prefix) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(runs) = bench_runs {
        let prefix = PREFIX.with(|p| p.borrow().clone());
        if let Err(e) = bench::run(&env, runs, bench_vcpus, &prefix) {
            println!("{prefix}Bail out! benchmark failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    let all = if vfio {
        vfio_scenarios::ALL
    } else if arm64 {
        arm64_scenarios::ALL
    } else {
        scenarios::ALL
    };
    let selected: Vec<_> = if wanted.is_empty() {
        all.iter().collect()
    } else {
        all.iter()
            .filter(|s| wanted.iter().any(|w| w == s.name))
            .collect()
    };
    for w in &wanted {
        if !all.iter().any(|s| s.name == w) {
            eprintln!("caravel-rig: unknown scenario '{w}' (see --list)");
            std::process::exit(2);
        }
    }
    tap!("TAP version 13");
    tap!("1..{}", selected.len());
    let mut failed = 0;
    for (i, s) in selected.iter().enumerate() {
        tap!("# running {}", s.name);
        let t0 = Instant::now();
        let result = (s.run)(&env);
        let secs = t0.elapsed().as_secs_f64();
        match result {
            Ok(detail) => tap!("ok {} {} # {secs:.2} s; {detail}", i + 1, s.name),
            Err(msg) => {
                failed += 1;
                tap!("not ok {} {} # {secs:.2} s", i + 1, s.name);
                for line in msg.lines() {
                    tap!("#   {line}");
                }
            }
        }
    }
    tap!("# Totals: pass:{} fail:{failed}", selected.len() - failed);
    std::process::exit(i32::from(failed > 0));
}
