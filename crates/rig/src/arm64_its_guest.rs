//! Caravel's `-g its` in the arm64 rig: the bare-metal guest of
//! `guests/its` (`/guest/its-tests.img`) tests the ITS of the VM Caravel
//! gives it, with 4 vCPUs, and prints TAP. The migration groups stop at
//! "Now migrate the VM": the VM is paused and saved, a new VM is built
//! from the same configuration and restored (guest memory, vCPUs, GIC,
//! ITS), the old one is dropped, and a key on the new VM's UART lets the
//! guest go on.

use crate::guest::expect_exit;
use crate::session::Session;
use crate::Env;

const GUEST: &str = "its-tests.img";
const CPUS: u8 = 4;
const MEMORY_MIB: u64 = 64;

/// Checks the guest's TAP: a plan, `want` checks, every one ok.
fn check_tap(lines: &[String], want: usize) -> Result<usize, String> {
    let tap: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok ") || l.starts_with("1.."))
        .collect();
    let failed: Vec<&&String> = tap.iter().filter(|l| l.starts_with("not ok")).collect();
    let plan = tap
        .iter()
        .find_map(|l| l.strip_prefix("1..")?.parse::<usize>().ok());
    let ok = tap.iter().filter(|l| l.starts_with("ok ")).count();
    let transcript = || lines.join("\n");
    if let Some(bail) = lines.iter().find(|l| l.starts_with("Bail out!")) {
        return Err(format!("the guest bailed out: {bail}\n{}", transcript()));
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} guest check(s) failed:\n{}",
            failed.len(),
            transcript()
        ));
    }
    match plan {
        Some(n) if n == want && ok == want => Ok(ok),
        _ => Err(format!(
            "expected a plan of {want} and {want} ok checks, got plan {plan:?} and {ok}:\n{}",
            transcript()
        )),
    }
}

