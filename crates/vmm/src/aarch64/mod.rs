//! KVM setup specific to aarch64: vCPUs with PSCI 0.2, the in-kernel GICv3
//! and ITS, and the arm64 Linux boot.

pub mod platform;
pub mod snapshot;
