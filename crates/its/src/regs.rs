//! Register offsets, fields and the values KVM's vITS presents.

/// GITS_CTLR
pub const GITS_CTLR: u64 = 0x0000;
/// GITS_IIDR
pub const GITS_IIDR: u64 = 0x0004;
/// GITS_TYPER
pub const GITS_TYPER: u64 = 0x0008;
/// GITS_CBASER
pub const GITS_CBASER: u64 = 0x0080;
/// GITS_CWRITER
pub const GITS_CWRITER: u64 = 0x0088;
/// GITS_CREADR
pub const GITS_CREADR: u64 = 0x0090;
/// GITS_BASER0 (the others follow every 8 bytes)
pub const GITS_BASER: u64 = 0x0100;
/// GITS_PIDR2
pub const GITS_PIDR2: u64 = 0xffe8;
/// GITS_TRANSLATER, in the second 64 KiB page
pub const GITS_TRANSLATER: u64 = 0x1_0040;
/// Size of the register frame (two 64 KiB pages).
pub const ITS_FRAME_SIZE: u64 = 0x2_0000;

/// GITS_CTLR.Enabled
pub const CTLR_ENABLED: u32 = 1;
/// GITS_CTLR.Quiescent
pub const CTLR_QUIESCENT: u32 = 1 << 31;

/// Arm's JEP106 implementer code.
pub const IMPLEMENTER_ARM: u32 = 0x43b;
/// KVM's product ID ('K').
pub const PRODUCT_ID_KVM: u32 = 0x4b;
/// Table ABI revision saved and restored (GITS_IIDR.Revision).
pub const ABI_REV: u32 = 0;

/// EventID bits (TYPER.ID_bits + 1).
pub const EVENT_ID_BITS: u32 = 16;
/// DeviceID bits (TYPER.Devbits + 1).
pub const DEVICE_ID_BITS: u32 = 16;
/// Bytes per ITT entry (TYPER.ITT_entry_size + 1), as KVM.
pub const ITT_ENTRY_SIZE: u64 = 8;
/// Bytes per device/collection table entry (BASER.Entry_Size + 1).
pub const TABLE_ENTRY_SIZE: u64 = 8;
/// The only supported table page size.
pub const TABLE_PAGE: u64 = 64 << 10;
/// First LPI INTID.
pub const LPI_BASE: u32 = 8192;
/// INTID bits of LPIs the ITS can name.
pub const LPI_ID_BITS: u32 = 16;

/// GITS_TYPER as KVM presents it: Physical, 8-byte ITT entries, 16 EventID
/// bits, 16 DeviceID bits, PTA = 0 (collections target PE numbers), CIL = 0
/// (16-bit collection IDs).
pub const TYPER: u64 = 1
    | ((ITT_ENTRY_SIZE - 1) << 4)
    | (((EVENT_ID_BITS - 1) as u64) << 8)
    | (((DEVICE_ID_BITS - 1) as u64) << 13);

/// GITS_IIDR for table ABI revision 0.
pub const IIDR: u32 = (PRODUCT_ID_KVM << 24) | (ABI_REV << 12) | IMPLEMENTER_ARM;

/// BASER type: device table.
pub const BASER_TYPE_DEVICE: u64 = 1;
/// BASER type: collection table.
pub const BASER_TYPE_COLLECTION: u64 = 4;
/// BASER.Valid
pub const BASER_VALID: u64 = 1 << 63;
/// BASER.Indirect
pub const BASER_INDIRECT: u64 = 1 << 62;
const BASER_TYPE_SHIFT: u32 = 56;
const BASER_ENTRY_SIZE_SHIFT: u32 = 48;
const BASER_PAGE_SIZE_SHIFT: u32 = 8;
/// Page_Size field value for 64 KiB.
const BASER_PAGE_64K: u64 = 2;

/// Read-only part of BASER `n` (type, entry size, 64 KiB pages), 0 if unimplemented.
pub fn baser_ro(n: usize) -> u64 {
    let kind = match n {
        0 => BASER_TYPE_DEVICE,
        1 => BASER_TYPE_COLLECTION,
        _ => return 0,
    };
    (kind << BASER_TYPE_SHIFT)
        | ((TABLE_ENTRY_SIZE - 1) << BASER_ENTRY_SIZE_SHIFT)
        | (BASER_PAGE_64K << BASER_PAGE_SIZE_SHIFT)
}

