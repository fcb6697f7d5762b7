//! `sync_regs`: the kernel's x86 sync_regs_test, case by case. The guest
//! loops on `in al, dx` (port 0x1000) and `add rbx, 1`; the host reads and
//! writes registers through `kvm_run->s.regs` with the valid/dirty bits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_run, KVM_EXIT_IO, KVM_EXIT_SHUTDOWN, KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS,
    KVM_SYNC_X86_SREGS, KVM_SYNC_X86_VALID_FIELDS,
};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd};

use super::{Case, Diag};
use crate::check::{check_same, expect_errno, CaseResult, Failure, IoctlContext};
use crate::harness::raw::{run_raw, RunPtr};
use crate::harness::{TestVm, CODE_GPA, UCALL_PORT};
use crate::{check, check_eq, require};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case {
        name: "sync_regs.read_invalid",
        about: "an invalid kvm_valid_regs bit makes KVM_RUN fail with EINVAL",
        run: read_invalid,
    },
    Case {
        name: "sync_regs.set_invalid",
        about: "an invalid kvm_dirty_regs bit makes KVM_RUN fail with EINVAL",
        run: set_invalid,
    },
    Case {
        name: "sync_regs.req_and_verify_all_valid",
        about: "s.regs after an exit equals KVM_GET_REGS/SREGS/VCPU_EVENTS",
        run: req_and_verify_all_valid,
    },
    Case {
        name: "sync_regs.set_and_verify_various",
        about: "RBX and APIC_BASE written through s.regs reach the vCPU",
        run: set_and_verify_various,
    },
    Case {
        name: "sync_regs.clear_kvm_dirty_regs_bits",
        about: "without dirty bits, s.regs scribbles are overwritten with guest values",
        run: clear_kvm_dirty_regs_bits,
    },
    Case {
        name: "sync_regs.clear_kvm_valid_and_dirty_regs",
        about: "with no bits, s.regs is neither read nor refreshed",
        run: clear_kvm_valid_and_dirty_regs,
    },
    Case {
        name: "sync_regs.clear_kvm_valid_regs_bits",
        about: "dirty but not valid: the guest takes s.regs, s.regs is not refreshed",
        run: clear_kvm_valid_regs_bits,
    },
    Case {
        name: "sync_regs.race_cr4",
        about: "CR4.PAE toggled in s.regs during KVM_RUN and KVM_TRANSLATE (2 s)",
        run: race_cr4,
    },
    Case {
        name: "sync_regs.race_exc",
        about: "an invalid exception vector raced into s.regs.events (2 s)",
        run: race_exc,
    },
    Case {
        name: "sync_regs.race_inj_pen",
        about: "an exception both injected and pending raced into s.regs.events (2 s)",
        run: race_inj_pen,
    },
];

guest_asm::guest_code!(
    sync_regs_guest,
    ".code64",
    "mov dx, 0x1000",
    "2: in al, dx",
    "add rbx, 1",
    "jmp 2b",
);

const INVALID_SYNC_FIELD: u64 = 0x8000_0000;
const TEST_SYNC_FIELDS: u64 = (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS) as u64;
const RACE_TIME: Duration = Duration::from_secs(2);

fn setup() -> Result<(TestVm, VcpuFd), Failure> {
    let vm = TestVm::new(sync_regs_guest::code())?;
    let caps = vm.kvm.check_extension_int(Cap::SyncRegs) as u64;
    require!(caps != 0, "KVM_CAP_SYNC_REGS is not supported");
    check_eq!(
        caps & TEST_SYNC_FIELDS,
        TEST_SYNC_FIELDS,
        "KVM_CAP_SYNC_REGS must include REGS|SREGS|EVENTS"
    );
    check_eq!(
        caps & INVALID_SYNC_FIELD,
        0,
        "KVM_CAP_SYNC_REGS must not include the invalid bit"
    );
    let vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    Ok((vm, vcpu))
}

