//! The interface between a PCI function and the bus.

use std::sync::{Arc, Mutex};

use devices::BusDevice;

use crate::config::{Bar, BarMove};

/// A PCI function.
pub trait PciDevice: Send {
    /// Guest configuration read (1, 2 or 4 bytes, naturally aligned, below 4096).
    fn read_config(&mut self, offset: u16, data: &mut [u8]);
    /// Guest configuration write; returns the BARs it moved.
    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarMove>;
    /// The function's BARs.
    fn bars(&self) -> Vec<Bar>;
    /// Guest read inside BAR `bar` at `offset`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    /// Guest write inside BAR `bar` at `offset`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);
}

/// One BAR of a device as a bus device, so that the MMIO (or port) bus
/// dispatches accesses in the BAR to the function.
pub struct BarRegion {
    device: Arc<Mutex<dyn PciDevice>>,
    bar: u8,
}

impl BarRegion {
    /// The region of `device`'s BAR `bar`.
    pub fn new(device: Arc<Mutex<dyn PciDevice>>, bar: u8) -> Self {
        Self { device, bar }
    }
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_bar(self.bar, offset, data);
    }
}
