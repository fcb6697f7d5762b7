//! ACPI description of the PCI host bridge: DSDT objects and the MCFG table.
//!
//! Linux enumerates the bus from `\_SB_.PCI0` (`PNP0A08`, `_CRS` windows),
//! checks MCFG's ECAM window against a `PNP0C02` reservation (`\_SB_.MBRD`),
//! and routes INTx through `_PRT`.

use acpi_tables::aml::{self, AddressSpaceCacheable};
use acpi_tables::mcfg::MCFG;
use acpi_tables::Aml;

/// First GSI used for INTx (IOAPIC pins 16-19).
pub const INTX_GSI_BASE: u32 = 16;

/// What the host bridge decodes.
#[derive(Debug, Clone, Copy)]
pub struct HostBridgeLayout {
    /// ECAM base (bus 0).
    pub ecam_base: u64,
    /// Last bus number decoded.
    pub last_bus: u8,
    /// 32-bit MMIO window `(start, size)`.
    pub mmio32: (u64, u64),
    /// 64-bit MMIO window `(start, size)`.
    pub mmio64: (u64, u64),
}

impl HostBridgeLayout {
    /// Bytes of ECAM for the decoded buses.
    pub fn ecam_size(&self) -> u64 {
        (u64::from(self.last_bus) + 1) << 20
    }
}

/// GSI for INTx pin `pin` (0 = INTA) of device `slot`: the usual swizzle over four pins.
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    INTX_GSI_BASE + u32::from((slot + pin) % 4)
}

/// DSDT AML for `\_SB_.PCI0` and `\_SB_.MBRD`.
pub fn dsdt(layout: &HostBridgeLayout) -> Vec<u8> {
    let bus = aml::AddressSpace::new_bus_number(0u16, u16::from(layout.last_bus));
    let cfg_io = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = aml::AddressSpace::new_io(0u16, 0xcf7u16, None);
    let io_high = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let (m32, m32_size) = layout.mmio32;
    let mmio32 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m32 as u32,
        (m32 + m32_size - 1) as u32,
        None,
    );
    let (m64, m64_size) = layout.mmio64;
    let mmio64 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m64,
        m64 + m64_size - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_low, &io_high, &mmio32, &mmio64]);

    // _PRT: Package { address (slot << 16 | 0xffff), pin, source (0 = GSI), GSI }.
    let mut prt_entries = Vec::new();
    for slot in 0..32u8 {
        for pin in 0..4u8 {
            prt_entries.push((u32::from(slot) << 16 | 0xffff, pin, intx_gsi(slot, pin)));
        }
    }
    let zero = 0u8;
    let prt_packages: Vec<aml::Package> = prt_entries
        .iter()
        .map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &zero, gsi]))
        .collect();
    let prt = aml::Package::new(prt_packages.iter().map(|p| p as &dyn Aml).collect());

    let mut out = Vec::new();
    aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &zero),
            &aml::Name::new("_SEG".into(), &zero),
            &aml::Name::new("_UID".into(), &zero),
            &aml::Name::new("_BBN".into(), &zero),
            &aml::Name::new("_CRS".into(), &crs),
            &aml::Name::new("_PRT".into(), &prt),
        ],
    )
    .to_aml_bytes(&mut out);

    let ecam = aml::Memory32Fixed::new(false, layout.ecam_base as u32, layout.ecam_size() as u32);
    let mbrd_crs = aml::ResourceTemplate::new(vec![&ecam]);
    aml::Device::new(
        "_SB_.MBRD".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &zero),
            &aml::Name::new("_CRS".into(), &mbrd_crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// The MCFG table for segment 0.
pub fn mcfg(layout: &HostBridgeLayout, oem_id: [u8; 6], oem_table_id: [u8; 8]) -> Vec<u8> {
    let mut t = MCFG::new(oem_id, oem_table_id, 1);
    t.add_ecam(layout.ecam_base, 0, 0, layout.last_bus);
    let mut out = Vec::new();
    t.to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HostBridgeLayout {
        HostBridgeLayout {
            ecam_base: 0xe000_0000,
            last_bus: 0,
            mmio32: (0xc000_0000, 0x2000_0000),
            mmio64: (0x1_0000_0000, 0x10_0000_0000),
        }
    }

    fn has(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_names_the_bridge_and_its_windows() {
        let d = dsdt(&layout());
        assert!(has(&d, b"PCI0") && has(&d, b"MBRD") && has(&d, b"_PRT") && has(&d, b"_CRS"));
        assert!(has(&d, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]), "EISAID PNP0A08");
        assert!(has(&d, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]), "EISAID PNP0A03");
        assert!(has(&d, &[0x0c, 0x41, 0xd0, 0x0c, 0x02]), "EISAID PNP0C02");
        // Memory32Fixed for ECAM: 0x86, length 9, RW flag, base, size 1 MiB.
        let mut ecam = vec![0x86, 9, 0, 0];
        ecam.extend_from_slice(&0xe000_0000u32.to_le_bytes());
        ecam.extend_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(has(&d, &ecam[..]), "ECAM reserved in MBRD");
        assert!(
            has(&d, &0x10_ffff_ffffu64.to_le_bytes()),
            "64-bit window end"
        );
    }

    #[test]
    fn mcfg_describes_bus_0() {
        let t = mcfg(&layout(), *b"CARAVL", *b"CARAVEL ");
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // Allocation structure after the 44-byte header: base, segment, start bus, end bus.
        assert_eq!(
            u64::from_le_bytes(t[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!((t[54], t[55]), (0, 0));
    }

    #[test]
    fn intx_swizzle() {
        assert_eq!(
            [
                intx_gsi(0, 0),
                intx_gsi(1, 0),
                intx_gsi(3, 1),
                intx_gsi(31, 3)
            ],
            [16, 17, 16, 18]
        );
    }
}