/// Runs once and requires the guest's port exit.
fn run_io(vcpu: &mut VcpuFd) -> CaseResult {
    match vcpu.run().ctx("KVM_RUN")? {
        VcpuExit::IoIn(UCALL_PORT, _) => Ok(()),
        other => Err(Failure::Fail(format!(
            "expected KVM_EXIT_IO on port 0x1000, got {}",
            crate::harness::ucall::describe(&other)
        ))),
    }
}

fn set_bits(vcpu: &mut VcpuFd, valid: u64, dirty: u64) {
    let run = vcpu.get_kvm_run();
    run.kvm_valid_regs = valid;
    run.kvm_dirty_regs = dirty;
}

fn invalid_bits(dirty: bool) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    for extra in [0, TEST_SYNC_FIELDS] {
        let bits = INVALID_SYNC_FIELD | extra;
        let (valid, dirtyb) = if dirty { (0, bits) } else { (bits, 0) };
        set_bits(&mut vcpu, valid, dirtyb);
        let what = format!(
            "KVM_RUN with kvm_{}_regs = {bits:#x}",
            if dirty { "dirty" } else { "valid" }
        );
        expect_errno(vcpu.run().map(|_| ()), libc::EINVAL, &what)?;
        set_bits(&mut vcpu, 0, 0);
    }
    Ok(())
}

fn read_invalid(_: &mut Diag) -> CaseResult {
    invalid_bits(false)
}

fn set_invalid(_: &mut Diag) -> CaseResult {
    invalid_bits(true)
}

/// s.regs against the ioctls, all three parts.
fn compare_all(vcpu: &mut VcpuFd) -> CaseResult {
    let s = vcpu.sync_regs();
    check_same(
        &vcpu.get_regs().ctx("KVM_GET_REGS")?,
        &s.regs,
        "KVM_GET_REGS and s.regs.regs",
    )?;
    check_same(
        &vcpu.get_sregs().ctx("KVM_GET_SREGS")?,
        &s.sregs,
        "KVM_GET_SREGS and s.regs.sregs",
    )?;
    check_same(
        &vcpu.get_vcpu_events().ctx("KVM_GET_VCPU_EVENTS")?,
        &s.events,
        "KVM_GET_VCPU_EVENTS and s.regs.events",
    )
}

fn req_and_verify_all_valid(_: &mut Diag) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    set_bits(&mut vcpu, TEST_SYNC_FIELDS, 0);
    run_io(&mut vcpu)?;
    compare_all(&mut vcpu)
}

fn set_and_verify_various(_: &mut Diag) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    set_bits(&mut vcpu, TEST_SYNC_FIELDS, 0);
    run_io(&mut vcpu)?;
    {
        let s = vcpu.sync_regs_mut();
        s.regs.rbx = 0xBAD1DEA;
        s.sregs.apic_base = 1 << 11;
    }
    set_bits(
        &mut vcpu,
        TEST_SYNC_FIELDS,
        u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS),
    );
    run_io(&mut vcpu)?;
    let s = vcpu.sync_regs();
    check_eq!(
        s.regs.rbx,
        0xBAD1DEAu64 + 1,
        "s.regs.regs.rbx after the guest's add"
    );
    check_eq!(s.sregs.apic_base, 1u64 << 11, "s.regs.sregs.apic_base");
    compare_all(&mut vcpu)
}

fn clear_kvm_dirty_regs_bits(_: &mut Diag) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    set_bits(&mut vcpu, TEST_SYNC_FIELDS, 0);
    vcpu.sync_regs_mut().regs.rbx = 0xDEADBEEF;
    run_io(&mut vcpu)?;
    let rbx = vcpu.sync_regs().regs.rbx;
    check!(
        rbx != 0xDEADBEEF,
        "s.regs.regs.rbx kept the scribble {rbx:#018x}"
    );
    let real = vcpu.get_regs().ctx("KVM_GET_REGS")?.rbx;
    check_eq!(rbx, real, "s.regs.regs.rbx against KVM_GET_REGS");
    Ok(())
}