/// Guest-writable bits of BASER `n`: Valid, Indirect (device table only),
/// cacheability, shareability, address, Size.
pub fn baser_writable(n: usize) -> u64 {
    let common =
        BASER_VALID | (0x7 << 59) | (0x7 << 53) | 0x0000_ffff_ffff_f000 | (0x3 << 10) | 0xff;
    match n {
        0 => common | BASER_INDIRECT,
        1 => common,
        _ => 0,
    }
}

/// Base address of a table (64 KiB pages: `PA[47:16]` in place, `PA[51:48]` in `[15:12]`).
pub fn baser_addr(baser: u64) -> u64 {
    (baser & 0x0000_ffff_ffff_0000) | ((baser & 0xf000) << 36)
}

/// Number of 64 KiB pages of a table.
pub fn baser_pages(baser: u64) -> u64 {
    (baser & 0xff) + 1
}

/// CBASER.Valid
pub const CBASER_VALID: u64 = 1 << 63;
/// Writable CBASER bits: Valid, caches, shareability, PA (64 KiB aligned), Size.
pub const CBASER_WRITABLE: u64 =
    CBASER_VALID | (0x7 << 59) | (0x7 << 53) | 0x000f_ffff_ffff_0000 | (0x3 << 10) | 0xff;

/// Command queue address.
pub fn cbaser_addr(cbaser: u64) -> u64 {
    cbaser & 0x000f_ffff_ffff_0000
}

/// Command queue size in bytes.
pub fn cbaser_size(cbaser: u64) -> u64 {
    ((cbaser & 0xff) + 1) * 4096
}

/// Offset field of CWRITER/CREADR (bits `[19:5]`).
pub const QUEUE_OFFSET_MASK: u64 = 0xf_ffe0;

/// ID registers 0xffd0..=0xfffc as KVM reports them (PIDR4..PIDR7, PIDR0..PIDR3, CIDR0..CIDR3).
pub fn id_reg(offset: u64) -> u32 {
    match offset {
        0xffd0 => 0x40,
        0xffe0 => 0x92,
        0xffe4 => 0xb4,
        0xffe8 => 0x3b, // PIDR2: architecture revision 3 (GICv3)
        0xfff0 => 0x0d,
        0xfff4 => 0xf0,
        0xfff8 => 0x05,
        0xfffc => 0xb1,
        _ => 0,
    }
}

/// GICR_PROPBASER.IDbits
pub fn propbaser_id_bits(v: u64) -> u32 {
    (v & 0x1f) as u32 + 1
}

/// GICR_PROPBASER physical address.
pub fn propbaser_addr(v: u64) -> u64 {
    v & 0x000f_ffff_ffff_f000
}

/// GICR_PENDBASER physical address (64 KiB aligned).
pub fn pendbaser_addr(v: u64) -> u64 {
    v & 0x000f_ffff_ffff_0000
}

/// GICR_PENDBASER.PTZ
pub const PENDBASER_PTZ: u64 = 1 << 62;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typer_matches_kvm() {
        assert_eq!(TYPER & 1, 1, "Physical");
        assert_eq!((TYPER >> 4) & 0xf, 7, "8-byte ITT entries");
        assert_eq!((TYPER >> 8) & 0x1f, 15, "16 EventID bits");
        assert_eq!((TYPER >> 13) & 0x1f, 15, "16 DeviceID bits");
        assert_eq!((TYPER >> 19) & 1, 0, "PTA = 0");
        assert_eq!((TYPER >> 36) & 1, 0, "CIL = 0");
        assert_eq!(IIDR, 0x4b00_043b);
    }

    #[test]
    fn baser_fields() {
        assert_eq!((baser_ro(0) >> 56) & 7, 1);
        assert_eq!((baser_ro(1) >> 56) & 7, 4);
        assert_eq!((baser_ro(1) >> 48) & 0x1f, 7, "8-byte entries");
        assert_eq!((baser_ro(0) >> 8) & 3, 2, "64 KiB pages");
        assert_eq!(baser_ro(2), 0);
        assert_eq!(
            baser_writable(1) & BASER_INDIRECT,
            0,
            "flat collection table only"
        );
        // PA[51:48] lives in bits [15:12] with 64 KiB pages.
        assert_eq!(baser_addr(0x0001_2345_0000 | 0x3000), 0x3_0001_2345_0000);
        assert_eq!(baser_pages(0x8000_0000_0000_0003), 4);
        assert_eq!(cbaser_size(15), 64 << 10);
    }
}
