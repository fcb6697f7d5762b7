//! Caravel's `-g its` in the arm64 rig: the bare-metal guest of
//! `guests/its` (`/guest/its-tests.img`) tests the ITS of the VM Caravel
//! gives it, with 4 vCPUs, and prints TAP. The migration groups stop at
//! "Now migrate the VM": the VM is paused and snapshotted to files, its
//! Caravel is killed, a new Caravel restores it (guest memory, vCPUs, GIC,
//! ITS, devices), and a key on the new VM's UART lets the guest go on.

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

/// What the guest prints when it wants to be migrated (kvm-unit-tests').
const MIGRATE_PROMPT: &str = "Now migrate the VM, then press a key to continue...";

/// A group with migration: at each prompt a new `caravel --api-socket`
/// without a kernel receives the VM (`receive-migration`), the running one
/// sends it (`send-migration` over a Unix socket) and exits 0, and a key
/// on the new VM's UART lets the guest continue.
fn run_migrating(env: &Env, group: &str, want: usize) -> Result<String, String> {
    use std::time::{Duration, Instant};
    let timeout = Duration::from_secs(120);
    let sock = |n: usize| {
        env.tmp
            .join(format!("its-{group}-{n}.sock"))
            .display()
            .to_string()
    };
    let url = format!(
        "unix:{}",
        env.tmp.join(format!("its-{group}-stream.sock")).display()
    );
    let _ = std::fs::remove_file(sock(0));
    let mut args = caravel_args(env, group);
    args.extend(["--api-socket".into(), format!("path={}", sock(0))]);
    let started = Instant::now();
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    let mut lines: Vec<String> = Vec::new();
    let mut migrations: Vec<String> = Vec::new();
    loop {
        match s.expect(MIGRATE_PROMPT, timeout) {
            Ok(_) => {}
            // No more prompts: the guest ran to its end.
            Err(_) if !s.transcript.is_empty() => break,
            Err(e) => return Err(e),
        }
        let n = migrations.len();
        let (next, figures) =
            crate::migration_scenarios::hop(env, &mut s, &sock(n), &sock(n + 1), &url, &[], &[])
                .map_err(|e| format!("{e}\n{}", s.tail()))?;
        lines.append(&mut s.transcript);
        s = next;
        s.send("")?;
        migrations.push(figures);
    }
    let end = expect_exit(&mut s, 0);
    lines.append(&mut s.transcript);
    end.map_err(|e| format!("{e}\n{}", lines.join("\n")))?;
    if migrations.is_empty() {
        return Err(format!(
            "the guest never asked to be migrated:\n{}",
            lines.join("\n")
        ));
    }
    let ok = check_tap(&lines, want)?;
    Ok(format!(
        "{ok}/{want} guest checks ok on {CPUS} vCPUs across {} live migration(s) into a new Caravel process ({}); exit 0 after {:.2} s",
        migrations.len(),
        migrations.join("; "),
        started.elapsed().as_secs_f64()
    ))
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
