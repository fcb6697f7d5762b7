//! `struct virtio_pci_common_cfg` (virtio 1.2 §4.1.4.3): register decoding and
//! the device status / feature negotiation rules.

use virtio_queue::{Queue, QueueT};

use crate::status;

/// The three rings of a split queue, by their common-config address field.
#[derive(Debug, Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}

impl Ring {
    /// The ring whose address field starts at `offset` (0x20, 0x28, 0x30).
    fn at(offset: u64) -> Self {
        match offset {
            0x20 => Ring::Desc,
            0x28 => Ring::Avail,
            _ => Ring::Used,
        }
    }
}

/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// The common configuration registers of one device.
#[derive(Debug)]
pub struct CommonConfig {
    /// Offered features.
    pub device_features: u64,
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
    /// The queues as the driver configures them.
    pub queues: Vec<Queue>,
    /// MSI-X vector of each queue.
    pub queue_vectors: Vec<u16>,
    /// Number of MSI-X vectors the function has.
    pub msix_vectors: u16,
}

/// What a register write asks the transport to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonAction {
    /// Nothing beyond the register update.
    None,
    /// Status was written 0: reset the device.
    Reset,
    /// DRIVER_OK was set: activate the device.
    Activate,
    /// A vector mapping changed (re-check routes).
    VectorsChanged,
}

impl CommonConfig {
    /// Registers for a device with `features` and queues of `max_sizes`.
    pub fn new(features: u64, max_sizes: &[u16], msix_vectors: u16) -> Self {
        Self {
            device_features: features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: max_sizes
                .iter()
                .map(|&m| {
                    Queue::new(m)
                        .unwrap_or_else(|_| Queue::new(256).expect("256 is a valid queue size"))
                })
                .collect(),
            queue_vectors: vec![NO_VECTOR; max_sizes.len()],
            msix_vectors,
        }
    }

    /// The registers and queues, for a snapshot (ring positions of active
    /// queues are the device's: the transport fills them in).
    pub fn state(&self) -> crate::state::CommonConfigState {
        crate::state::CommonConfigState {
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            config_vector: self.config_vector,
            status: self.status,
            queue_select: self.queue_select,
            queues: self
                .queues
                .iter()
                .map(crate::state::QueueSnapshot::of)
                .collect(),
            queue_vectors: self.queue_vectors.clone(),
        }
    }

