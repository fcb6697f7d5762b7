//! The host bridge at 00:00.0.

use crate::config::{Bar, BarMove, ConfigSpace, PciClass};
use crate::device::PciDevice;

/// Red Hat's generic PCIe host bridge ID (as QEMU's `gpex` uses), class 06.00.
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self {
            config: ConfigSpace::new(
                0x1b36,
                0x0008,
                PciClass {
                    class: 0x06,
                    subclass: 0x00,
                    prog_if: 0,
                },
                0,
                0x1b36,
                0x0008,
            ),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarMove> {
        self.config.write(offset, data)
    }

    fn bars(&self) -> Vec<Bar> {
        Vec::new()
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
