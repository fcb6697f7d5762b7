//! ACPI tables for x86_64 guests: RSDP, XSDT, FADT (hardware-reduced), DSDT,
//! MADT, plus any tables other layers contribute (MCFG for PCI, SRAT, ...).
//!
//! Power management is hardware-reduced: the FADT points the sleep control,
//! sleep status and reset registers at the I/O ports of
//! [`super::layout::ACPI_PM_PORT`], and the DSDT's `\_S5_` gives
//! the sleep type a guest writes there on poweroff.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{
    ACPI_END, ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_START, APIC_START, COM1_IRQ, COM1_PORT,
    IOAPIC_START,
};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"CARAVL";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"CARAVEL ";
/// Sleep type for S5 (soft off) the guest writes to the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register: SLP_EN.
pub const SLP_EN: u8 = 1 << 5;
/// Offset of the sleep control register in the PM block.
pub const PM_SLEEP_CONTROL: u16 = 0;
/// Offset of the sleep status register in the PM block.
pub const PM_SLEEP_STATUS: u16 = 1;
/// Offset of the reset register in the PM block.
pub const PM_RESET: u16 = 2;

/// IAPC_BOOT_ARCH: VGA not present.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: CMOS RTC not present (we emulate none).
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// MADT flags: dual 8259 PICs are present (KVM's in-kernel irqchip has them).
const MADT_PCAT_COMPAT: u32 = 1;

/// What goes into the tables beyond the fixed platform.
#[derive(Debug, Default, Clone)]
pub struct AcpiConfig {
    /// Number of vCPUs (one MADT local APIC entry each, APIC IDs 0..n).
    pub nr_vcpus: u32,
    /// AML appended to the DSDT (device descriptions from other layers).
    pub dsdt_extra: Vec<u8>,
    /// Complete extra tables (MCFG, SRAT, ...) referenced from the XSDT.
    pub extra_tables: Vec<Vec<u8>>,
}

/// The tables laid out at their guest-physical addresses.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// `(address, bytes)` of each table, RSDP first.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// Address of the RSDP.
    pub fn rsdp_addr(&self) -> u64 {
        self.blobs[0].0
    }

    /// Writes every table into guest memory.
    pub fn write<M: GuestMemory>(&self, mem: &M) -> Result<(), vm_memory::GuestMemoryError> {
        for (addr, bytes) in &self.blobs {
            mem.write_slice(bytes, GuestAddress(*addr))?;
        }
        Ok(())
    }
}

/// The tables do not fit in the area reserved for them.
#[derive(Debug, thiserror::Error)]
#[error("ACPI tables need {needed} bytes but only {available} are reserved")]
pub struct TooLarge {
    needed: u64,
    available: u64,
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut body);
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);
    body.extend_from_slice(&cfg.dsdt_extra);

    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

fn io_reg(offset: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT + offset),
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    b.sleep_control_reg = io_reg(PM_SLEEP_CONTROL);
    b.sleep_status_reg = io_reg(PM_SLEEP_STATUS);
    b.reset_reg = io_reg(PM_RESET);
    b.reset_value = ACPI_RESET_VALUE;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"CARAVEL\0").into();
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

fn madt(nr_vcpus: u32) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, 1);
    sdt.write_u32(36, APIC_START as u32);
    sdt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..nr_vcpus {
        if id < 255 {
            // Processor Local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
            let mut e = vec![0u8, 8, id as u8, id as u8];
            e.extend_from_slice(&1u32.to_le_bytes());
            sdt.append_slice(&e);
        } else {
            // Processor Local x2APIC: type 9, length 16, reserved, x2APIC ID, flags, UID.
            let mut e = vec![9u8, 16, 0, 0];
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(&1u32.to_le_bytes());
            e.extend_from_slice(&id.to_le_bytes());
            sdt.append_slice(&e);
        }
    }
    // I/O APIC: type 1, length 12, ID 0, reserved, address, GSI base 0.
    let mut ioapic = vec![1u8, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    sdt.append_slice(&ioapic);
    // Local APIC NMI: type 4, length 6, all processors, default polarity/trigger, LINT1.
    sdt.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt.as_slice().to_vec()
}

fn align8(v: u64) -> u64 {
    (v + 7) & !7
}

