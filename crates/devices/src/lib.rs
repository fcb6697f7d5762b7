//! Buses and legacy devices, independent of KVM.
//!
//! A [`Bus`] maps address ranges (I/O ports or guest-physical MMIO) to
//! [`BusDevice`]s. Devices report guest requests that end or restart the VM
//! through a [`GuestRequestSink`]; the `vmm` crate decides what they mean.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pl011;
pub mod ratelimit;
pub mod serial;
#[cfg(test)]
mod test_output;

pub use bus::{Bus, BusDevice, BusError};

/// Something the guest asked the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// ACPI S5 (soft off).
    PowerOff,
    /// Reset through the ACPI reset register or the i8042 reset line.
    Reset,
}

/// Receives [`GuestRequest`]s from devices.
pub trait GuestRequestSink: Send + Sync {
    /// Called from the vCPU thread that performed the access.
    fn request(&self, req: GuestRequest);
}
