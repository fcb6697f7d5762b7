//! Guest-physical memory map for aarch64 guests (close to QEMU's `virt`):
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x0808_0000  GICv3 ITS (128 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU, up to 0x0900_0000)
//! 0x0900_0000  UART (PL011, 4 KiB), SPI 1
//! 0x1000_0000  32-bit PCI MMIO window (up to 0x3f00_0000)
//! 0x3f00_0000  PCI ECAM (16 MiB reserved)
//! 0x4000_0000  RAM: kernel at the start, DTB in the last 2 MiB
//! RAM end (1 GiB aligned): 64-bit PCI MMIO window (64 GiB), then the hotplug region
//! ```
//!
//! Everything stays below 1 TiB, the default 40-bit IPA space of
//! `KVM_CREATE_VM(0)`.

/// GICv3 distributor.
pub const GIC_DIST_START: u64 = 0x0800_0000;
/// Distributor size.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GICv3 ITS frame (two 64 KiB pages).
pub const GIC_ITS_START: u64 = 0x0808_0000;
/// ITS size.
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// First redistributor.
pub const GIC_REDIST_START: u64 = 0x080a_0000;
/// Per-vCPU redistributor size (RD_base + SGI_base).
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// Most vCPUs whose redistributors fit before the UART.
pub const MAX_VCPUS: u64 = (UART_START - GIC_REDIST_START) / GIC_REDIST_SIZE;
/// UART (PL011) registers.
pub const UART_START: u64 = 0x0900_0000;
/// UART region size.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's SPI (INTID 32 + 1).
pub const UART_SPI: u32 = 1;
/// 32-bit PCI MMIO window.
pub const PCI_MMIO32_START: u64 = 0x1000_0000;
/// Its size.
pub const PCI_MMIO32_SIZE: u64 = PCI_ECAM_START - PCI_MMIO32_START;
/// PCI ECAM (bus 0 at its start).
pub const PCI_ECAM_START: u64 = 0x3f00_0000;
/// ECAM size reserved (16 buses).
pub const PCI_ECAM_SIZE: u64 = 0x0100_0000;
/// Start of RAM.
pub const RAM_START: u64 = 0x4000_0000;
/// The kernel's load address (2 MiB aligned, as the Image protocol wants).
pub const KERNEL_START: u64 = RAM_START;
/// Room for the DTB at the end of RAM (the protocol's 2 MiB limit).
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// Size of the 64-bit PCI MMIO window, after RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// Alignment of the 64-bit window and of the hotplug region.
pub const HIGH_REGION_ALIGN: u64 = 1 << 30;
/// The top of the default 40-bit IPA space.
pub const IPA_LIMIT: u64 = 1 << 40;
/// First GSI for MSI routes (0..32 are the SPIs wired 1:1).
pub const MSI_GSI_START: u32 = 32;

const _: () = assert!(GIC_DIST_START + GIC_DIST_SIZE <= GIC_ITS_START);
const _: () = assert!(GIC_ITS_START + GIC_ITS_SIZE <= GIC_REDIST_START);
const _: () = assert!(UART_START + UART_SIZE <= PCI_MMIO32_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= RAM_START);
const _: () = assert!(MAX_VCPUS >= 8);

/// Where guest RAM lives: one range from [`RAM_START`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Bytes of RAM.
    pub size: u64,
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

impl MemoryLayout {
    /// `ram_size` bytes of boot RAM.
    pub fn new(ram_size: u64) -> Self {
        Self { size: ram_size }
    }

    /// Total RAM.
    pub fn ram_size(&self) -> u64 {
        self.size
    }

    /// The RAM ranges as `(start, size)`.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        vec![(RAM_START, self.size)]
    }

    /// First address after RAM.
    pub fn ram_end(&self) -> u64 {
        RAM_START + self.size
    }

    /// Where the DTB goes: the last 2 MiB of RAM.
    pub fn fdt_start(&self) -> u64 {
        self.ram_end() - FDT_MAX_SIZE
    }

    /// The 64-bit PCI MMIO window `(start, size)`, above RAM.
    pub fn pci_mmio64(&self) -> (u64, u64) {
        (align_up(self.ram_end(), HIGH_REGION_ALIGN), PCI_MMIO64_SIZE)
    }

    /// First address free for a hotplug region.
    pub fn hotplug_start(&self) -> u64 {
        let (start, size) = self.pci_mmio64();
        align_up(start + size, HIGH_REGION_ALIGN)
    }

    /// Whether `[start, start + size)` fits the 40-bit IPA space.
    pub fn fits_ipa(start: u64, size: u64) -> bool {
        start.checked_add(size).is_some_and(|e| e <= IPA_LIMIT)
    }
}

/// The ITS test guest's copy of the map, checked against this one.
#[cfg(test)]
#[path = "../../../../guests/its/src/layout.rs"]
mod its_guest;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_its_test_guest_uses_this_map() {
        assert_eq!(its_guest::GIC_DIST_START, GIC_DIST_START);
        assert_eq!(its_guest::GIC_ITS_START, GIC_ITS_START);
        assert_eq!(its_guest::GIC_REDIST_START, GIC_REDIST_START);
        assert_eq!(its_guest::GIC_REDIST_SIZE, GIC_REDIST_SIZE);
        assert_eq!(its_guest::UART_START, UART_START);
    }

    #[test]
    fn the_map_is_ordered_and_fits_40_bits() {
        let l = MemoryLayout::new(512 << 20);
        assert_eq!(l.ram_ranges(), vec![(RAM_START, 512 << 20)]);
        assert_eq!(l.fdt_start(), RAM_START + (510 << 20));
        let (m64, s64) = l.pci_mmio64();
        assert_eq!(m64, RAM_START + (1 << 30));
        assert!(l.hotplug_start() >= m64 + s64);
        assert!(MemoryLayout::fits_ipa(l.hotplug_start(), 8 << 30));
        assert!(!MemoryLayout::fits_ipa(IPA_LIMIT - 4096, 8192));
    }
}