fn clear_kvm_valid_and_dirty_regs(_: &mut Diag) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    set_bits(&mut vcpu, TEST_SYNC_FIELDS, 0);
    run_io(&mut vcpu)?;
    set_bits(&mut vcpu, 0, 0);
    vcpu.sync_regs_mut().regs.rbx = 0xAAAA;
    let mut regs = vcpu.get_regs().ctx("KVM_GET_REGS")?;
    regs.rbx = 0xBAC0;
    vcpu.set_regs(&regs).ctx("KVM_SET_REGS")?;
    run_io(&mut vcpu)?;
    check_eq!(
        vcpu.sync_regs().regs.rbx,
        0xAAAAu64,
        "s.regs.regs.rbx (must not be refreshed)"
    );
    check_eq!(
        vcpu.get_regs().ctx("KVM_GET_REGS")?.rbx,
        0xBAC0u64 + 1,
        "guest RBX (must not take s.regs)"
    );
    Ok(())
}

fn clear_kvm_valid_regs_bits(_: &mut Diag) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    set_bits(&mut vcpu, TEST_SYNC_FIELDS, 0);
    run_io(&mut vcpu)?;
    set_bits(&mut vcpu, 0, TEST_SYNC_FIELDS);
    vcpu.sync_regs_mut().regs.rbx = 0xBBBB;
    run_io(&mut vcpu)?;
    check_eq!(
        vcpu.sync_regs().regs.rbx,
        0xBBBBu64,
        "s.regs.regs.rbx (must not be refreshed)"
    );
    check_eq!(
        vcpu.get_regs().ctx("KVM_GET_REGS")?.rbx,
        0xBBBBu64 + 1,
        "guest RBX (must take s.regs)"
    );
    Ok(())
}

/// What a racing thread writes into `kvm_run`, in a loop.
#[derive(Clone, Copy)]
enum Racer {
    Cr4,
    Exc,
    InjPen,
}

/// One round of the racer's writes. Volatile: the kernel reads these
/// fields concurrently in KVM_RUN, which is the point of the test.
fn race_once(run: *mut kvm_run, racer: Racer, cr4: (u64, u64)) {
    // SAFETY: `run` is the vCPU's kvm_run mapping (see RunPtr), alive until
    // the racing thread is joined; the fields written are plain integers
    // inside it, and only this thread writes them during the race.
    unsafe {
        let dirty = &raw mut (*run).kvm_dirty_regs;
        let s = &raw mut (*run).s.regs;
        match racer {
            Racer::Cr4 => {
                std::ptr::write_volatile(dirty, u64::from(KVM_SYNC_X86_SREGS));
                std::ptr::write_volatile(&raw mut (*s).sregs.cr4, cr4.0);
                std::ptr::write_volatile(&raw mut (*s).sregs.cr4, cr4.1);
            }
            Racer::Exc => {
                std::ptr::write_volatile(dirty, u64::from(KVM_SYNC_X86_EVENTS));
                std::ptr::write_volatile(&raw mut (*s).events.flags, 0);
                std::ptr::write_volatile(&raw mut (*s).events.exception.nr, 6); // #UD
                std::ptr::write_volatile(&raw mut (*s).events.exception.pending, 1);
                std::ptr::write_volatile(&raw mut (*s).events.exception.nr, 255);
            }
            Racer::InjPen => {
                std::ptr::write_volatile(dirty, u64::from(KVM_SYNC_X86_EVENTS));
                std::ptr::write_volatile(&raw mut (*s).events.flags, 0);
                std::ptr::write_volatile(&raw mut (*s).events.exception.nr, 6);
                std::ptr::write_volatile(&raw mut (*s).events.exception.injected, 1);
                std::ptr::write_volatile(&raw mut (*s).events.exception.pending, 1);
            }
        }
    }
}

