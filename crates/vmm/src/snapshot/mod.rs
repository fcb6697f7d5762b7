//! Whole-VM snapshots: the state of a paused VM as plain data
//! ([`VmState`]), and its files on disk ([`files`]).
//!
//! A snapshot directory holds `state.json` (a header line with the format
//! version, the architecture and a CRC-32 of the state that follows, then
//! the state as JSON) and `memory` (guest RAM, sparse: boot RAM and only
//! the plugged virtio-mem blocks, with holes for everything else and for
//! all-zero pages). `docs/snapshot.md` describes the format.

pub mod files;
mod memory_file;

use serde::{Deserialize, Serialize};

pub use crate::pci_segment::SavedDevice;
use crate::{Error, Result};

/// Version of [`VmState`]'s layout (and of the snapshot directory format).
pub const STATE_VERSION: u32 = 1;

/// What the architecture saves: vCPUs, interrupt controllers, clock.
#[cfg(target_arch = "x86_64")]
pub type ArchState = crate::x86_64::snapshot::VmState;
/// What the architecture saves: vCPUs, GICv3 and ITS.
#[cfg(target_arch = "aarch64")]
pub type ArchState = crate::aarch64::snapshot::VmState;

/// Everything of a paused VM but guest memory.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// [`STATE_VERSION`] when saved.
    pub version: u32,
    /// vCPUs, in-kernel interrupt controllers, clock.
    pub arch: ArchState,
    /// The console UART.
    pub serial: devices::serial::UartState,
    /// Every virtio device, by name.
    pub devices: Vec<SavedDevice>,
}

impl VmState {
    /// Refuses a state this Caravel cannot read.
    pub fn check_version(&self) -> Result<()> {
        if self.version != STATE_VERSION {
            return Err(Error::Snapshot(format!(
                "state version {} is not the {STATE_VERSION} this Caravel reads",
                self.version
            )));
        }
        Ok(())
    }

    /// The virtio-mem device's saved state, if the VM has one.
    pub fn memory_device(&self) -> Option<&virtio::mem::MemSavedState> {
        self.devices.iter().find_map(|d| match &d.state.device {
            virtio::state::DeviceState::Mem(m) => Some(m),
            _ => None,
        })
    }
}

/// The architecture this Caravel runs (`std::env::consts::ARCH`).
pub const ARCH: &str = std::env::consts::ARCH;
