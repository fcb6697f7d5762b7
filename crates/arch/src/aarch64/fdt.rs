//! The device tree an arm64 guest boots with: CPUs (PSCI), memory, GICv3
//! with its ITS, the architected timer, the UART, the PCI ECAM host bridge
//! (MSIs through the ITS, requester ID = device ID) and `chosen`.

use vm_fdt::{Error as FdtError, FdtWriter};

use super::layout::*;

const PHANDLE_GIC: u32 = 1;
const PHANDLE_ITS: u32 = 2;
const PHANDLE_CLOCK: u32 = 3;

// GIC interrupt specifier: type, number, flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
const IRQ_TYPE_LEVEL_LOW: u32 = 8;
/// The architected timer's PPIs: secure, non-secure, virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// What the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    /// MPIDR_EL1 of each vCPU, in vCPU order.
    pub mpidrs: Vec<u64>,
    /// The memory map.
    pub layout: MemoryLayout,
    /// Kernel command line.
    pub cmdline: String,
    /// Initramfs `(start, size)`.
    pub initrd: Option<(u64, u64)>,
    /// Last PCI bus number.
    pub pci_last_bus: u8,
}

fn reg(fdt: &mut FdtWriter, pairs: &[(u64, u64)]) -> Result<(), FdtError> {
    let cells: Vec<u64> = pairs.iter().flat_map(|&(a, s)| [a, s]).collect();
    fdt.property_array_u64("reg", &cells)
}

/// Builds the DTB.
pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &cfg.cmdline)?;
    fdt.property_string("stdout-path", &format!("/pl011@{UART_START:x}"))?;
    if let Some((start, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", start + size)?;
    }
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node(&format!("memory@{RAM_START:x}"))?;
    fdt.property_string("device_type", "memory")?;
    reg(&mut fdt, &cfg.layout.ram_ranges())?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for (i, mpidr) in cfg.mpidrs.iter().enumerate() {
        let aff = mpidr & 0xff_00ff_ffff;
        let cpu = fdt.begin_node(&format!("cpu@{i:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", aff)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let nr = cfg.mpidrs.len() as u64;
    let gic = fdt.begin_node(&format!("intc@{GIC_DIST_START:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_u32("#redistributor-regions", 1)?;
    reg(
        &mut fdt,
        &[
            (GIC_DIST_START, GIC_DIST_SIZE),
            (GIC_REDIST_START, GIC_REDIST_SIZE * nr),
        ],
    )?;
    // Maintenance interrupt (PPI 9), as QEMU's virt describes it.
    fdt.property_array_u32("interrupts", &[GIC_PPI, 9, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.property_phandle(PHANDLE_GIC)?;
    let its = fdt.begin_node(&format!("msic@{GIC_ITS_START:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3-its")?;
    fdt.property_null("msi-controller")?;
    fdt.property_u32("#msi-cells", 1)?;
    reg(&mut fdt, &[(GIC_ITS_START, GIC_ITS_SIZE)])?;
    fdt.property_phandle(PHANDLE_ITS)?;
    fdt.end_node(its)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let cpu_mask = ((1u32 << nr.min(8)) - 1) << 8;
    let irqs: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&p| [GIC_PPI, p, cpu_mask | IRQ_TYPE_LEVEL_LOW])
        .collect();
    fdt.property_array_u32("interrupts", &irqs)?;
    fdt.end_node(timer)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(PHANDLE_CLOCK)?;
    fdt.end_node(clock)?;

    // A PL011 (an AMBA primecell: the bus reads its ID registers with the
    // APB clock enabled).
    let uart = fdt.begin_node(&format!("pl011@{UART_START:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    reg(&mut fdt, &[(UART_START, UART_SIZE)])?;
    fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    // Edge: the UART's irqfd injects a pulse, which a level-sensitive SPI
    // would see as an interrupt storm with nothing pending.
    fdt.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_TYPE_EDGE_RISING])?;
    fdt.end_node(uart)?;

    let (m64, m64_size) = cfg.layout.pci_mmio64();
    let pci = fdt.begin_node(&format!("pcie@{PCI_ECAM_START:x}"))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.property_array_u32("bus-range", &[0, u32::from(cfg.pci_last_bus)])?;
    fdt.property_u32("linux,pci-domain", 0)?;
    fdt.property_null("dma-coherent")?;
    reg(
        &mut fdt,
        &[(PCI_ECAM_START, (u64::from(cfg.pci_last_bus) + 1) << 20)],
    )?;
    // ranges: 32-bit non-prefetchable memory, 64-bit memory.
    let range = |space: u32, addr: u64, size: u64| {
        [
            space,
            (addr >> 32) as u32,
            addr as u32,
            (addr >> 32) as u32,
            addr as u32,
            (size >> 32) as u32,
            size as u32,
        ]
    };
    let mut ranges = range(0x0200_0000, PCI_MMIO32_START, PCI_MMIO32_SIZE).to_vec();
    ranges.extend(range(0x0300_0000, m64, m64_size));
    fdt.property_array_u32("ranges", &ranges)?;
    // Every requester ID is its own ITS device ID.
    fdt.property_array_u32("msi-map", &[0, PHANDLE_ITS, 0, 0x1_0000])?;
    fdt.end_node(pci)?;

    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FdtConfig {
        FdtConfig {
            mpidrs: vec![0x8000_0000, 0x8000_0001],
            layout: MemoryLayout::new(256 << 20),
            cmdline: "console=ttyAMA0".into(),
            initrd: Some((0x4800_0000, 0x10_0000)),
            pci_last_bus: 0,
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_valid_blob_with_every_node_the_guest_needs() {
        let dtb = build(&cfg()).unwrap();
        assert_eq!(&dtb[0..4], &0xd00d_feedu32.to_be_bytes(), "FDT magic");
        assert!(dtb.len() as u64 <= FDT_MAX_SIZE);
        for s in [
            &b"arm,gic-v3\0"[..],
            b"arm,gic-v3-its\0",
            b"msi-controller\0",
            b"arm,armv8-timer\0",
            b"pci-host-ecam-generic\0",
            b"msi-map\0",
            b"arm,pl011\0arm,primecell\0",
            b"uartclk\0apb_pclk\0",
            b"psci\0",
            b"console=ttyAMA0\0",
            b"linux,initrd-start\0",
            b"cpu@1\0",
        ] {
            assert!(
                contains(&dtb, s),
                "missing {:?}",
                String::from_utf8_lossy(s)
            );
        }
        // The second CPU's reg is its MPIDR affinity (1), not the raw value.
        assert!(contains(&dtb, &1u64.to_be_bytes()));
    }
}