    /// Restores saved registers into the configuration of the same device
    /// (same number of queues, same maximum sizes).
    pub fn restore(&mut self, st: &crate::state::CommonConfigState) -> Result<(), String> {
        if st.queues.len() != self.queues.len() || st.queue_vectors.len() != self.queues.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                st.queues.len(),
                self.queues.len()
            ));
        }
        let queues = st
            .queues
            .iter()
            .zip(&self.queues)
            .enumerate()
            .map(|(i, (saved, now))| {
                saved
                    .to_queue(now.max_size())
                    .map_err(|e| format!("queue {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.device_feature_select = st.device_feature_select;
        self.driver_feature_select = st.driver_feature_select;
        self.driver_features = st.driver_features & self.device_features;
        self.config_vector = self.vector_or_none(st.config_vector);
        self.status = st.status;
        self.queue_select = st.queue_select;
        self.queues = queues;
        self.queue_vectors = st
            .queue_vectors
            .iter()
            .map(|&v| self.vector_or_none(v))
            .collect();
        Ok(())
    }

    /// Back to the state after power-on (device reset).
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
    }

    /// Features both sides agreed on (valid after FEATURES_OK).
    pub fn negotiated(&self) -> u64 {
        self.driver_features & self.device_features
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn vector_or_none(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Driver read of `data.len()` bytes at `offset`; `generation` is the
    /// device's config generation.
    pub fn read(&self, offset: u64, data: &mut [u8], generation: u8) {
        let q = self.queues.get(usize::from(self.queue_select));
        let qv = self
            .queue_vectors
            .get(usize::from(self.queue_select))
            .copied();
        let v: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.config_vector),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => u64::from(generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => q.map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => qv.map_or(u64::from(NO_VECTOR), u64::from),
            (0x1c, 2) => q.map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20, 4) => q.map_or(0, |q| q.desc_table() & 0xffff_ffff),
            (0x24, 4) => q.map_or(0, |q| q.desc_table() >> 32),
            (0x20, 8) => q.map_or(0, |q| q.desc_table()),
            (0x28, 4) => q.map_or(0, |q| q.avail_ring() & 0xffff_ffff),
            (0x2c, 4) => q.map_or(0, |q| q.avail_ring() >> 32),
            (0x28, 8) => q.map_or(0, |q| q.avail_ring()),
            (0x30, 4) => q.map_or(0, |q| q.used_ring() & 0xffff_ffff),
            (0x34, 4) => q.map_or(0, |q| q.used_ring() >> 32),
            (0x30, 8) => q.map_or(0, |q| q.used_ring()),
            _ => {
                devices::warn_ratelimited!(
                    "virtio-pci: {}-byte common config read at {offset:#x}",
                    data.len()
                );
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }

    /// Driver write; returns what the transport must do next.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonAction {
        let mut b = [0u8; 8];
        b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let v = u64::from_le_bytes(b);
        // Queue configuration is frozen once the driver is running (and the
        // rings belong to the device): writes are ignored, as the spec demands
        // of drivers.
        let frozen = self.status & status::DRIVER_OK != 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & status::FEATURES_OK == 0 => match self.driver_feature_select
            {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            },
            (0x10, 2) => {
                self.config_vector = self.vector_or_none(v as u16);
                return CommonAction::VectorsChanged;
            }
            (0x14, 1) => return self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) if !frozen => {
                if let Some(q) = self.selected() {
                    // Validated here: virtio-queue's setter logs every bad
                    // size, which a guest could use to flood the log.
                    if q.try_set_size(v as u16).is_err() {
                        devices::warn_ratelimited!(
                            "virtio-pci: queue size {v} is not a power of two up to the maximum; ignored"
                        );
                    }
                }
            }
            (0x1a, 2) => {
                let vec = self.vector_or_none(v as u16);
                if let Some(slot) = self.queue_vectors.get_mut(usize::from(self.queue_select)) {
                    *slot = vec;
                    return CommonAction::VectorsChanged;
                }
            }
            (0x1c, 2) if !frozen => {
                // Writing 0 is not allowed (queue reset is not offered): ignored.
                if v == 1 {
                    if let Some(q) = self.selected() {
                        q.set_ready(true);
                    }
                }
            }
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) if !frozen => {
                let ring = Ring::at(offset & !0x7);
                let (low, high) = if offset & 0x4 == 0 {
                    (Some(v as u32), None)
                } else {
                    (None, Some(v as u32))
                };
                self.set_ring_address(ring, low, high);
            }
            (0x20 | 0x28 | 0x30, 8) if !frozen => {
                self.set_ring_address(Ring::at(offset), Some(v as u32), Some((v >> 32) as u32));
            }
            (0x0c, 4) | (0x18, 2) | (0x1c, 2) | (0x20..=0x34, 4) | (0x20 | 0x28 | 0x30, 8) => {
                devices::warn_ratelimited!(
                    "virtio-pci: write at {offset:#x} ignored in status {:#x}",
                    self.status
                );
            }
            _ => devices::warn_ratelimited!(
                "virtio-pci: {}-byte common config write at {offset:#x} ignored",
                data.len()
            ),
        }
        CommonAction::None
    }

    /// Sets half or all of a ring address of the selected queue, checking
    /// its alignment here (virtio-queue's setter would log each refusal, a
    /// log a guest could flood).
    fn set_ring_address(&mut self, ring: Ring, low: Option<u32>, high: Option<u32>) {
        let Some(q) = self.selected() else { return };
        let current = match ring {
            Ring::Desc => q.desc_table(),
            Ring::Avail => q.avail_ring(),
            Ring::Used => q.used_ring(),
        };
        let addr = (high.map_or(current >> 32, u64::from) << 32)
            | low.map_or(current & 0xffff_ffff, u64::from);
        let addr = vm_memory::GuestAddress(addr);
        let ok = match ring {
            Ring::Desc => q.try_set_desc_table_address(addr),
            Ring::Avail => q.try_set_avail_ring_address(addr),
            Ring::Used => q.try_set_used_ring_address(addr),
        }
        .is_ok();
        if !ok {
            devices::warn_ratelimited!(
                "virtio-pci: {ring:?} ring address {:#x} breaks its alignment; ignored",
                addr.0
            );
        }
    }

    fn write_status(&mut self, new: u8) -> CommonAction {
        if new == 0 {
            return CommonAction::Reset;
        }
        let old = self.status;
        // The driver only adds bits (virtio 1.2 §3.1.1); anything else is ignored.
        if new & old != old {
            devices::warn_ratelimited!(
                "virtio-pci: status {old:#x} -> {new:#x} clears bits; ignored"
            );
            return CommonAction::None;
        }
        let mut accepted = new;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.device_features;
            let version_1 = self.driver_features & crate::features::VERSION_1 != 0;
            if unknown != 0 || !version_1 {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                devices::warn_ratelimited!(
                    "virtio-pci: refusing features {:#x} (offered {:#x}{})",
                    self.driver_features,
                    self.device_features,
                    if version_1 { "" } else { ", VERSION_1 missing" }
                );
                accepted &= !status::FEATURES_OK;
            }
        }
        self.status = accepted;
        if accepted & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if accepted & status::FEATURES_OK == 0 {
                self.status |= status::DEVICE_NEEDS_RESET;
                return CommonAction::None;
            }
            return CommonAction::Activate;
        }
        CommonAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::VERSION_1;

    fn cc() -> CommonConfig {
        CommonConfig::new(VERSION_1 | 0b101, &[256, 128], 3)
    }

    fn r(c: &CommonConfig, off: u64, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        c.read(off, &mut d, 7);
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&d);
        u64::from_le_bytes(b)
    }

    fn w(c: &mut CommonConfig, off: u64, len: usize, v: u64) -> CommonAction {
        c.write(off, &v.to_le_bytes()[..len])
    }

    #[test]
    fn feature_windows_and_counts() {
        let mut c = cc();
        assert_eq!(r(&c, 0x04, 4), 0b101);
        w(&mut c, 0x00, 4, 1);
        assert_eq!(r(&c, 0x04, 4), 1, "VERSION_1 is bit 0 of the high word");
        w(&mut c, 0x00, 4, 7);
        assert_eq!(r(&c, 0x04, 4), 0);
        assert_eq!(r(&c, 0x12, 2), 2, "num_queues");
        assert_eq!(r(&c, 0x15, 1), 7, "config generation");
    }

    #[test]
    fn features_ok_requires_a_subset_with_version_1() {
        let mut c = cc();
        w(&mut c, 0x14, 1, 3);
        w(&mut c, 0x0c, 4, 0b111); // bit 1 not offered
        w(&mut c, 0x08, 4, 1);
        w(&mut c, 0x0c, 4, 1);
        w(&mut c, 0x14, 1, 3 | 8);
        assert_eq!(r(&c, 0x14, 1), 3, "FEATURES_OK refused");
        let mut c = cc();
        w(&mut c, 0x0c, 4, 0b100); // no VERSION_1
        w(&mut c, 0x14, 1, 11);
        assert_eq!(r(&c, 0x14, 1), 3);
        let mut c = cc();
        w(&mut c, 0x0c, 4, 0b100);
        w(&mut c, 0x08, 4, 1);
        w(&mut c, 0x0c, 4, 1);
        w(&mut c, 0x14, 1, 11);
        assert_eq!(r(&c, 0x14, 1), 11);
        assert_eq!(c.negotiated(), VERSION_1 | 0b100);
        w(&mut c, 0x08, 4, 0);
        w(&mut c, 0x0c, 4, 0b001);
        assert_eq!(
            c.negotiated(),
            VERSION_1 | 0b100,
            "features frozen after FEATURES_OK"
        );
        assert_eq!(w(&mut c, 0x14, 1, 15), CommonAction::Activate);
        assert_eq!(w(&mut c, 0x14, 1, 0), CommonAction::Reset);
    }

    #[test]
    fn driver_ok_without_features_ok_needs_reset() {
        let mut c = cc();
        assert_eq!(w(&mut c, 0x14, 1, 1 | 2 | 4), CommonAction::None);
        assert_ne!(r(&c, 0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn status_bits_cannot_be_cleared_except_by_reset() {
        let mut c = cc();
        w(&mut c, 0x14, 1, 3);
        w(&mut c, 0x14, 1, 1);
        assert_eq!(r(&c, 0x14, 1), 3);
    }

    #[test]
    fn queue_registers_follow_queue_select() {
        let mut c = cc();
        w(&mut c, 0x16, 2, 1);
        assert_eq!(r(&c, 0x18, 2), 128, "max size until written");
        w(&mut c, 0x18, 2, 64);
        w(&mut c, 0x20, 4, 0x1000);
        w(&mut c, 0x24, 4, 0x1);
        w(&mut c, 0x28, 8, 0x2000);
        w(&mut c, 0x30, 4, 0x3000);
        w(&mut c, 0x1a, 2, 2);
        w(&mut c, 0x1c, 2, 1);
        assert_eq!(r(&c, 0x20, 8), 0x1_0000_1000);
        assert_eq!(r(&c, 0x28, 4), 0x2000);
        assert_eq!(r(&c, 0x1a, 2), 2);
        assert_eq!(r(&c, 0x1c, 2), 1);
        assert_eq!(r(&c, 0x1e, 2), 1, "queue_notify_off = index");
        w(&mut c, 0x16, 2, 0);
        assert_eq!(r(&c, 0x18, 2), 256);
        assert_eq!(r(&c, 0x1a, 2), u64::from(NO_VECTOR));
        w(&mut c, 0x1a, 2, 3);
        assert_eq!(
            r(&c, 0x1a, 2),
            u64::from(NO_VECTOR),
            "vector beyond the table maps to NO_VECTOR"
        );
        w(&mut c, 0x16, 2, 9);
        assert_eq!(r(&c, 0x18, 2), 0, "no such queue reads 0");
        w(&mut c, 0x18, 2, 8);
    }

    #[test]
    fn queues_are_frozen_after_driver_ok_and_reset_clears() {
        let mut c = cc();
        w(&mut c, 0x08, 4, 1);
        w(&mut c, 0x0c, 4, 1);
        w(&mut c, 0x14, 1, 15);
        w(&mut c, 0x18, 2, 16);
        assert_eq!(r(&c, 0x18, 2), 256);
        c.reset();
        assert_eq!(r(&c, 0x14, 1), 0);
        assert_eq!(c.driver_features, 0);
    }

    #[test]
    fn wrong_widths_are_ignored() {
        let mut c = cc();
        assert_eq!(
            w(&mut c, 0x14, 2, 0),
            CommonAction::None,
            "status is one byte"
        );
        assert_eq!(r(&c, 0x04, 2), 0);
        assert_eq!(r(&c, 0x40, 4), 0);
        w(&mut c, 0x99, 1, 1);
        w(&mut c, 0x12, 2, 9);
        assert_eq!(r(&c, 0x12, 2), 2, "num_queues is read-only");
    }
}

#[cfg(test)]
mod log_flood_tests {
    use super::*;
    use crate::features::VERSION_1;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts log records by origin: virtio-queue's own, and everything.
    struct Counter;
    static FROM_VIRTIO_QUEUE: AtomicUsize = AtomicUsize::new(0);
    static ALL: AtomicUsize = AtomicUsize::new(0);

    impl log::Log for Counter {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            ALL.fetch_add(1, Ordering::Relaxed);
            if r.target().starts_with("virtio_queue") {
                FROM_VIRTIO_QUEUE.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn flush(&self) {}
    }

    #[test]
    fn bad_queue_sizes_and_addresses_cannot_flood_the_log() {
        // This test binary has no other logger; if one is set, counts are
        // still taken from ours only when ours is installed.
        if log::set_logger(&Counter).is_err() {
            return;
        }
        log::set_max_level(log::LevelFilter::Trace);
        let mut c = CommonConfig::new(VERSION_1, &[256], 2);
        for i in 0..10_000u32 {
            c.write(0x18, &(3 + 2 * (i as u16 % 100)).to_le_bytes()); // odd sizes
            c.write(0x20, &(i * 16 + 1).to_le_bytes()); // misaligned desc table
            c.write(0x30, &(i * 4 + 2).to_le_bytes()); // misaligned used ring
        }
        assert_eq!(FROM_VIRTIO_QUEUE.load(Ordering::Relaxed), 0);
        assert!(
            ALL.load(Ordering::Relaxed) < 100,
            "30,000 bad writes logged {} lines",
            ALL.load(Ordering::Relaxed)
        );
    }
}
