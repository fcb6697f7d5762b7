//! What differs per architecture in building a VM, behind one interface:
//! the memory layout, the interrupt controller, legacy devices, vCPU
//! creation and the boot protocol.

#[cfg(target_arch = "aarch64")]
pub use crate::aarch64::platform::*;
#[cfg(target_arch = "x86_64")]
pub use crate::x86_64::platform::*;
