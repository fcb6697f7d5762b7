//! The memory autopilot (`--memory ...,autosize=on`): the balloon's
//! statistics go into the [`policy`], and its answers become virtio-mem
//! requests, events and `vm.info`'s `autosize` section.
//!
//! The autopilot hangs off the balloon as a statistics listener; it holds
//! the virtio-mem device's handle (a sibling, not the VM), so the VM's
//! ownership stays a tree: the VM owns both devices and the autopilot.

pub mod policy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use virtio::balloon::{BalloonHandle, GuestMemoryStats};
use virtio::mem::MemHandle;

use crate::config::{AutosizeConfig, HotplugConfig};
use crate::events::EventMonitor;
pub use policy::{Decision, Policy, PolicyConfig, Reason, Sample};

/// How long the guest's want must stay low before memory is taken back.
pub const SHRINK_AFTER: Duration = Duration::from_secs(10);
/// Least time between a change and a shrink.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// What `vm.info` shows of the autopilot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AutosizeStatus {
    /// Least and most total RAM, and the headroom in percent.
    pub min: u64,
    /// Most total RAM.
    pub max: u64,
    /// Headroom in percent of the memory in use.
    pub headroom: u64,
    /// Total RAM the autopilot asks for now (boot plus requested).
    pub target: u64,
    /// The last decision and how long ago it was made (ms).
    pub last: Option<Decision>,
    /// Milliseconds since the last decision.
    pub last_ms_ago: Option<u64>,
    /// Statistics samples taken.
    pub samples: u64,
}

struct State {
    policy: Policy,
    last: Option<(Decision, Instant)>,
    samples: u64,
}

/// The autopilot of one VM.
pub struct Autopilot {
    cfg: AutosizeConfig,
    boot: u64,
    state: Mutex<State>,
    mem: MemHandle,
    events: Option<Arc<EventMonitor>>,
    started: Instant,
}

impl std::fmt::Debug for Autopilot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Autopilot").field(&self.status()).finish()
    }
}

impl Autopilot {
    /// Starts steering `mem` (the region of `hotplug`, over `boot` bytes of
    /// boot RAM) from `balloon`'s statistics; the first request is what
    /// the device has now, raised to `min`.
    pub fn start(
        cfg: AutosizeConfig,
        boot: u64,
        hotplug: &HotplugConfig,
        mem: MemHandle,
        balloon: &BalloonHandle,
        events: Option<Arc<EventMonitor>>,
    ) -> Arc<Self> {
        let pc = PolicyConfig {
            boot,
            region: hotplug.hotplug_size,
            block: hotplug.block_size,
            min: cfg.min,
            max: cfg.max,
            headroom_pct: cfg.headroom,
            shrink_after: SHRINK_AFTER,
            min_interval: MIN_INTERVAL,
        };
        let floor = cfg.min.saturating_sub(boot);
        let requested = mem.info().requested_size.max(floor);
        if requested != mem.info().requested_size {
            mem.set_requested(requested);
        }
        let pilot = Arc::new(Self {
            cfg,
            boot,
            state: Mutex::new(State {
                policy: Policy::new(pc, requested),
                last: None,
                samples: 0,
            }),
            mem,
            events,
            started: Instant::now(),
        });
        let p = pilot.clone();
        balloon.set_stats_listener(Box::new(move |s| p.observe(s)));
        pilot
    }

    /// One statistics update from the guest.
    fn observe(&self, s: &GuestMemoryStats) {
        let (Some(total), Some(available)) = (s.total_memory, s.available_memory) else {
            devices::warn_ratelimited!(
                "autosize: the guest's statistics lack total or available memory; no decision"
            );
            return;
        };
        let sample = Sample {
            at: self.started.elapsed(),
            total,
            available,
            swapped: s
                .swap_in
                .unwrap_or(0)
                .saturating_add(s.swap_out.unwrap_or(0)),
            major_faults: s.major_faults.unwrap_or(0),
        };
        let decision = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.samples += 1;
            // The device's request may have come from a restore.
            st.policy.sync_requested(self.mem.info().requested_size);
            let d = st.policy.observe(sample);
            if let Some(d) = d {
                st.last = Some((d, Instant::now()));
            }
            d
        };
        let Some(d) = decision else { return };
        self.mem.set_requested(d.requested);
        log::info!(
            "autosize: {:?}: {} MiB in use, asking for {} MiB in all",
            d.reason,
            d.used >> 20,
            d.total >> 20
        );
        if let Some(ev) = &self.events {
            ev.emit(
                "memory",
                "autosize",
                Some(serde_json::json!({
                    "reason": d.reason,
                    "used": d.used,
                    "target": d.total,
                    "requested_size": d.requested,
                })),
            );
        }
    }

    /// The autopilot's state for `vm.info`.
    pub fn status(&self) -> AutosizeStatus {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        AutosizeStatus {
            min: self.cfg.min,
            max: self.cfg.max,
            headroom: self.cfg.headroom,
            target: self.boot + st.policy.requested(),
            last: st.last.map(|(d, _)| d),
            last_ms_ago: st.last.map(|(_, at)| at.elapsed().as_millis() as u64),
            samples: st.samples,
        }
    }
}
