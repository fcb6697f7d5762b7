//! PCI, sans I/O.
//!
//! * [`ConfigSpace`]: a function's 4 KiB configuration space with the
//!   read-only / read-write / write-1-to-clear rules, BAR sizing and
//!   reprogramming, the capability list and the PCIe extended capability list.
//! * [`MsixTable`]: MSI-X table and pending-bit array with function and vector
//!   masking.
//! * [`PciBus`]: bus 0 with its functions, reached through type-1 ports
//!   ([`PciConfigIo`]) or ECAM ([`PciConfigMmio`]); BAR moves are handed to a
//!   [`BarMapper`] that the VMM implements.
//! * [`aml`]: the DSDT host bridge and the MCFG table describing it.
//!
//! Nothing here knows KVM: devices are driven through plain method calls, so
//! unit tests and fuzzers reach every rule.

pub mod aml;
mod bus;
mod caps;
mod config;
mod device;
mod host_bridge;
mod msix;

pub use bus::{BarMapper, PciBus, PciConfigIo, PciConfigMmio};
pub use caps::{pcie_endpoint_capability, CAP_ID_MSIX, CAP_ID_PCIE, CAP_ID_VENDOR};
pub use config::{Bar, BarKind, BarMove, ConfigSpace, ConfigSpaceState, PciClass};
pub use device::{BarRegion, PciDevice};
pub use host_bridge::HostBridge;
pub use msix::{
    apply_events, MsixCap, MsixEvent, MsixSink, MsixState, MsixTable, Trigger, MSIX_ENTRY_SIZE,
    MSIX_MAX_VECTORS,
};

/// A function's address on bus 0: device (0-31) and function (0-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevFn(pub u8);

impl DevFn {
    /// `device`.`function`
    pub fn new(device: u8, function: u8) -> Self {
        Self(((device & 0x1f) << 3) | (function & 7))
    }

    /// Device number.
    pub fn device(self) -> u8 {
        self.0 >> 3
    }

    /// Function number.
    pub fn function(self) -> u8 {
        self.0 & 7
    }
}

impl std::fmt::Display for DevFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0000:00:{:02x}.{}", self.device(), self.function())
    }
}
