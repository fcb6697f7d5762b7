//! Issue #18's reproducer, without the suite: the host's only KVM VM
//! created and destroyed in a loop (one vCPU without an in-kernel LAPIC, so
//! each round enables and disables the kernel's KVM static keys, which
//! live-patches `__schedule` twice; with `run_vcpu` the vCPU also enters the
//! guest once, to its first port write) while a second thread enters the
//! scheduler as often as it can (`sched_yield`). A healthy host just counts
//! rounds; docs/selftests.md says what it did on a 2-vCPU nested-SVM host
//! under QEMU's multi-threaded TCG.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit};

use crate::harness::vm::{TestVm, CODE_GPA};

guest_asm::guest_code!(
    out_then_spin,
    ".code64",
    "mov dx, 0x1001",
    "out dx, al",
    "2: jmp 2b"
);

/// One round with a vCPU that enters the guest until its port write.
fn round_with_guest() -> Result<(), String> {
    let vm = TestVm::new(out_then_spin::code()).map_err(|e| format!("{e:?}"))?;
    let mut vcpu = vm
        .long_mode_vcpu(0, CODE_GPA)
        .map_err(|e| format!("{e:?}"))?;
    match vcpu.run() {
        Ok(VcpuExit::IoOut(0x1001, _)) => Ok(()),
        Ok(other) => Err(format!("unexpected exit {other:?}")),
        Err(e) => Err(format!("KVM_RUN: {e}")),
    }
}

/// Runs the churn for `time`, printing progress every `report` (kselftest
/// comment lines). Returns the rounds made, or why a round failed.
pub fn run(time: Duration, report: Duration, run_vcpu: bool) -> Result<u64, String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let yields = Arc::new(AtomicU64::new(0));
    let yielder = {
        let (stop, yields) = (stop.clone(), yields.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::yield_now();
                yields.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let mut next_report = start + report;
    let mut rounds = 0u64;
    let result = loop {
        if start.elapsed() >= time {
            break Ok(rounds);
        }
        let round = if run_vcpu {
            round_with_guest()
        } else {
            kvm.create_vm()
                .map_err(|e| format!("KVM_CREATE_VM: {e}"))
                .and_then(|vm| {
                    vm.create_vcpu(0)
                        .map(drop)
                        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))
                })
        };
        if let Err(e) = round {
            break Err(format!("round {rounds}: {e}"));
        }
        rounds += 1;
        if Instant::now() >= next_report {
            println!(
                "# churn: {rounds} VMs created and destroyed, {} yields, {:.0} s",
                yields.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
            next_report += report;
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = yielder.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_counted_or_the_missing_kvm_is_named() {
        for run_vcpu in [false, true] {
            match run(
                Duration::from_millis(200),
                Duration::from_secs(60),
                run_vcpu,
            ) {
                Ok(n) => assert!(n > 0, "no round in 200 ms"),
                Err(e) => assert!(e.contains("/dev/kvm"), "{e}"),
            }
        }
    }
}
