//! A host PCI device passed through to the guest with VFIO.
//!
//! The guest sees an emulated type-0 header with the device's IDs and class,
//! its memory BARs at addresses Caravel chose, read-only copies of the
//! device's power-management and PCI Express capabilities, and MSI-X, at
//! the device's own table and PBA locations, emulated over VFIO's MSI-X IRQ
//! index (one eventfd per vector, which is the vector's KVM irqfd). Command
//! register writes (memory decode, bus mastering) reach the device. BARs
//! that VFIO can mmap and that hold no MSI-X structure become KVM memory
//! slots, so the guest touches the device without exits; the others are
//! trapped and forwarded with pread/pwrite on the VFIO region. There is no
//! INTx (VFs have none) and no I/O-port BAR.

use std::os::fd::RawFd;
use std::sync::Arc;

use pci::{
    apply_events, Bar, BarKind, BarMove, ConfigSpace, MsixCap, MsixTable, PciClass, PciDevice,
    CAP_ID_MSIX, CAP_ID_PCIE,
};
use vfio::device::{Device, Mapping, RegionInfo};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};

use crate::interrupt::MsixVectors;
use crate::{Error, Result};

const COMMAND: u16 = 0x04;
/// Command bits the guest may pass to the device: I/O, memory, bus master.
const COMMAND_PASSED: u16 = 0x7;
const MAX_CAPS: usize = 48;
const CAP_ID_PM: u8 = 0x01;

/// Where the device keeps its MSI-X table and PBA.
#[derive(Debug, Clone, Copy)]
struct MsixLayout {
    vectors: u16,
    table_bar: u8,
    table_offset: u64,
    pba_bar: u8,
    pba_offset: u64,
}

/// One memory BAR of the device.
struct DeviceBar {
    bar: Bar,
    region: RegionInfo,
    /// The region mapped into this process, when the guest gets it directly.
    mapping: Option<Mapping>,
}

/// A BAR the VMM should register with KVM as a memory slot.
pub struct DirectBar {
    /// BAR number.
    pub index: u8,
    /// Guest address.
    pub addr: u64,
    /// Size.
    pub size: u64,
    /// Host address of the mapped region.
    pub host: u64,
}

