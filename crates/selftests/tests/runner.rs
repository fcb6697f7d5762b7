//! The command line and the case runner: listing, filtering, exit codes, and
//! how a case process that crashes, hangs or says nothing is reported.

#![cfg(target_arch = "x86_64")]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use selftests::report::Verdict;
use selftests::runner::run_in_child;

/// Tests run on parallel threads: a process forked by one while another has
/// a script open for writing inherits that descriptor until it execs, and
/// executing the script then fails with ETXTBSY. Writing scripts and
/// spawning the suite take this lock.
static WRITE_OR_FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn suite(args: &[&str]) -> (Option<i32>, String) {
    let _guard = WRITE_OR_FORK.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_caravel-selftests"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn list_filter_and_exit_codes() {
    let (code, text) = suite(&["--list"]);
    assert_eq!(code, Some(0));
    assert!(text.lines().count() >= 30, "{text}");
    let (code, text) = suite(&["--list", "--filter", "sync_regs.race_*"]);
    assert_eq!(code, Some(0));
    assert_eq!(text.lines().count(), 3, "{text}");
    let (code, text) = suite(&["--filter", "no.such_case"]);
    assert_eq!(code, Some(4), "all skipped is kselftest's 4");
    assert!(text.contains("1..0 # SKIP"), "{text}");
    let (code, _) = suite(&["--timeout", "0"]);
    assert_eq!(code, Some(2), "a bad command line is 2");
}

#[test]
fn json_output_is_one_document() {
    let (code, text) = suite(&["--json", "--filter", "stats.vm_fd"]);
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON document");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["name"], "stats.vm_fd");
    let verdict = cases[0]["verdict"].as_str().unwrap();
    assert!(["pass", "skip"].contains(&verdict), "{text}");
    assert_eq!(code, Some(if verdict == "pass" { 0 } else { 4 }));
}

/// A stand-in "case process": a shell script.
fn script(name: &str, body: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("caravel-selftests-{}-{name}", std::process::id()));
    let _guard = WRITE_OR_FORK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_crashing_hanging_or_silent_case_is_not_ok_with_the_reason() {
    let crash = script("crash", "echo 'guest: about to die' >&2; kill -SEGV $$");
    let r = run_in_child(&crash, "x.crash", Duration::from_secs(20));
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(r.message.contains("killed by signal 11"), "{}", r.message);
    assert!(
        r.message.contains("guest: about to die"),
        "stderr tail kept: {}",
        r.message
    );

    let hang = script("hang", "exec sleep 30");
    let r = run_in_child(&hang, "x.hang", Duration::from_secs(1));
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(r.message.starts_with("TIMEOUT"), "{}", r.message);
    assert!(
        r.millis < 10_000,
        "killed at the timeout, not after sleep: {} ms",
        r.millis
    );

    let silent = script("silent", "exit 3");
    let r = run_in_child(&silent, "x.silent", Duration::from_secs(20));
    assert!(
        r.message.contains("exited with status 3 without a result"),
        "{}",
        r.message
    );

    let real = PathBuf::from(env!("CARGO_BIN_EXE_caravel-selftests"));
    let r = run_in_child(&real, "no.such_case", Duration::from_secs(20));
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(r.message.contains("no such case"), "{}", r.message);
    for p in [crash, hang, silent] {
        std::fs::remove_file(p).unwrap();
    }
}
