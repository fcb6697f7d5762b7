//! The memory autopilot's policy: a pure function of the guest's memory
//! statistics over time that answers how much virtio-mem memory to request.
//!
//! From each sample it takes the guest's memory in use (total minus
//! available) and wants that plus `headroom` percent (and at least
//! [`MIN_SLACK`]) as the guest's total RAM, within `min..=max`:
//!
//! * **grow** at once when the want is above what is requested, and by a
//!   step more when the guest shows pressure (swapping, or a burst of
//!   major faults): a guest must not run short waiting for a timer;
//! * **shrink** only when the want has stayed below what is requested by
//!   more than the hysteresis for `shrink_after`, and not sooner than
//!   `min_interval` after the last change: memory that is idle for a
//!   while goes, a dip does not.
//!
//! Nothing here reads clocks or touches devices: the VMM feeds samples
//! with their times and applies the answers, and the tests replay traces.

use std::time::Duration;

use serde::Serialize;

/// The least slack above the memory in use: room for what the guest
/// allocates until the next sample, and for the memory map of hot-added
/// memory (Linux takes it from memory it already has: a guest without free
/// memory cannot plug more).
pub const MIN_SLACK: u64 = 128 << 20;
/// Major faults per sample that count as pressure (a guest re-reading
/// dropped page cache; without swap these are the sign of a tight guest).
pub const MAJOR_FAULT_PRESSURE: u64 = 200;

/// The policy's knobs and the VM's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Boot RAM (not managed: the floor of any total).
    pub boot: u64,
    /// Size of the virtio-mem region.
    pub region: u64,
    /// virtio-mem block size (requests are multiples of it).
    pub block: u64,
    /// Least total RAM (at least `boot`).
    pub min: u64,
    /// Most total RAM (at most `boot + region`).
    pub max: u64,
    /// Slack above the memory in use, in percent of it.
    pub headroom_pct: u64,
    /// How long the want must stay below the request before shrinking.
    pub shrink_after: Duration,
    /// Least time between two changes that shrink.
    pub min_interval: Duration,
}

/// One statistics update, as the VMM feeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// When it arrived (since the VM started).
    pub at: Duration,
    /// The guest's total memory (`total_memory`).
    pub total: u64,
    /// Memory available to new work (`available_memory`).
    pub available: u64,
    /// Bytes swapped in and out so far (counters).
    pub swapped: u64,
    /// Major faults so far (counter).
    pub major_faults: u64,
}

/// Why the request changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The memory in use plus headroom is above the request.
    Demand,
    /// The guest swapped or faulted heavily: grow by a step more.
    Pressure,
    /// The want stayed below the request for `shrink_after`.
    Idle,
}

/// A new virtio-mem request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Bytes of the region to request.
    pub requested: u64,
    /// The guest's total RAM that makes (boot plus requested).
    pub total: u64,
    /// The memory in use the decision was based on.
    pub used: u64,
    /// Why.
    pub reason: Reason,
}

/// The policy's state between samples.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    requested: u64,
    last: Option<Sample>,
    last_change: Option<Duration>,
    low_since: Option<Duration>,
}

impl Policy {
    /// A policy starting from `requested` bytes of the region.
    pub fn new(cfg: PolicyConfig, requested: u64) -> Self {
        Self {
            cfg,
            requested,
            last: None,
            last_change: None,
            low_since: None,
        }
    }

    /// What is requested now.
    pub fn requested(&self) -> u64 {
        self.requested
    }

    /// The request as the device has it (a restore or a migration brings
    /// its own): decisions start from there.
    pub fn sync_requested(&mut self, requested: u64) {
        self.requested = requested;
    }

    /// The request range `min..=max` allows, in blocks.
    fn bounds(&self) -> (u64, u64) {
        let c = &self.cfg;
        let lo = c.min.saturating_sub(c.boot).next_multiple_of(c.block);
        let hi = (c.max.saturating_sub(c.boot).min(c.region) / c.block) * c.block;
        (lo.min(hi), hi)
    }

