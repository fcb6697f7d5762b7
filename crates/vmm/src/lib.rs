//! Caravel's virtual machine monitor core.
//!
//! * [`config`]: what to run (plain data, no parsing).
//! * [`Vm`]: one boot of a VM: KVM objects, guest memory, devices, vCPU threads.
//! * [`Vmm`]: the lifecycle around it: event loop, console, control API,
//!   guest reboots (a fresh [`Vm`] per boot), exit reasons.

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod api_server;
pub mod autosize;
mod balloon;
mod coalesced_io;
pub mod config;
pub mod console;
pub mod device_memory;
mod disk_lock;
mod error;
pub mod events;
pub mod exit;
mod hotplug;
pub mod interrupt;
pub mod kvm_stats;
pub mod memory;
mod memslots;
pub mod migration;
pub mod output;
mod pci_segment;
mod platform;
mod ram_slots;
pub mod seccomp;
pub mod snapshot;
pub mod tap;
#[doc(hidden)]
pub mod test_support;
pub mod unix_socket;
mod vcpu;
mod vfio_pci;
mod vm;
mod vm_devices;
mod vmm;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::platform::{ItsState, RedistState, MAX_LPI};
pub use error::Error;
pub use exit::ExitReason;
pub use vm::{RunningVm, Vm};
pub use vmm::Vmm;
#[cfg(target_arch = "x86_64")]
pub use x86_64::snapshot::VmState as X86VmState;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
