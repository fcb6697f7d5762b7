//! x86_64 guest boot: layout, boot protocols (PVH and the Linux 64-bit boot
//! protocol), initial CPU state, CPUID, MSRs and ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod msr;
pub mod regs;
