//! Where Caravel puts things in an arm64 guest (`arch::aarch64::layout`,
//! whose unit tests check these copies).

/// GICv3 distributor.
pub const GIC_DIST_START: u64 = 0x0800_0000;
/// GICv3 ITS frame.
pub const GIC_ITS_START: u64 = 0x0808_0000;
/// First redistributor; one per vCPU, in vCPU order.
pub const GIC_REDIST_START: u64 = 0x080a_0000;
/// Per-vCPU redistributor size (RD_base + SGI_base).
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// PL011 UART.
pub const UART_START: u64 = 0x0900_0000;
