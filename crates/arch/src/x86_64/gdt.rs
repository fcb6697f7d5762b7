//! Global descriptor table entries and the KVM segment registers built from them.

use kvm_bindings::kvm_segment;

/// Packs a legacy segment descriptor from its flags (type, S, DPL, P, AVL, L,
/// D/B, G in the usual 12-bit form, e.g. `0xa09b`), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// 64-bit code segment (L=1, present, execute/read, accessed).
pub const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// 32-bit code segment (D=1, G=1).
pub const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat data segment.
pub const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// Busy 32/64-bit TSS.
pub const TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

fn base(e: u64) -> u64 {
    ((e & 0xff00_0000_0000_0000) >> 32)
        | ((e & 0x0000_00ff_0000_0000) >> 16)
        | ((e & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(e: u64) -> u32 {
    (((e & 0x000f_0000_0000_0000) >> 32) | (e & 0x0000_0000_0000_ffff)) as u32
}

/// The `kvm_segment` a selector of `index` referring to descriptor `e` loads.
pub fn kvm_segment_from_gdt(e: u64, index: u8) -> kvm_segment {
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = limit(e);
    kvm_segment {
        base: base(e),
        // The granularity bit scales the limit to 4 KiB units; KVM wants bytes.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((e >> 47) & 1) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        // Values every x86 boot loader writes for flat segments.
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(CODE32, 0x00cf_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
        assert_eq!(TSS, 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn decodes_into_kvm_segments() {
        let cs = kvm_segment_from_gdt(CODE64, 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g),
            (8, 0xb, 1, 0, 1)
        );
        assert_eq!(
            (cs.base, cs.limit, cs.present, cs.s, cs.unusable),
            (0, 0xffff_ffff, 1, 1, 0)
        );
        let ds = kvm_segment_from_gdt(DATA, 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 3, 1, 0));
        let tr = kvm_segment_from_gdt(TSS, 3);
        assert_eq!((tr.type_, tr.s, tr.g), (0xb, 0, 1));
        assert_eq!(tr.limit, 0xffff_ffff);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from_gdt(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
    }
}
