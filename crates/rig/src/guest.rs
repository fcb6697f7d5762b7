//! Driving Caravel and its guest: how a scenario starts `caravel`, types
//! commands at the guest, waits for its markers and calls `caravel-remote`.

use std::time::Duration;

use crate::session::Session;
use crate::Env;

/// A named scenario.
pub struct Scenario {
    /// TAP test name.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(&Env) -> Result<String, String>,
}

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn caravel_args(env: &Env, kernel: &str, test: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--kernel".into(),
        env.guest(kernel),
        "--initramfs".into(),
        env.guest("initrd.cpio.gz"),
        "--cmdline".into(),
        format!("console=ttyS0 quiet panic=-1 caravel.test={test}"),
        "--memory".into(),
        "size=256M".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

pub fn expect_exit(s: &mut Session, code: i32) -> Result<Duration, String> {
    let (status, t) = s.wait(BOOT_TIMEOUT)?;
    if status.code() != Some(code) {
        return Err(format!(
            "exit status {status}, expected {code}\n{}",
            s.tail()
        ));
    }
    Ok(t)
}

pub fn remote(env: &Env, sock: &str, cmd: &str) -> Result<String, String> {
    let out = std::process::Command::new(env.bin("caravel-remote"))
        .args(["--api-socket", sock, cmd])
        .output()
        .map_err(|e| format!("cannot run caravel-remote: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "caravel-remote {cmd} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `caravel-remote --api-socket SOCK snapshot URL`; its output.
pub fn remote_snapshot(env: &Env, sock: &str, url: &str) -> Result<String, String> {
    let out = std::process::Command::new(env.bin("caravel-remote"))
        .args(["--api-socket", sock, "snapshot", url])
        .output()
        .map_err(|e| format!("cannot run caravel-remote: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "caravel-remote snapshot failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn guest_cmd(s: &mut Session, cmd: &str) -> Result<Vec<String>, String> {
    guest_cmd_within(s, cmd, BOOT_TIMEOUT)
}

/// [`guest_cmd`] for a command that may take up to `timeout`.
pub fn guest_cmd_within(
    s: &mut Session,
    cmd: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    let start = s.transcript.len();
    s.send(cmd)?;
    let (done, _) = s.expect("CARAVEL-DONE", timeout)?;
    if !done.contains("rc=0") {
        return Err(format!(
            "guest command `{cmd}` failed: {done}\n{}",
            s.tail()
        ));
    }
    // Lines between our command's echo and the DONE marker.
    let lines = &s.transcript[start..s.transcript.len() - 1];
    Ok(lines
        .iter()
        .filter(|l| !l.contains("CARAVEL-GOT") && !l.contains("CARAVEL-READY"))
        .cloned()
        .collect())
}

/// Starts `caravel` with 2 vCPUs for guest test `test` and an API socket
/// named after `tag` (a stale one is removed first); returns the session
/// and the socket's path.
pub fn spawn_with_api(env: &Env, tag: &str, test: &str) -> Result<(Session, String), String> {
    let sock = env
        .tmp
        .join(format!("rig-{tag}.sock"))
        .display()
        .to_string();
    let _ = std::fs::remove_file(&sock);
    let s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(
            env,
            "vmlinux",
            test,
            &["--api-socket", &format!("path={sock}"), "--cpus", "boot=2"],
        ),
    )?;
    Ok((s, sock))
}
