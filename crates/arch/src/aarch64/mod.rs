//! aarch64 guest boot: the memory map, the device tree, the arm64 `Image`
//! boot protocol and the initial vCPU registers.

pub mod fdt;
pub mod layout;
pub mod regs;
