//! Guest-physical memory layout for x86_64 guests.
//!
//! ```text
//! 0x0000_0500  GDT                     0x0000_9000  PML4, PDPT, 4 x PD (identity map 0-4 GiB)
//! 0x0000_0520  IDT (empty)             0x0002_0000  kernel command line
//! 0x0000_6000  PVH start info          0x0009_fc00  EBDA (reserved)
//! 0x0000_7000  zero page (boot_params) 0x000e_0000  RSDP and ACPI tables (reserved)
//! 0x0000_8ff0  boot stack              0x0010_0000  kernel, then RAM up to the 32-bit hole
//! 0xc000_0000  32-bit PCI MMIO window (512 MiB)
//! 0xe000_0000  PCI ECAM (256 MiB, reserved in E820)
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! 0x1_0000_0000  RAM above 4 GiB, then the 64-bit MMIO window, then the hotplug region
//! ```

/// GDT location.
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum GDT entries we write.
pub const BOOT_GDT_MAX: usize = 8;
/// Empty IDT location.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Maximum PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages covering 0-4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (x86 Linux `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; reserved in E820.
pub const EBDA_START: u64 = 0x9fc00;
/// RSDP, followed by the other ACPI tables.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI table area.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of RAM above the legacy area; the kernel is loaded here or higher.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole (no RAM from here to 4 GiB).
pub const MMIO32_HOLE_START: u64 = 0xc000_0000;
/// Size of the 32-bit hole.
pub const MMIO32_HOLE_SIZE: u64 = FOUR_GIB - MMIO32_HOLE_START;
/// 32-bit PCI MMIO window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM), bus 0 at its start.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size reserved (256 buses x 1 MiB).
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM TSS (three pages) for `KVM_SET_TSS_ADDR`.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM identity-map page for `KVM_SET_IDENTITY_MAP_ADDR`.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;
/// Size of the 64-bit PCI MMIO window, placed after the highest RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// Alignment of the 64-bit MMIO window and of the hotplug region.
pub const HIGH_REGION_ALIGN: u64 = 1 << 30;

/// Legacy port of the first 8250 UART.
pub const COM1_PORT: u16 = 0x3f8;
/// Its IRQ (GSI).
pub const COM1_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port (a write of 0xfe resets the machine).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI power-management block: sleep control (+0), sleep status (+1), reset (+2).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Number of ports of the power-management block.
pub const ACPI_PM_PORT_LEN: u16 = 3;
/// Value the guest writes to the ACPI reset register.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// First GSI available for MSI routes (0-23 are IOAPIC pins).
pub const MSI_GSI_START: u32 = 24;

// The fixed windows must not overlap; checked when the crate compiles.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
const _: () = assert!(IOAPIC_START < APIC_START && APIC_START < KVM_IDENTITY_MAP_ADDRESS);

/// Where guest RAM lives: one range below the 32-bit hole, one above 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Bytes of RAM from 0 (at most [`MMIO32_HOLE_START`]).
    pub low_size: u64,
    /// Bytes of RAM from 4 GiB.
    pub high_size: u64,
}

impl MemoryLayout {
    /// Splits `ram_size` bytes of boot RAM around the 32-bit MMIO hole.
    pub fn new(ram_size: u64) -> Self {
        let low_size = ram_size.min(MMIO32_HOLE_START);
        Self {
            low_size,
            high_size: ram_size - low_size,
        }
    }

    /// Total RAM.
    pub fn ram_size(&self) -> u64 {
        self.low_size + self.high_size
    }

    /// The RAM ranges as `(start, size)`, in address order.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(0, self.low_size)];
        if self.high_size > 0 {
            v.push((FOUR_GIB, self.high_size));
        }
        v
    }

    /// First address after all boot RAM (at least 4 GiB).
    pub fn ram_end(&self) -> u64 {
        FOUR_GIB + self.high_size
    }

    /// The 64-bit PCI MMIO window `(start, size)`, above all RAM.
    pub fn pci_mmio64(&self) -> (u64, u64) {
        (align_up(self.ram_end(), HIGH_REGION_ALIGN), PCI_MMIO64_SIZE)
    }

    /// First address free for a hotplug region (above RAM and the 64-bit MMIO window).
    pub fn hotplug_start(&self) -> u64 {
        let (start, size) = self.pci_mmio64();
        align_up(start + size, HIGH_REGION_ALIGN)
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_stays_below_hole() {
        let l = MemoryLayout::new(256 << 20);
        assert_eq!(l.ram_ranges(), vec![(0, 256 << 20)]);
        assert_eq!(l.ram_end(), FOUR_GIB);
        assert_eq!(l.pci_mmio64().0, FOUR_GIB);
        assert_eq!(l.hotplug_start(), FOUR_GIB + PCI_MMIO64_SIZE);
    }

    #[test]
    fn large_ram_splits_around_hole() {
        let l = MemoryLayout::new(4 << 30);
        assert_eq!(
            l.ram_ranges(),
            vec![
                (0, MMIO32_HOLE_START),
                (FOUR_GIB, (4 << 30) - MMIO32_HOLE_START)
            ]
        );
        assert_eq!(l.ram_size(), 4 << 30);
        let (mmio64, _) = l.pci_mmio64();
        assert!(mmio64 >= l.ram_end());
        assert_eq!(mmio64 % HIGH_REGION_ALIGN, 0);
        assert!(l.hotplug_start() >= mmio64 + PCI_MMIO64_SIZE);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, 8 * BOOT_GDT_MAX as u64),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x40),
            (PVH_MEMMAP_START, ZERO_PAGE_START - PVH_MEMMAP_START),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x4000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (ACPI_START, ACPI_END - ACPI_START),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