fn caravel_args(env: &Env, group: &str) -> Vec<String> {
    [
        "--kernel",
        &env.guest(GUEST),
        "--cmdline",
        group,
        "--cpus",
        &format!("boot={CPUS}"),
        "--memory",
        &format!("size={MEMORY_MIB}M"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A group without migration, through the `caravel` binary.
fn run_cli(env: &Env, group: &str, want: usize) -> Result<String, String> {
    let mut s = Session::spawn(&env.bin("caravel"), &caravel_args(env, group))?;
    let t = expect_exit(&mut s, 0)?;
    let ok = check_tap(&s.transcript, want)?;
    Ok(format!(
        "{ok}/{want} guest checks ok on {CPUS} vCPUs; PSCI SYSTEM_OFF -> exit 0 at {:.2} s",
        t.as_secs_f64()
    ))
}

/// `its-introspection`: GITS_TYPER, IIDR, BASERn, GICD_TYPER.LPIS.
pub fn introspection(env: &Env) -> Result<String, String> {
    run_cli(env, "its-introspection", 12)
}

/// `its-trigger`: MAPD/MAPC/MAPTI + INT to the right vCPU only, INV and
/// INVALL on a disabled LPI, MOVI, unmapped events and devices.
pub fn trigger(env: &Env) -> Result<String, String> {
    run_cli(env, "its-trigger", 7)
}

/// `its-migration`: mapped collections and events survive a migration.
pub fn migration(env: &Env) -> Result<String, String> {
    run_migrating(env, "its-migration", 3)
}

/// `its-pending-migration`: 256 pending LPIs cross in the pending tables.
pub fn pending_migration(env: &Env) -> Result<String, String> {
    run_migrating(env, "its-pending-migration", 4)
}

/// `its-migrate-unmapped-collection`: an event whose collection is not
/// mapped crosses, and fires once the collection is mapped.
pub fn unmapped_collection(env: &Env) -> Result<String, String> {
    run_migrating(env, "its-migrate-unmapped-collection", 3)
}

/// A group with migration, through Caravel's `vmm` library: save, restore
/// into a new VM, resume, at each prompt.
#[cfg(target_arch = "aarch64")]
fn run_migrating(env: &Env, group: &str, want: usize) -> Result<String, String> {
    use std::time::{Duration, Instant};
    use vmm::config::{CpusConfig, LinuxPayload, MemoryConfig, Payload, VmConfig};
    /// What the guest prints when it wants to be migrated (kvm-unit-tests').
    const MIGRATE_PROMPT: &str = "Now migrate the VM, then press a key to continue...";

    let mut cfg = VmConfig::new(Payload::Linux(LinuxPayload {
        kernel: env.guest(GUEST).into(),
        initramfs: None,
        cmdline: group.into(),
    }));
    cfg.cpus = CpusConfig { boot_vcpus: CPUS };
    cfg.memory = MemoryConfig::boot_only(MEMORY_MIB << 20);
    let e = |e: vmm::Error| e.to_string();
    let out = crate::capture::Capture::default();
    let started = Instant::now();
    let mut running = vmm::Vm::new(&cfg, Box::new(out.clone()), None, None)
        .map_err(e)?
        .start()
        .map_err(e)?;
    let mut migrations: Vec<(Duration, usize)> = Vec::new();
    let deadline = started + Duration::from_secs(120);
    while running.exit_reason().is_none() {
        if Instant::now() > deadline {
            running.stop();
            return Err(format!(
                "the guest did not finish within 120 s:\n{}",
                out.text()
            ));
        }
        if out.text().matches(MIGRATE_PROMPT).count() > migrations.len() {
            let t0 = Instant::now();
            let old = running.pause();
            let state = old.snapshot().map_err(e)?;
            let fresh = vmm::Vm::new(&cfg, Box::new(out.clone()), None, None).map_err(e)?;
            fresh.restore(&state, old.memory()).map_err(e)?;
            drop(old);
            running = fresh.start().map_err(e)?;
            running
                .serial()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(b"\n");
            let regs = state.arch.vcpus.first().map_or(0, |v| v.regs.len());
            migrations.push((t0.elapsed(), regs));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let reason = running.stop();
    let lines: Vec<String> = out.text().lines().map(str::to_string).collect();
    if reason != vmm::ExitReason::PowerOff {
        return Err(format!(
            "the VM ended with {reason:?}:\n{}",
            lines.join("\n")
        ));
    }
    if migrations.is_empty() {
        return Err(format!(
            "the guest never asked to be migrated:\n{}",
            lines.join("\n")
        ));
    }
    let ok = check_tap(&lines, want)?;
    let (took, regs) = migrations[0];
    Ok(format!(
        "{ok}/{want} guest checks ok on {CPUS} vCPUs across {} migration(s) into a new VM (save + {MEMORY_MIB} MiB copy + restore {:.0} ms; {regs} registers per vCPU); exit 0 after {:.2} s",
        migrations.len(),
        took.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    ))
}

#[cfg(not(target_arch = "aarch64"))]
fn run_migrating(_: &Env, _: &str, _: usize) -> Result<String, String> {
    Err("aarch64 only".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn tap_needs_the_plan_and_every_check() {
        let good = lines("TAP version 13\nok 1 - a\nok 2 - b\n1..2\n# SUMMARY: 2 tests, 0 failed");
        assert_eq!(check_tap(&good, 2), Ok(2));
        assert!(check_tap(&good, 3).is_err());
        let failed = lines("ok 1 - a\nnot ok 2 - b\n1..2");
        assert!(check_tap(&failed, 2)
            .unwrap_err()
            .contains("1 guest check(s) failed"));
        let no_plan = lines("ok 1 - a\nok 2 - b");
        assert!(check_tap(&no_plan, 2).is_err());
        let bailed = lines("ok 1 - a\nBail out! CPU 0: unexpected exception");
        assert!(check_tap(&bailed, 1).unwrap_err().contains("bailed out"));
    }
}
