//! Why a VM stops, reported once by whoever notices first.

use std::sync::Mutex;

use devices::{GuestRequest, GuestRequestSink};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register, i8042).
    Reset,
    /// The host asked the VM to stop (API `vm.shutdown`, SIGTERM).
    Shutdown,
    /// The guest moved to another Caravel (`vm.send-migration`) and runs
    /// there now.
    Migrated,
    /// The guest crashed or KVM failed; the message says how (exit reason,
    /// registers).
    Crash(String),
}

/// First-writer-wins exit reason plus an eventfd to wake the VMM's event loop.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal with no reason yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the VMM.
    pub fn set(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd to poll.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

impl GuestRequestSink for ExitSignal {
    fn request(&self, req: GuestRequest) {
        self.set(match req {
            GuestRequest::PowerOff => ExitReason::PowerOff,
            GuestRequest::Reset => ExitReason::Reset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.get(), None);
        s.request(GuestRequest::PowerOff);
        s.set(ExitReason::Crash("late".into()));
        assert_eq!(s.get(), Some(ExitReason::PowerOff));
        assert_eq!(s.event().read().unwrap(), 2);
    }
}
