//! Bus 0 and the two ways to reach its configuration space.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use devices::BusDevice;

use crate::config::BarMove;
use crate::device::PciDevice;
use crate::DevFn;

/// Applies BAR moves to the machine (MMIO bus entries, ioeventfds). The VMM
/// implements it; errors are logged and the device stays where it was.
pub trait BarMapper: Send + Sync {
    /// `devfn` moved a BAR.
    fn move_bar(&self, devfn: DevFn, mv: &BarMove) -> Result<(), String>;
}

/// Bus 0: functions by device/function number.
pub struct PciBus {
    functions: RwLock<BTreeMap<DevFn, Arc<Mutex<dyn PciDevice>>>>,
    mapper: Arc<dyn BarMapper>,
}

impl PciBus {
    /// An empty bus whose BAR moves go to `mapper`.
    pub fn new(mapper: Arc<dyn BarMapper>) -> Self {
        Self {
            functions: RwLock::new(BTreeMap::new()),
            mapper,
        }
    }

    /// Plugs `device` in at `devfn`; false if the slot is taken.
    pub fn add(&self, devfn: DevFn, device: Arc<Mutex<dyn PciDevice>>) -> bool {
        let mut f = self.functions.write().unwrap_or_else(|e| e.into_inner());
        if f.contains_key(&devfn) {
            return false;
        }
        f.insert(devfn, device);
        true
    }

    /// Unplugs every function (VM teardown): configuration accesses then
    /// read all ones, and the functions are dropped unless held elsewhere.
    pub fn clear(&self) {
        self.functions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// First free device number with function 0, from `from`.
    pub fn free_slot(&self, from: u8) -> Option<DevFn> {
        let f = self.functions.read().unwrap_or_else(|e| e.into_inner());
        (from..32)
            .map(|d| DevFn::new(d, 0))
            .find(|d| !f.contains_key(d))
    }

    fn function(&self, bus: u8, devfn: DevFn) -> Option<Arc<Mutex<dyn PciDevice>>> {
        if bus != 0 {
            return None;
        }
        self.functions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&devfn)
            .cloned()
    }

    /// Configuration read; absent functions read all ones.
    pub fn read(&self, bus: u8, devfn: DevFn, reg: u16, data: &mut [u8]) {
        match self.function(bus, devfn) {
            Some(d) => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_config(reg, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write; absent functions ignore it.
    pub fn write(&self, bus: u8, devfn: DevFn, reg: u16, data: &[u8]) {
        let Some(d) = self.function(bus, devfn) else {
            return;
        };
        // The device lock is released before the mapper takes the MMIO bus lock.
        let moves = d
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_config(reg, data);
        for mv in moves {
            if let Err(e) = self.mapper.move_bar(devfn, &mv) {
                devices::warn_ratelimited!(
                    "pci {devfn}: BAR{} move {:#x} -> {:#x} refused: {e}",
                    mv.index,
                    mv.old,
                    mv.new
                );
            }
        }
    }
}

/// Type-1 configuration mechanism: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at
/// 0xcfc-0xcff (insert on the port bus at 0xcf8 with length 8).
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    /// Access to `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus, address: 0 }
    }

    /// Decodes CONFIG_ADDRESS plus the data port offset into (bus, devfn, reg).
    fn target(&self, data_offset: u64) -> Option<(u8, DevFn, u16)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let devfn = DevFn((self.address >> 8) as u8);
        let reg = (self.address & 0xfc) as u16 + data_offset as u16;
        Some((bus, devfn, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target(offset - 4) {
                Some((bus, devfn, reg)) if (offset - 4) as usize + data.len() <= 4 => {
                    self.bus.read(bus, devfn, reg, data)
                }
                _ => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().unwrap_or_default())
            }
            4..=7 => {
                if let Some((bus, devfn, reg)) = self.target(offset - 4) {
                    if (offset - 4) as usize + data.len() <= 4 {
                        self.bus.write(bus, devfn, reg, data);
                    }
                }
            }
            _ => {}
        }
    }
}

/// ECAM: bus << 20 | device << 15 | function << 12 | register, in MMIO.
pub struct PciConfigMmio {
    bus: Arc<PciBus>,
}