    /// The request that gives the guest `total` bytes, within bounds.
    fn request_for(&self, total: u64) -> u64 {
        let (lo, hi) = self.bounds();
        total
            .saturating_sub(self.cfg.boot)
            .next_multiple_of(self.cfg.block)
            .clamp(lo, hi)
    }

    /// Takes one sample; answers a new request when one is due.
    pub fn observe(&mut self, s: Sample) -> Option<Decision> {
        let c = self.cfg;
        let used = s.total.saturating_sub(s.available);
        let slack = (used.saturating_mul(c.headroom_pct) / 100).max(MIN_SLACK);
        let mut want = self.request_for(used.saturating_add(slack));
        let mut reason = Reason::Demand;
        if let Some(prev) = self.last {
            let swapped = s.swapped.saturating_sub(prev.swapped);
            let faults = s.major_faults.saturating_sub(prev.major_faults);
            if swapped > 0 || faults >= MAJOR_FAULT_PRESSURE {
                let current = c.boot + self.requested;
                let step = (current / 4).max(128 << 20);
                let pressed = self.request_for(current.saturating_add(step));
                if pressed > want {
                    want = pressed;
                    reason = Reason::Pressure;
                }
            }
        }
        self.last = Some(s);
        if want > self.requested {
            self.low_since = None;
            return Some(self.change(s.at, want, used, reason));
        }
        let current = c.boot + self.requested;
        let hysteresis = (current.saturating_mul(c.headroom_pct) / 200).max(c.block);
        if want + hysteresis > self.requested {
            self.low_since = None;
            return None;
        }
        let since = *self.low_since.get_or_insert(s.at);
        let idle = s.at.saturating_sub(since) >= c.shrink_after;
        let rested = self
            .last_change
            .is_none_or(|t| s.at.saturating_sub(t) >= c.min_interval);
        if idle && rested {
            self.low_since = None;
            return Some(self.change(s.at, want, used, Reason::Idle));
        }
        None
    }

    fn change(&mut self, at: Duration, requested: u64, used: u64, reason: Reason) -> Decision {
        self.requested = requested;
        self.last_change = Some(at);
        Decision {
            requested,
            total: self.cfg.boot + requested,
            used,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            boot: 256 * MIB,
            region: 1024 * MIB,
            block: 2 * MIB,
            min: 256 * MIB,
            max: 1280 * MIB,
            headroom_pct: 20,
            shrink_after: Duration::from_secs(10),
            min_interval: Duration::from_secs(5),
        }
    }

    /// A sample at second `t` of a guest with `total` MiB, `used` MiB in
    /// use (a guest cannot use more than it has: nothing is available then).
    fn at(t: u64, total: u64, used: u64) -> Sample {
        Sample {
            at: Duration::from_secs(t),
            total: total * MIB,
            available: total.saturating_sub(used) * MIB,
            ..Default::default()
        }
    }

    /// Replays a working set (MiB per second) against a guest whose total
    /// follows the policy's answers at once; returns (second, total MiB)
    /// after each decision.
    fn replay(p: &mut Policy, ws: &[u64]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (t, &used) in ws.iter().enumerate() {
            let total = 256 + p.requested() / MIB;
            if let Some(d) = p.observe(at(t as u64, total, used)) {
                out.push((t as u64, d.total / MIB));
            }
        }
        out
    }