/// A passed-through PCI function.
pub struct VfioPciDevice {
    name: String,
    dev: Device,
    config: ConfigSpace,
    cfg_region: RegionInfo,
    bars: Vec<DeviceBar>,
    msix: Option<(MsixCap, MsixLayout, MsixTable)>,
    sink: Arc<MsixVectors>,
    vfio_irqs_on: bool,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The device's standard capabilities: (ID, offset), in list order, bounded.
fn capabilities(cfg: &[u8; 256]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    if u16_at(cfg, 0x06) & 0x10 == 0 {
        return out; // no capability list
    }
    let mut off = usize::from(cfg[0x34] & !3);
    for _ in 0..MAX_CAPS {
        if !(0x40..=0xfc).contains(&off) || out.iter().any(|&(_, o)| o == off) {
            break;
        }
        out.push((cfg[off], off));
        off = usize::from(cfg[off + 1] & !3);
    }
    out
}

/// Finds the MSI-X capability in the device's configuration space.
fn find_msix(cfg: &[u8; 256]) -> Option<MsixLayout> {
    let (_, off) = capabilities(cfg)
        .into_iter()
        .find(|&(id, off)| id == CAP_ID_MSIX && off + 12 <= 256)?;
    let ctrl = u16_at(cfg, off + 2);
    let table = u32_at(cfg, off + 4);
    let pba = u32_at(cfg, off + 8);
    Some(MsixLayout {
        vectors: (ctrl & 0x7ff) + 1,
        table_bar: (table & 7) as u8,
        table_offset: u64::from(table & !7),
        pba_bar: (pba & 7) as u8,
        pba_offset: u64::from(pba & !7),
    })
}

/// Capabilities shown to the guest as read-only copies, with their length:
/// power management (8 bytes) and PCI Express (60 bytes for version 2, 36
/// for version 1). MSI is left out (only MSI-X is emulated); others too.
fn read_only_caps(cfg: &[u8; 256]) -> Vec<Vec<u8>> {
    capabilities(cfg)
        .into_iter()
        .filter_map(|(id, off)| {
            let len = match id {
                CAP_ID_PM => 8,
                CAP_ID_PCIE if cfg.get(off + 2).is_some_and(|f| f & 0xf >= 2) => 60,
                CAP_ID_PCIE => 36,
                _ => return None,
            };
            cfg.get(off..off + len).map(<[u8]>::to_vec)
        })
        .collect()
}

impl VfioPciDevice {
    /// Builds the guest's view of `dev`. `alloc(size, needs_32bit)` places a
    /// BAR; `router`-backed `sink` vectors are created for MSI-X.
    pub fn new(
        name: &str,
        dev: Device,
        alloc: &mut dyn FnMut(u64, bool) -> Result<u64>,
        make_sink: &mut dyn FnMut(u16) -> Result<Arc<MsixVectors>>,
    ) -> Result<Self> {
        let vfio = |e: vfio::Error| Error::Vfio(format!("{name}: {e}"));
        let cfg_region = dev
            .region_info(VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(vfio)?;
        let mut raw = [0u8; 256];
        dev.read_region(&cfg_region, 0, &mut raw).map_err(vfio)?;
        let class = PciClass {
            class: raw[0x0b],
            subclass: raw[0x0a],
            prog_if: raw[0x09],
        };
        let mut config = ConfigSpace::new(
            u16_at(&raw, 0),
            u16_at(&raw, 2),
            class,
            raw[0x08],
            u16_at(&raw, 0x2c),
            u16_at(&raw, 0x2e),
        );
        let mut bars = Vec::new();
        let mut i = 0u8;
        while i < 6 {
            let reg = u32_at(&raw, 0x10 + 4 * usize::from(i));
            let region = dev.region_info(u32::from(i)).map_err(vfio)?;
            let wide = reg & 1 == 0 && (reg >> 1) & 3 == 2;
            if region.size == 0 {
                i += 1 + u8::from(wide);
                continue;
            }
            if reg & 1 == 1 {
                log::warn!("{name}: I/O BAR {i} is not passed through");
                i += 1;
                continue;
            }
            if !region.size.is_power_of_two() || region.size < 0x1000 {
                return Err(Error::Vfio(format!(
                    "{name}: BAR {i} has an unusable size {:#x}",
                    region.size
                )));
            }
            let kind = if wide { BarKind::Mem64 } else { BarKind::Mem32 };
            let addr = alloc(region.size, !wide)?;
            let prefetchable = reg & 8 != 0;
            config.add_bar(i, kind, region.size, prefetchable, addr);
            bars.push(DeviceBar {
                bar: Bar {
                    index: i,
                    kind,
                    size: region.size,
                    prefetchable,
                    addr,
                },
                region,
                mapping: None,
            });
            i += 1 + u8::from(wide);
        }
        for body in read_only_caps(&raw) {
            if config.add_capability(&body, &[]).is_none() {
                log::warn!("{name}: no room for capability {:#04x}; left out", body[0]);
            }
        }
        let msix = match find_msix(&raw) {
            Some(l) => {
                let (body, wmask) = MsixCap::body(
                    l.vectors,
                    l.table_bar,
                    l.table_offset as u32,
                    l.pba_bar,
                    l.pba_offset as u32,
                );
                let offset = config.add_capability(&body, &wmask).ok_or_else(|| {
                    Error::Vfio(format!("{name}: no room for the MSI-X capability"))
                })?;
                Some((MsixCap { offset }, l, MsixTable::new(l.vectors)))
            }
            None => None,
        };
        let sink = make_sink(msix.as_ref().map_or(0, |m| m.1.vectors))?;
        // Map what the guest may touch directly: mmap-able BARs without MSI-X structures.
        for b in &mut bars {
            let holds_msix = msix
                .as_ref()
                .is_some_and(|(_, l, _)| l.table_bar == b.bar.index || l.pba_bar == b.bar.index);
            if b.region.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && !holds_msix {
                match dev.mmap(&b.region) {
                    Ok(m) => b.mapping = Some(m),
                    Err(e) => log::warn!("{name}: BAR {} stays trapped: {e}", b.bar.index),
                }
            }
        }
        Ok(Self {
            name: name.to_string(),
            dev,
            config,
            cfg_region,
            bars,
            msix,
            sink,
            vfio_irqs_on: false,
        })
    }

    /// The BARs to register as KVM memory slots.
    pub fn direct_bars(&self) -> Vec<DirectBar> {
        self.bars
            .iter()
            .filter_map(|b| {
                let m = b.mapping.as_ref()?;
                Some(DirectBar {
                    index: b.bar.index,
                    addr: b.bar.addr,
                    size: b.bar.size,
                    host: m.as_ptr() as u64,
                })
            })
            .collect()
    }

    /// Starts or stops VFIO's MSI-X signalling with the guest's enable bit.
    fn sync_vfio_irqs(&mut self) {
        let Some((_, _, table)) = &self.msix else {
            return;
        };
        let want = table.enabled();
        if want == self.vfio_irqs_on {
            return;
        }
        let fds: Vec<RawFd> = if want {
            self.sink.eventfds()
        } else {
            Vec::new()
        };
        match self.dev.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, &fds) {
            Ok(()) => self.vfio_irqs_on = want,
            Err(e) => devices::warn_ratelimited!(
                "{}: MSI-X {}: {e}",
                self.name,
                if want { "enable" } else { "disable" }
            ),
        }
    }