impl PciConfigMmio {
    /// Access to `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus }
    }

    fn decode(offset: u64) -> (u8, DevFn, u16) {
        (
            (offset >> 20) as u8,
            DevFn((offset >> 12) as u8),
            (offset & 0xfff) as u16,
        )
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, devfn, reg) = Self::decode(offset);
        self.bus.read(bus, devfn, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, devfn, reg) = Self::decode(offset);
        self.bus.write(bus, devfn, reg, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bar, BarKind, ConfigSpace, PciClass};
    use crate::host_bridge::HostBridge;

    #[derive(Default)]
    struct Moves(Mutex<Vec<(DevFn, BarMove)>>);
    impl BarMapper for Moves {
        fn move_bar(&self, devfn: DevFn, mv: &BarMove) -> Result<(), String> {
            self.0.lock().unwrap().push((devfn, *mv));
            Ok(())
        }
    }

    struct Dev(ConfigSpace);
    impl PciDevice for Dev {
        fn read_config(&mut self, o: u16, d: &mut [u8]) {
            self.0.read(o, d)
        }
        fn write_config(&mut self, o: u16, d: &[u8]) -> Vec<BarMove> {
            self.0.write(o, d)
        }
        fn bars(&self) -> Vec<Bar> {
            self.0.bars().copied().collect()
        }
        fn read_bar(&mut self, _: u8, _: u64, d: &mut [u8]) {
            d.fill(0)
        }
        fn write_bar(&mut self, _: u8, _: u64, _: &[u8]) {}
    }

    fn setup() -> (Arc<PciBus>, Arc<Moves>) {
        let moves = Arc::new(Moves::default());
        let bus = Arc::new(PciBus::new(moves.clone()));
        assert!(bus.add(
            DevFn::new(0, 0),
            Arc::new(Mutex::new(HostBridge::default()))
        ));
        let mut cfg = ConfigSpace::new(
            0x1af4,
            0x1044,
            PciClass {
                class: 0xff,
                subclass: 0,
                prog_if: 0,
            },
            1,
            0,
            0,
        );
        cfg.add_bar(0, BarKind::Mem32, 0x1000, false, 0xc000_0000);
        assert!(bus.add(DevFn::new(3, 0), Arc::new(Mutex::new(Dev(cfg)))));
        (bus, moves)
    }

    #[test]
    fn type1_reads_ids_and_absent_functions_read_ones() {
        let (bus, _) = setup();
        let mut io = PciConfigIo::new(bus.clone());
        io.write(0, &(0x8000_0000u32 | (3 << 11)).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1044_1af4);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(
            u16::from_le_bytes(w),
            0x1044,
            "device ID through CONFIG_DATA + 2"
        );
        io.write(0, &(0x8000_0000u32 | (4 << 11)).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "no device 4");
        io.write(0, &(3u32 << 11).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "enable bit clear");
        io.write(0, &(0x8001_0000u32).to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 does not exist");
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(
            u32::from_le_bytes(a),
            0x8001_0000,
            "CONFIG_ADDRESS reads back"
        );
        io.read(6, &mut d);
        assert_eq!(d, [0xff; 4], "4 bytes at cfc+2 cross the data port");
    }

    #[test]
    fn ecam_reaches_the_same_functions_and_moves_bars() {
        let (bus, moves) = setup();
        let mut ecam = PciConfigMmio::new(bus);
        let mut d = [0u8; 4];
        ecam.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36, "host bridge at 00.0");
        let base = 3 << 15;
        ecam.write(base + 0x10, &0xc010_0000u32.to_le_bytes());
        let m = moves.0.lock().unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].0, m[0].1.new), (DevFn::new(3, 0), 0xc010_0000));
        drop(m);
        ecam.read(base + (1 << 12), &mut d);
        assert_eq!(d, [0xff; 4], "function 1 absent");
        ecam.read(1 << 20, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 absent");
    }

    #[test]
    fn slots_are_unique_and_found() {
        let (bus, _) = setup();
        assert!(!bus.add(
            DevFn::new(3, 0),
            Arc::new(Mutex::new(HostBridge::default()))
        ));
        assert_eq!(bus.free_slot(1), Some(DevFn::new(1, 0)));
        assert_eq!(bus.free_slot(3), Some(DevFn::new(4, 0)));
        assert_eq!(DevFn::new(3, 2).to_string(), "0000:00:03.2");
    }
}
