//! Runs each case in a child process (`caravel-selftests --run-case NAME`),
//! as the kernel's harness forks: a case that crashes, hangs or leaks state
//! cannot take the others down. The child prints one result line; anything
//! else it prints on stderr is kept for the failure message.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cases::{Case, Diag};
use crate::check::Failure;
use crate::report::{CaseReport, Verdict};

/// Prefix of the child's result line on stdout.
pub const RESULT_PREFIX: &str = "CARAVEL-SELFTEST-RESULT ";
const STDERR_TAIL_LINES: usize = 8;

/// Runs `case` in this process and returns its report (the child side).
pub fn run_here(case: &Case) -> CaseReport {
    let mut diag = Diag::default();
    let start = Instant::now();
    let result = (case.run)(&mut diag);
    let (verdict, message) = match result {
        Ok(()) => (Verdict::Pass, String::new()),
        Err(Failure::Fail(m)) => (Verdict::Fail, m),
        Err(Failure::Skip(m)) => (Verdict::Skip, m),
    };
    CaseReport {
        name: case.name.into(),
        verdict,
        message,
        diagnostics: diag.into_lines(),
        millis: start.elapsed().as_millis() as u64,
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

fn failed(name: &str, message: String, start: Instant) -> CaseReport {
    CaseReport {
        name: name.into(),
        verdict: Verdict::Fail,
        message,
        diagnostics: vec![],
        millis: start.elapsed().as_millis() as u64,
    }
}

/// Runs case `name` as `exe --run-case NAME` (this executable, normally),
/// killing it after `timeout`.
pub fn run_in_child(exe: &Path, name: &str, timeout: Duration) -> CaseReport {
    let start = Instant::now();
    let mut child = match Command::new(exe)
        .args(["--run-case", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(name, format!("cannot start the case process: {e}"), start),
    };
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return failed(name, format!("waiting for the case failed: {e}"), start),
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let Some(status) = status else {
        return failed(
            name,
            format!(
                "TIMEOUT: no result after {} s (--timeout)",
                timeout.as_secs()
            ),
            start,
        );
    };
    let parsed = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .and_then(|json| serde_json::from_str::<CaseReport>(json).ok());
    match parsed {
        Some(mut r) => {
            r.millis = start.elapsed().as_millis() as u64;
            r
        }
        None => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.code(), status.signal()) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), _) => format!("exited with status {code}"),
                _ => "ended".into(),
            };
            let mut msg = format!("the case process {how} without a result");
            let t = tail(&stderr);
            if !t.is_empty() {
                msg.push('\n');
                msg.push_str(&t);
            }
            failed(name, msg, start)
        }
    }
}
