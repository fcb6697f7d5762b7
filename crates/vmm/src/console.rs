//! The host side of consoles: output sinks and the terminal's raw mode.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use vmm_sys_util::terminal::Terminal;

use crate::output::BoundedOutput;

use crate::config::ConsoleConfig;
use crate::{Error, Result};

/// Drops everything written.
struct Sink;

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Unbuffered writer on a duplicate of stdout, so guest output appears as it
/// is produced.
fn stdout_unbuffered() -> std::io::Result<File> {
    let fd = std::io::stdout().as_raw_fd();
    // SAFETY: `dup` on the process's stdout descriptor has no memory-safety
    // preconditions; the result is checked before use.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(dup) })
}

/// Reads from fd 0 without Rust's stdin buffer: bytes left in a userspace
/// buffer would never make the fd readable again, and the event loop polls the
/// fd, so every read must take bytes from the kernel only.
pub fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    // SAFETY: fd 0 stays open for the life of the process; ManuallyDrop keeps
    // this temporary File from closing it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    f.read(buf)
}

/// Opens the output for a console configured as `cfg`; `option` names the flag
/// in errors. Output is buffered (bounded) and written by a thread named
/// `name` ([`BoundedOutput`]): a host that does not read costs dropped
/// bytes, counted in `dropped`, never a blocked vCPU.
pub fn open_output(
    cfg: &ConsoleConfig,
    option: &'static str,
    name: &str,
    dropped: Arc<AtomicU64>,
) -> Result<Box<dyn Write + Send>> {
    let file = match cfg {
        ConsoleConfig::Off => return Ok(Box::new(Sink)),
        ConsoleConfig::Tty => stdout_unbuffered().map_err(Error::io("cannot duplicate stdout"))?,
        ConsoleConfig::File(p) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| {
                Error::config(
                    option,
                    format!("cannot open {} for writing: {e}", p.display()),
                )
            })?,
    };
    Ok(Box::new(BoundedOutput::new(name, file, dropped).map_err(
        Error::io("cannot start the console output thread"),
    )?))
}

/// Puts stdin in raw mode while alive (when it is a terminal), restoring
/// canonical mode on drop, also when unwinding.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Enters raw mode if stdin is a terminal.
    pub fn enter() -> Self {
        let stdin = std::io::stdin();
        let active =
            std::io::IsTerminal::is_terminal(&stdin) && stdin.lock().set_raw_mode().is_ok();
        Self { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}
