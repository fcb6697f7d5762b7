//! `caravel-selftests`: a KVM conformance suite in Rust, after the kernel's
//! KVM selftests and kvm-unit-tests. It runs against `/dev/kvm`, prints
//! kselftest TAP and exits 0 (all passed), 1 (a case failed) or 4 (all
//! skipped), so an operator can tell whether this host's KVM is fit to run
//! Caravel.
//!
//! * [`harness`]: VMs, memory slots, long-mode vCPUs, the ucall, raw
//!   `kvm_run` access;
//! * [`cases`]: the cases by group (`sync_regs`, `resets`, `sregs`,
//!   `memslots`, `vcpu`, `stats`, `exits`);
//! * [`runner`]: each case in its own process, with a timeout;
//! * [`keeper`]: one idle VM held for the whole run (no kernel code
//!   patching between cases);
//! * [`report`]: TAP and JSON output, exit codes.
//!
//! Guest code is assembly (general-purpose registers only, see `guest-asm`).

#![cfg(target_arch = "x86_64")]

pub mod cases;
pub mod check;
pub mod churn;
pub mod glob;
pub mod harness;
pub mod keeper;
pub mod report;
pub mod runner;
