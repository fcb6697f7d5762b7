//! The E820 memory map handed to the guest (zero page and PVH memmap alike).

use super::layout::{
    MemoryLayout, EBDA_START, FOUR_GIB, HIMEM_START, PCI_ECAM_SIZE, PCI_ECAM_START,
};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved: the guest must not use it as RAM.
pub const E820_RESERVED: u32 = 2;

/// One entry of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Builds the map: low RAM, the reserved legacy area (EBDA, ACPI, BIOS),
/// RAM up to the 32-bit hole, the reserved ECAM window (Linux checks MCFG
/// against it), and RAM above 4 GiB. Hotplug regions are deliberately absent.
pub fn build(layout: &MemoryLayout) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    if layout.low_size > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: layout.low_size - HIMEM_START,
            kind: E820_RAM,
        });
    }
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    if layout.high_size > 0 {
        map.push(E820Entry {
            addr: FOUR_GIB,
            size: layout.high_size,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::MMIO32_HOLE_START;

    fn total_ram(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn map_is_sorted_and_disjoint() {
        for ram in [64u64 << 20, 3 << 30, 8 << 30] {
            let map = build(&MemoryLayout::new(ram));
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{map:x?}");
            }
        }
    }

    #[test]
    fn ram_matches_layout_minus_legacy_hole() {
        let layout = MemoryLayout::new(256 << 20);
        let map = build(&layout);
        assert_eq!(total_ram(&map), (256 << 20) - (HIMEM_START - EBDA_START));
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert!(map.contains(&E820Entry {
            addr: PCI_ECAM_START,
            size: PCI_ECAM_SIZE,
            kind: E820_RESERVED
        }));
    }

    #[test]
    fn high_ram_above_4g() {
        let layout = MemoryLayout::new(4 << 30);
        let map = build(&layout);
        let last = map.last().unwrap();
        assert_eq!(last.addr, FOUR_GIB);
        assert_eq!(last.size, (4 << 30) - MMIO32_HOLE_START);
        assert_eq!(last.kind, E820_RAM);
    }
}
