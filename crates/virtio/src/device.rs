//! What every virtio device provides.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use crate::state::DeviceState;

/// Signals the driver.
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers were added to queue `index`.
    fn notify_queue(&self, index: u16);
    /// The device configuration changed.
    fn notify_config(&self);
}

/// A queue the driver enabled, with the eventfd its notifications arrive on.
pub struct ActiveQueue {
    /// Queue index.
    pub index: u16,
    /// The ring, configured by the driver.
    pub queue: Queue,
    /// Readable when the driver notified the queue.
    pub notify: EventFd,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A required queue is missing or unusable.
    #[error("queue {0} is not usable")]
    BadQueue(u16),
    /// A feature the device requires was not accepted.
    #[error("the driver did not accept required feature bit {0}")]
    MissingFeature(u32),
    /// Starting the worker failed.
    #[error("cannot start the device: {0}")]
    Start(String),
}

/// Answers a driver read of `data.len()` bytes at `offset` from a device's
/// configuration bytes `config`; bytes past its end read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(config.len());
    let end = start.saturating_add(data.len()).min(config.len());
    data.fill(0);
    data[..end - start].copy_from_slice(&config[start..end]);
}

/// What every virtio device provides besides running its queues: identity,
/// features, configuration space, pause, saved state and reset. Nothing
/// here touches guest memory.
pub trait VirtioDeviceCommon: Send {
    /// Device type (see [`crate::device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (including [`crate::features::VERSION_1`]).
    fn features(&self) -> u64;
    /// Length of the device configuration space.
    fn config_len(&self) -> usize;
    /// Driver read of the device configuration (bounds already checked).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Driver write of the device configuration (ignored by most devices).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
        devices::warn_ratelimited!("virtio: write to read-only device configuration ignored");
    }
    /// Changes whenever the configuration changes (virtio `config_generation`).
    fn config_generation(&self) -> u32 {
        0
    }
    /// Stops processing and hands back the active queues with their ring
    /// positions (a VM pause, before a snapshot is read); [`activate`] with
    /// them continues where the device stopped. An inactive device returns
    /// none.
    ///
    /// [`activate`]: VirtioDevice::activate
    fn pause(&mut self) -> Vec<ActiveQueue>;
    /// Device-specific state for a snapshot, read while paused or inactive.
    fn save_state(&self) -> DeviceState {
        DeviceState::Stateless
    }
    /// Restores [`VirtioDeviceCommon::save_state`]'s answer into a freshly built
    /// device, before it is activated.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Stateless => Ok(()),
            other => Err(format!("state of another kind of device: {other:?}")),
        }
    }
    /// Device reset: stop processing and forget queue state. Device-specific
    /// state that must survive a device reset (virtio-mem's plugged blocks)
    /// survives.
    fn reset(&mut self);
}

/// A virtio device, independent of its transport and of how guest memory
/// is provided: `A` is the address space its worker loads guest memory
/// from (the VMM's [`crate::DeviceMemory`] by default; any
/// `vm_memory::GuestAddressSpace`, e.g. `Arc<GuestMemoryMmap>` in tests).
pub trait VirtioDevice<A: GuestAddressSpace = crate::DeviceMemory>: VirtioDeviceCommon {
    /// The driver set DRIVER_OK: start processing `queues` with `features`.
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        features: u64,
    ) -> Result<(), ActivateError>;
}
