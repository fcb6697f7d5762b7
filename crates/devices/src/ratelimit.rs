//! Rate-limited logging for events a guest can trigger at will.
//!
//! A guest that hammers an invalid register must not flood the host's logs, so
//! each call site logs at most [`BURST`] lines per [`WINDOW`], then one summary
//! of how many were suppressed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines allowed per window and call site.
pub const BURST: u64 = 10;
/// Window length.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Per-call-site state (a `static` created by [`warn_ratelimited!`](crate::warn_ratelimited)).
#[derive(Debug, Default)]
pub struct RateLimit {
    window_start_ms: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RateLimit {
    /// A limiter with an empty window.
    pub const fn new() -> Self {
        Self {
            window_start_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now; the second value is how many lines
    /// were suppressed in the previous window (reported once).
    pub fn check(&self) -> (bool, u64) {
        self.check_at(now_ms())
    }

    fn check_at(&self, now: u64) -> (bool, u64) {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let mut dropped = 0;
        if now.saturating_sub(start) >= WINDOW.as_millis() as u64
            && self
                .window_start_ms
                .compare_exchange(start, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
            dropped = self.suppressed.swap(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            (true, dropped)
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            (false, dropped)
        }
    }
}

/// `log::warn!` limited per call site; see the module docs.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        let (ok, dropped) = LIMIT.check();
        if dropped > 0 {
            log::warn!("{} similar messages suppressed", dropped);
        }
        if ok {
            log::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_suppresses_then_reports() {
        let l = RateLimit::new();
        let t0 = 10_000;
        let allowed = (0..25).filter(|_| l.check_at(t0).0).count() as u64;
        assert_eq!(allowed, BURST);
        let (ok, dropped) = l.check_at(t0 + WINDOW.as_millis() as u64 + 1);
        assert!(ok);
        assert_eq!(dropped, 25 - BURST);
    }
}