/// Lays out all tables from [`ACPI_START`]: RSDP, then DSDT, FADT, MADT, the
/// extra tables and the XSDT.
pub fn build(cfg: &AcpiConfig) -> Result<AcpiTables, TooLarge> {
    let mut next = align8(ACPI_START + Rsdp::len() as u64);
    let mut blobs = Vec::new();
    let mut place = |bytes: Vec<u8>, blobs: &mut Vec<(u64, Vec<u8>)>| {
        let addr = next;
        next = align8(next + bytes.len() as u64);
        blobs.push((addr, bytes));
        addr
    };
    let dsdt_addr = place(dsdt(cfg), &mut blobs);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(place(fadt(dsdt_addr), &mut blobs));
    xsdt.add_entry(place(madt(cfg.nr_vcpus), &mut blobs));
    for t in &cfg.extra_tables {
        xsdt.add_entry(place(t.clone(), &mut blobs));
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(xsdt_bytes, &mut blobs);
    if next > ACPI_END {
        return Err(TooLarge {
            needed: next - ACPI_START,
            available: ACPI_END - ACPI_START,
        });
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    blobs.insert(0, (ACPI_START, rsdp));
    Ok(AcpiTables { blobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn find<'a>(t: &'a AcpiTables, sig: &[u8]) -> &'a [u8] {
        &t.blobs.iter().find(|(_, b)| b.starts_with(sig)).unwrap().1
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let t = build(&AcpiConfig {
            nr_vcpus: 4,
            ..Default::default()
        })
        .unwrap();
        let (rsdp_addr, rsdp) = &t.blobs[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for (addr, b) in &t.blobs[1..] {
            assert_eq!(
                sum(b),
                0,
                "checksum of {}",
                String::from_utf8_lossy(&b[..4])
            );
            assert_eq!(u32_at(b, 4) as usize, b.len());
            assert_eq!(addr % 8, 0);
        }
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
        let t = build(&AcpiConfig {
            nr_vcpus: 1,
            extra_tables: vec![],
            dsdt_extra: vec![],
        })
        .unwrap();
        let rsdp = &t.blobs[0].1;
        let xsdt_addr = u64_at(rsdp, 24);
        let xsdt = &t.blobs.iter().find(|(a, _)| *a == xsdt_addr).unwrap().1;
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let sigs: Vec<&[u8]> = entries
            .iter()
            .map(|a| &t.blobs.iter().find(|(x, _)| x == a).unwrap().1[..4])
            .collect();
        assert_eq!(sigs, vec![b"FACP" as &[u8], b"APIC"]);
        let fadt = find(&t, b"FACP");
        let x_dsdt = u64_at(fadt, 140);
        assert_eq!(
            &t.blobs.iter().find(|(a, _)| *a == x_dsdt).unwrap().1[..4],
            b"DSDT"
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_with_pm_registers() {
        let t = build(&AcpiConfig {
            nr_vcpus: 1,
            ..Default::default()
        })
        .unwrap();
        let f = find(&t, b"FACP");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG (GAS at 116): system I/O, 8 bits, address 0x602; RESET_VALUE at 128.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0x602);
        assert_eq!(f[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(f[244], 1);
        assert_eq!(u64_at(f, 248), 0x600);
        assert_eq!(u64_at(f, 260), 0x601);
        assert_eq!(
            u16::from_le_bytes([f[109], f[110]]) & (1 << 5),
            1 << 5,
            "no CMOS RTC"
        );
    }

    #[test]
    fn madt_lists_each_cpu_an_ioapic_and_nmi() {
        let t = build(&AcpiConfig {
            nr_vcpus: 3,
            ..Default::default()
        })
        .unwrap();
        let m = find(&t, b"APIC");
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let mut off = 44;
        let mut lapics = vec![];
        let mut kinds = vec![];
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            kinds.push(kind);
            if kind == 0 {
                lapics.push((m[off + 2], m[off + 3], u32_at(m, off + 4)));
            }
            if kind == 1 {
                assert_eq!(u32_at(m, off + 4), 0xfec0_0000);
            }
            off += len;
        }
        assert_eq!(off, m.len(), "entries tile the table");
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
        assert_eq!(kinds, vec![0, 0, 0, 1, 4]);
    }

    #[test]
    fn dsdt_has_s5_and_com1() {
        let t = build(&AcpiConfig {
            nr_vcpus: 1,
            dsdt_extra: vec![0x10, 0x20],
            ..Default::default()
        })
        .unwrap();
        let d = find(&t, b"DSDT");
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_"));
        assert!(has(b"COM1"));
        // EISAID("PNP0501") encodes as 0x0105d041.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(d.ends_with(&[0x10, 0x20]), "extra AML appended");
    }

    #[test]
    fn extra_tables_are_listed_and_oversize_is_refused() {
        let mut extra = Sdt::new(*b"TEST", 40, 1, OEM_ID, OEM_TABLE_ID, 1);
        extra.update_checksum();
        let cfg = AcpiConfig {
            nr_vcpus: 1,
            extra_tables: vec![extra.as_slice().to_vec()],
            ..Default::default()
        };
        let t = build(&cfg).unwrap();
        assert!(t.blobs.iter().any(|(_, b)| b.starts_with(b"TEST")));
        let big = AcpiConfig {
            nr_vcpus: 1,
            dsdt_extra: vec![0; 200 * 1024],
            ..Default::default()
        };
        assert!(build(&big).is_err());
    }

    #[test]
    fn x2apic_entries_above_254() {
        let t = build(&AcpiConfig {
            nr_vcpus: 256,
            ..Default::default()
        })
        .unwrap();
        let m = find(&t, b"APIC");
        assert!(m.windows(4).any(|w| w == [9, 16, 0, 0]));
    }
}