    fn bar_region(&self, index: u8) -> Option<&RegionInfo> {
        self.bars
            .iter()
            .find(|b| b.bar.index == index)
            .map(|b| &b.region)
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarMove> {
        let moves = self.config.write(offset, data);
        if offset < COMMAND + 2 && offset + data.len() as u16 > COMMAND {
            let cmd = self.config.read_u16(usize::from(COMMAND)) & COMMAND_PASSED;
            if let Err(e) =
                self.dev
                    .write_region(&self.cfg_region, u64::from(COMMAND), &cmd.to_le_bytes())
            {
                devices::warn_ratelimited!("{}: command register: {e}", self.name);
            }
        }
        if let Some((cap, _, table)) = &mut self.msix {
            if cap.control_written(offset, data.len()) {
                let control = self.config.read_u16(cap.offset + 2);
                let events = table.write_control(control);
                apply_events(table, &events, self.sink.as_ref());
            }
        }
        self.sync_vfio_irqs();
        moves
    }

    fn bars(&self) -> Vec<Bar> {
        self.config.bars().copied().collect()
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if let Some((_, l, table)) = &self.msix {
            if bar == l.table_bar
                && (l.table_offset..l.table_offset + table.table_bytes()).contains(&offset)
            {
                return table.read_table(offset - l.table_offset, data);
            }
            if bar == l.pba_bar
                && (l.pba_offset..l.pba_offset + table.pba_bytes()).contains(&offset)
            {
                return table.read_pba(offset - l.pba_offset, data);
            }
        }
        let Some(region) = self.bar_region(bar).copied() else {
            return data.fill(0xff);
        };
        if offset + data.len() as u64 > region.size
            || self.dev.read_region(&region, offset, data).is_err()
        {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if let Some((_, l, table)) = &mut self.msix {
            if bar == l.table_bar
                && (l.table_offset..l.table_offset + table.table_bytes()).contains(&offset)
            {
                let events = table.write_table(offset - l.table_offset, data);
                apply_events(table, &events, self.sink.as_ref());
                return;
            }
            if bar == l.pba_bar
                && (l.pba_offset..l.pba_offset + table.pba_bytes()).contains(&offset)
            {
                return; // read-only
            }
        }
        let Some(region) = self.bar_region(bar).copied() else {
            return;
        };
        if offset + data.len() as u64 <= region.size {
            if let Err(e) = self.dev.write_region(&region, offset, data) {
                devices::warn_ratelimited!("{}: BAR {bar} write at {offset:#x}: {e}", self.name);
            }
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        if self.vfio_irqs_on {
            let _ = self.dev.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm_and_pcie_are_copied_msi_is_not() {
        let mut cfg = [0u8; 256];
        cfg[0x06] = 0x10;
        cfg[0x34] = 0x40;
        cfg[0x40] = CAP_ID_PM;
        cfg[0x41] = 0x50;
        cfg[0x50] = 0x05; // MSI: left out
        cfg[0x51] = 0x70;
        cfg[0x70] = CAP_ID_PCIE;
        cfg[0x72] = 2; // version 2
        cfg[0x74] = 0xaa;
        let caps = read_only_caps(&cfg);
        assert_eq!(
            caps.iter().map(|c| (c[0], c.len())).collect::<Vec<_>>(),
            vec![(CAP_ID_PM, 8), (CAP_ID_PCIE, 60)]
        );
        assert_eq!(caps[1][4], 0xaa);
        cfg[0xd1] = 0xd0; // a PCIe cap that would run past 256 bytes is dropped
        cfg[0x71] = 0xd0;
        cfg[0xd0] = CAP_ID_PCIE;
        cfg[0xd2] = 2;
        assert_eq!(
            read_only_caps(&cfg).len(),
            2,
            "self-loop ends the walk, oversized cap left out"
        );
    }

    #[test]
    fn the_msix_capability_is_found_through_the_list() {
        let mut cfg = [0u8; 256];
        cfg[0x06] = 0x10; // capability list
        cfg[0x34] = 0x50;
        cfg[0x50] = 0x01; // PM, next 0x70
        cfg[0x51] = 0x70;
        cfg[0x70] = CAP_ID_MSIX;
        cfg[0x72..0x74].copy_from_slice(&2u16.to_le_bytes()); // 3 vectors
        cfg[0x74..0x78].copy_from_slice(&3u32.to_le_bytes()); // BAR 3, offset 0
        cfg[0x78..0x7c].copy_from_slice(&(0x2000u32 | 3).to_le_bytes());
        let l = find_msix(&cfg).unwrap();
        assert_eq!(
            (
                l.vectors,
                l.table_bar,
                l.table_offset,
                l.pba_bar,
                l.pba_offset
            ),
            (3, 3, 0, 3, 0x2000)
        );
        // A loop in the list ends, it does not hang.
        cfg[0x51] = 0x50;
        cfg[0x70] = 0;
        cfg[0x71] = 0;
        assert!(find_msix(&cfg).is_none());
        cfg[0x06] = 0;
        assert!(find_msix(&cfg).is_none(), "no list, no capability");
    }
}
