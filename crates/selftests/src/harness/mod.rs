//! The selftests' `kvm_util`: a VM builder on kvm-ioctls, memory slots,
//! long-mode vCPUs, the guest-to-host call ("ucall") and raw access to
//! `kvm_run` for the cases that race on it.

pub mod raw;
pub mod state;
pub mod ucall;
pub mod vm;
pub mod walker;

pub use ucall::{run_to_ucall, Ucall, UCALL_PORT};
pub use vm::{HostMem, TestVm, CODE_GPA, DATA_GPA, MEM_SIZE, STACK_TOP};
