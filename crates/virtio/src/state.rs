//! Saved state of virtio devices and their PCI transport: plain data with
//! serde, read from a paused device and written into a freshly built one.
//!
//! A snapshot file is user input: everything here is validated when it is
//! restored (queue sizes, ring addresses, bitmap lengths), and a mismatch
//! with the device being restored into is refused with a message.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// One virtqueue: what the driver configured and where the device was in
/// its rings (virtio-queue's `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The device's maximum size.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QUEUE_ENABLE.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Driver (available) ring address.
    pub avail_ring: u64,
    /// Device (used) ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
}

impl QueueSnapshot {
    /// The state of `q`.
    pub fn of(q: &Queue) -> Self {
        let s = q.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }

    /// A queue in this state, if it is one a device of `max_size` can have.
    pub fn to_queue(&self, max_size: u16) -> Result<Queue, String> {
        if self.max_size != max_size {
            return Err(format!(
                "queue maximum size {} is not this device's {max_size}",
                self.max_size
            ));
        }
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| format!("invalid queue: {e:?}"))
    }
}

/// `struct virtio_pci_common_cfg` as the driver left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommonConfigState {
    /// DEVICE_FEATURE_SELECT.
    pub device_feature_select: u32,
    /// DRIVER_FEATURE_SELECT.
    pub driver_feature_select: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// MSI-X vector for configuration changes.
    pub config_vector: u16,
    /// DEVICE_STATUS.
    pub status: u8,
    /// QUEUE_SELECT.
    pub queue_select: u16,
    /// Every queue, with the ring positions of active ones.
    pub queues: Vec<QueueSnapshot>,
    /// MSI-X vector per queue.
    pub queue_vectors: Vec<u16>,
}

/// Device-specific state (what is not in the transport).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// The device keeps nothing beyond its queues (block, console, rng:
    /// their host ends, the disk image and the output, are reopened).
    Stateless,
    /// virtio-mem.
    Mem(crate::mem::MemSavedState),
    /// virtio-net (its TAP is reopened from the configuration).
    Net(crate::net::NetSavedState),
    /// virtio-vsock (its connections are not kept: the guest is told its
    /// transport was reset).
    Vsock(crate::vsock::VsockSavedState),
    /// virtio-balloon (sizes and the held statistics buffer).
    Balloon(crate::balloon::BalloonSavedState),
}

/// A virtio device on PCI: configuration space, MSI-X, common
/// configuration, ISR and the device's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// virtio device type, checked on restore.
    pub device_type: u32,
    /// PCI configuration space.
    pub config: pci::ConfigSpaceState,
    /// MSI-X table and pending bits.
    pub msix: pci::MsixState,
    /// Common configuration and queues.
    pub common: CommonConfigState,
    /// ISR status bits not yet read by the driver.
    pub isr: u8,
    /// The device.
    pub device: DeviceState,
}
