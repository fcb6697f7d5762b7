//! Boot per architecture.
//!
//! Everything here is pure computation over guest memory and plain data: memory
//! layout, boot protocol structures, initial vCPU state, CPUID and firmware
//! tables. The `vmm` crate applies the results with KVM ioctls, which keeps this
//! crate testable without `/dev/kvm`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;

/// Longest kernel command line (x86 and arm64 `COMMAND_LINE_SIZE`), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;

mod size;
pub use size::{format_size, parse_size, SizeError};