/// The kernel's race_sync_regs: a thread rewrites s.regs for about 2 s while
/// this one loops on KVM_RUN. KVM must only ever answer with an exit or
/// EINVAL, and the vCPU must run normally once the racer stops.
fn race(diag: &mut Diag, racer: Racer) -> CaseResult {
    let (_vm, mut vcpu) = setup()?;
    set_bits(&mut vcpu, u64::from(KVM_SYNC_X86_SREGS), 0);
    run_io(&mut vcpu)?;
    set_bits(&mut vcpu, 0, 0);
    let sregs = vcpu.sync_regs().sregs;
    check!(
        sregs.cr4 & 0x20 != 0 && sregs.efer & 0x100 != 0,
        "the vCPU should be in long mode (CR4 {:#x}, EFER {:#x})",
        sregs.cr4,
        sregs.efer
    );
    let saved = (
        vcpu.get_regs().ctx("KVM_GET_REGS")?,
        vcpu.get_sregs().ctx("KVM_GET_SREGS")?,
        vcpu.get_vcpu_events().ctx("KVM_GET_VCPU_EVENTS")?,
    );
    let restore = |vcpu: &VcpuFd| -> CaseResult {
        vcpu.set_regs(&saved.0).ctx("KVM_SET_REGS")?;
        vcpu.set_sregs(&saved.1).ctx("KVM_SET_SREGS")?;
        vcpu.set_vcpu_events(&saved.2).ctx("KVM_SET_VCPU_EVENTS")
    };
    let cr4 = (sregs.cr4, sregs.cr4 & !0x20);
    let ptr = RunPtr::of(&mut vcpu);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ptr = ptr;
            while !stop.load(Ordering::Relaxed) {
                race_once(ptr.0, racer, cr4);
            }
        })
    };
    let (mut runs, mut einval, mut shutdowns) = (0u64, 0u64, 0u64);
    let mut unexpected = None;
    let deadline = Instant::now() + RACE_TIME;
    while Instant::now() < deadline {
        runs += 1;
        match run_raw(&vcpu) {
            0 => {
                // SAFETY: exit_reason is written by the kernel during
                // KVM_RUN, which has returned; the racer never writes it.
                let reason = unsafe { std::ptr::read_volatile(&raw const (*ptr.0).exit_reason) };
                if reason == KVM_EXIT_SHUTDOWN {
                    // SVM synthesizes INIT on a triple fault: reload state.
                    shutdowns += 1;
                    restore(&vcpu)?;
                }
            }
            libc::EINVAL => einval += 1,
            e => {
                unexpected = Some(e);
                break;
            }
        }
        if matches!(racer, Racer::Cr4) {
            let _ = vcpu.translate_gva(0);
        }
    }
    stop.store(true, Ordering::Relaxed);
    thread
        .join()
        .map_err(|_| Failure::Fail("the racing thread panicked".into()))?;
    diag.note(format!(
        "{runs} KVM_RUNs raced: {einval} EINVAL, {shutdowns} shutdowns reloaded"
    ));
    if let Some(e) = unexpected {
        return Err(Failure::Fail(format!(
            "KVM_RUN failed with {} while racing (only EINVAL is expected)",
            crate::check::errno_name(e)
        )));
    }
    // The vCPU must still work from known-good state.
    set_bits(&mut vcpu, 0, 0);
    restore(&vcpu)?;
    set_bits(&mut vcpu, u64::from(KVM_SYNC_X86_VALID_FIELDS), 0);
    run_io(&mut vcpu)?;
    let exit = vcpu.get_kvm_run().exit_reason;
    check_eq!(exit, KVM_EXIT_IO, "exit reason after the race");
    Ok(())
}

fn race_cr4(diag: &mut Diag) -> CaseResult {
    race(diag, Racer::Cr4)
}

fn race_exc(diag: &mut Diag) -> CaseResult {
    race(diag, Racer::Exc)
}

fn race_inj_pen(diag: &mut Diag) -> CaseResult {
    race(diag, Racer::InjPen)
}
