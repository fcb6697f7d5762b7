//! Hardware-reduced ACPI power management registers (three I/O ports):
//! sleep control (+0), sleep status (+1), reset (+2).
//!
//! The guest powers off by writing `SLP_EN | (SLP_TYP << 2)` with the S5 type
//! from the DSDT's `\_S5_`, and resets by writing the FADT's reset value to the
//! reset register.

use std::sync::Arc;

use crate::{BusDevice, GuestRequest, GuestRequestSink};

/// Sleep control register offset.
pub const SLEEP_CONTROL: u64 = 0;
/// Sleep status register offset.
pub const SLEEP_STATUS: u64 = 1;
/// Reset register offset.
pub const RESET: u64 = 2;
/// SLP_EN bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;

/// The register block.
pub struct AcpiPm {
    sink: Arc<dyn GuestRequestSink>,
    s5_type: u8,
    reset_value: u8,
}

impl AcpiPm {
    /// Registers that report S5 entries (`SLP_TYP == s5_type`) and writes of
    /// `reset_value` to the reset register to `sink`.
    pub fn new(sink: Arc<dyn GuestRequestSink>, s5_type: u8, reset_value: u8) -> Self {
        Self {
            sink,
            s5_type,
            reset_value,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status reads as 0 (WAK_STS clear); the others are write-only.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 => {
                let slp_typ = (v >> 2) & 0x7;
                if slp_typ == self.s5_type {
                    self.sink.request(GuestRequest::PowerOff);
                } else {
                    crate::warn_ratelimited!(
                        "acpi: sleep type {slp_typ} is not supported; ignored"
                    );
                }
            }
            RESET if v == self.reset_value => self.sink.request(GuestRequest::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i8042::tests::Requests;

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let sink = Arc::new(Requests::default());
        let mut pm = AcpiPm::new(sink.clone(), 5, 1);
        pm.write(SLEEP_CONTROL, &[5 << 2]); // no SLP_EN
        pm.write(SLEEP_CONTROL, &[SLP_EN | (3 << 2)]); // S3: unsupported
        pm.write(RESET, &[2]); // wrong value
        assert!(sink.0.lock().unwrap().is_empty());
        pm.write(SLEEP_CONTROL, &[SLP_EN | (5 << 2)]);
        pm.write(RESET, &[1]);
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![GuestRequest::PowerOff, GuestRequest::Reset]
        );
        let mut d = [0xff; 2];
        pm.read(SLEEP_STATUS, &mut d);
        assert_eq!(d, [0, 0]);
        pm.write(0, &[]);
    }
}
