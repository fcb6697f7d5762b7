//! Transports.

mod common_config;
mod pci;

pub use common_config::CommonConfig;
pub use pci::{VirtioPciDevice, BAR0_SIZE, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
