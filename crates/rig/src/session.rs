//! A child process driven through its stdin/stdout, with timestamps.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running command whose output lines we can wait for.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
    /// Every stdout line so far.
    pub transcript: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// When the process was spawned.
    pub started: Instant,
}

impl Session {
    /// Spawns `program args` with piped stdio.
    pub fn spawn(program: &Path, args: &[String]) -> Result<Self, String> {
        let started = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    match b {
                        b'\n' => {
                            let s = String::from_utf8_lossy(&line)
                                .trim_end_matches('\r')
                                .to_string();
                            line.clear();
                            if tx.send((Instant::now(), s)).is_err() {
                                return;
                            }
                        }
                        _ => line.push(b),
                    }
                }
            }
            if !line.is_empty() {
                let _ = tx.send((Instant::now(), String::from_utf8_lossy(&line).to_string()));
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().ok_or("no stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            lines,
            transcript: Vec::new(),
            stderr,
            started,
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line containing `needle`; returns the line and the
    /// time since spawn.
    pub fn expect(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<(String, Duration), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) => {
                    self.transcript.push(line.clone());
                    if line.contains(needle) {
                        return Ok((line, t - self.started));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line containing '{needle}' within {timeout:?}\n{}",
                        self.tail()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "output ended before a line containing '{needle}'\n{}",
                        self.tail()
                    ))
                }
            }
        }
    }

    /// Types `line` (plus newline) on the child's stdin.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("cannot write to stdin: {e}"))
    }

    /// Waits for the process to exit; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, Duration), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                while let Ok((_, line)) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.transcript.push(line);
                }
                return Ok((status, self.started.elapsed()));
            }
            if Instant::now() >= deadline {
                let verdict = self.terminate();
                return Err(format!(
                    "did not exit within {timeout:?}; {verdict}\n{}",
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends a child that overstayed: SIGTERM first, so a VMM that still
    /// runs its event loop exits on its own (which says the guest, not the
    /// VMM, hung), then SIGKILL. Returns which it was.
    fn terminate(&mut self) -> String {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("it answered SIGTERM ({status}): the process was responsive, the guest had not finished");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        "it ignored SIGTERM for 5 s and was killed: the process itself was stuck".into()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The last lines of output, for failure messages.
    pub fn tail(&self) -> String {
        let start = self.transcript.len().saturating_sub(15);
        format!(
            "--- last stdout lines:\n{}\n--- stderr:\n{}",
            self.transcript[start..].join("\n"),
            self.stderr()
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