    #[test]
    fn a_ramp_is_followed_up_at_once_and_down_after_the_idle_time() {
        let mut p = Policy::new(cfg(), 0);
        // 200 MiB, ramp to 1000 MiB by 40 MiB a second (within the 20%
        // headroom of each step), hold, back to 200.
        let mut ws = vec![200; 3];
        ws.extend((6..=25).map(|i| i * 40));
        ws.extend([1000; 8]);
        ws.extend([200; 30]);
        let steps = replay(&mut p, &ws);
        // Growth: every step answered in the same second, with headroom.
        for (t, used) in ws.iter().enumerate().take(31) {
            let total = steps
                .iter()
                .rfind(|(s, _)| *s <= t as u64)
                .map_or(256, |s| s.1);
            assert!(
                total >= used + used / 5 || total == 1280,
                "second {t}: total {total} MiB for {used} MiB in use"
            );
        }
        // The drop to 200 MiB at second 31 shrinks once, 10 s later.
        let shrinks: Vec<_> = steps.iter().filter(|(t, _)| *t > 31).collect();
        assert_eq!(shrinks.len(), 1, "{steps:?}");
        assert_eq!(shrinks[0].0, 41);
        assert_eq!(shrinks[0].1, 200 + 128, "200 MiB + 128 MiB slack, as total");
    }

    #[test]
    fn a_short_dip_does_not_shrink() {
        let mut p = Policy::new(cfg(), 768 * MIB);
        let mut ws = vec![800; 5];
        ws.extend([300; 9]); // shorter than shrink_after
        ws.extend([800; 20]);
        let steps = replay(&mut p, &ws);
        assert!(
            steps.iter().all(|(_, total)| *total >= 960),
            "no shrink for a 9 s dip: {steps:?}"
        );
    }

    #[test]
    fn bounds_hold_however_the_guest_behaves() {
        let c = PolicyConfig {
            min: 512 * MIB,
            max: 1024 * MIB,
            ..cfg()
        };
        let mut p = Policy::new(c, 0);
        let d = p.observe(at(0, 256, 10)).unwrap();
        assert_eq!(d.total, 512 * MIB, "grown to min at the first sample");
        let huge = |t| Sample {
            at: Duration::from_secs(t),
            total: 5000 * MIB,
            available: 0,
            ..Default::default()
        };
        let d = p.observe(huge(1)).unwrap();
        assert_eq!(d.total, 1024 * MIB, "never above max");
        assert_eq!(p.observe(huge(2)), None);
        // Garbage (available above total) reads as nothing in use.
        for t in 3..40 {
            let s = Sample {
                at: Duration::from_secs(t),
                total: 100,
                available: u64::MAX,
                swapped: 0,
                major_faults: 0,
            };
            if let Some(d) = p.observe(s) {
                assert_eq!(d.total, 512 * MIB, "never below min");
            }
        }
        assert_eq!(p.requested(), 256 * MIB);
    }

    #[test]
    fn pressure_grows_by_a_step_beyond_the_demand() {
        let mut p = Policy::new(cfg(), 256 * MIB);
        assert_eq!(p.observe(at(0, 512, 300)), None);
        let mut s = at(1, 512, 300);
        s.swapped = 4096;
        let d = p.observe(s).unwrap();
        assert_eq!(d.reason, Reason::Pressure);
        assert_eq!(d.total, 512 * MIB + 128 * MIB);
        let mut s = at(2, 640, 300);
        s.swapped = 4096;
        s.major_faults = MAJOR_FAULT_PRESSURE;
        assert_eq!(p.observe(s).unwrap().reason, Reason::Pressure);
        // Counters that go backwards (a guest reboot) are not pressure.
        let d = p.observe(at(3, 800, 300));
        assert!(d.is_none(), "{d:?}");
    }

    #[test]
    fn shrinking_waits_for_the_interval_after_a_change() {
        let c = PolicyConfig {
            shrink_after: Duration::ZERO,
            min_interval: Duration::from_secs(5),
            ..cfg()
        };
        let mut p = Policy::new(c, 0);
        assert!(p.observe(at(0, 256, 900)).is_some());
        for t in 1..5 {
            assert_eq!(p.observe(at(t, 1280, 100)), None, "second {t}");
        }
        assert_eq!(p.observe(at(5, 1280, 100)).unwrap().reason, Reason::Idle);
    }
}
