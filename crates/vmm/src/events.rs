//! The event monitor: timestamped lifecycle events as JSON lines, in the
//! spirit of Cloud Hypervisor's `--event-monitor` (`timestamp`, `source`,
//! `event`, `properties`), one object per line.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The instant the VMM started; event timestamps are relative to it.
pub fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Writes events to a file.
#[derive(Debug)]
pub struct EventMonitor {
    out: Mutex<File>,
}

impl EventMonitor {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: Mutex::new(File::create(path)?),
        })
    }

    /// Appends one event.
    pub fn emit(&self, source: &str, event: &str, properties: Option<serde_json::Value>) {
        let t = process_start().elapsed();
        let line = serde_json::json!({
            "timestamp": { "secs": t.as_secs(), "nanos": t.subsec_nanos() },
            "source": source,
            "event": event,
            "properties": properties,
        });
        let mut f = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines() {
        let path = std::env::temp_dir().join(format!("caravel-events-{}", std::process::id()));
        let m = EventMonitor::create(&path).unwrap();
        m.emit("vm", "booting", None);
        m.emit("vcpu", "first-run", Some(serde_json::json!({"id": 0})));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "booting");
        assert_eq!(lines[1]["properties"]["id"], 0);
        assert!(lines[1]["timestamp"]["nanos"].is_u64());
    }
}
