//! virtio 1.x devices and the virtio-pci modern transport.
//!
//! A device implements [`VirtioDevice`]: its type, features, configuration
//! space, and what to do with its queues once the driver is ready. Devices do
//! their queue work on a [`worker`] thread woken by eventfds (KVM ioeventfds in
//! the VMM, plain eventfds in tests), and signal the driver through a
//! [`VirtioInterrupt`]. The [`transport::VirtioPciDevice`] turns any device into a
//! PCI function: common/notify/ISR/device configuration structures in BAR 0,
//! MSI-X per queue plus one for configuration changes.
//!
//! Nothing here knows KVM: the request parsers and device cores are driven
//! in unit tests through virtio-queue's mock memory.

pub mod balloon;
pub mod block;
pub mod console;
mod device;
pub mod fd_io;
pub mod mem;
pub mod net;
mod queue_util;
pub mod rng;
pub mod state;
#[cfg(test)]
mod test_util;
pub mod transport;
pub mod vsock;
pub mod worker;

pub use device::{ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt};

/// Guest memory as devices see it: a view the VMM can replace while devices
/// run (it leaves out unplugged virtio-mem blocks, and follows plugs and
/// unplugs). Workers load the current view for each batch of requests.
pub type DeviceMemory = vm_memory::GuestMemoryAtomic<DeviceRam>;

/// One view of guest memory for devices: every write through it (used
/// rings, device-writable buffers, block reads) sets the page's bit in the
/// region's dirty bitmap, which live migration collects next to KVM's dirty
/// log of vCPU writes.
pub type DeviceRam = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// virtio device type IDs (virtio 1.2 §5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
    /// Memory device.
    pub const MEM: u32 = 24;
}

/// Feature bits common to all devices.
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// virtio 1.x (not legacy).
    pub const VERSION_1: u64 = 1 << 32;
    /// The device is behind an IOMMU (never offered: guest-physical DMA).
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up.
    pub const FAILED: u8 = 128;
}
