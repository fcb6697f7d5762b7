//! `vcpu`: vCPU limits, MP states, single-stepping, MSR exits and filters,
//! and the CPUID rules (kvm_create_max_vcpus, max_vcpuid_cap_test,
//! debug_regs, userspace_msr_exit_test, cpuid_test).

use kvm_bindings::{
    kvm_enable_cap, kvm_guest_debug, kvm_mp_state, KVM_CAP_MAX_VCPU_ID, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN,
    KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{
    Cap, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuExit, VcpuFd, VmFd,
};

use vm_memory::Bytes;

use super::{Case, Diag};
use crate::check::{check_same, expect_errno, CaseResult, Failure, IoctlContext};
use crate::harness::ucall::{describe, run_to_sync};
use crate::harness::{run_to_ucall, TestVm, Ucall, CODE_GPA, DATA_GPA, UCALL_PORT};
use crate::{check, check_eq, require};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case { name: "vcpu.max_vcpus", about: "KVM_CAP_MAX_VCPUS vCPUs at ids 0.. and at the top of the id range; one more is EINVAL", run: max_vcpus },
    Case { name: "vcpu.max_vcpu_id", about: "a vCPU id of KVM_CAP_MAX_VCPU_ID - 1 is fine, KVM_CAP_MAX_VCPU_ID is EINVAL", run: max_vcpu_id },
    Case { name: "vcpu.max_vcpu_id_cap", about: "KVM_ENABLE_CAP(MAX_VCPU_ID): beyond the limit or a second value fails; ids above it are refused", run: max_vcpu_id_cap },
    Case { name: "vcpu.mp_state", about: "MP state transitions with the in-kernel LAPIC, a latched SIPI starts the vCPU at its vector, bad states are EINVAL", run: mp_state },
    Case { name: "vcpu.single_step", about: "KVM_GUESTDBG_SINGLESTEP exits after every instruction with DR6.BS", run: single_step },
    Case { name: "vcpu.msr_exit_unknown", about: "KVM_CAP_X86_USER_SPACE_MSR: RDMSR/WRMSR of an unknown MSR exit to userspace", run: msr_exit_unknown },
    Case { name: "vcpu.msr_filter", about: "KVM_X86_SET_MSR_FILTER: a denied read exits with reason FILTER, others stay in KVM", run: msr_filter },
    Case { name: "vcpu.cpuid_e2big", about: "KVM_GET_SUPPORTED_CPUID and KVM_GET_CPUID2 with too few entries are E2BIG", run: cpuid_e2big },
    Case { name: "vcpu.cpuid_after_run", about: "KVM_SET_CPUID2 after KVM_RUN: identical is accepted, different is EINVAL", run: cpuid_after_run },
    Case { name: "vcpu.guest_cpuid", about: "the guest's CPUID matches KVM_SET_CPUID2 (leaves 0, 1.EAX, 0x80000000)", run: guest_cpuid },
];

fn raise_fd_limit(want: u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill and read a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < want {
            rl.rlim_cur = want.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn create_many(vm: &VmFd, first: u64, n: usize) -> Result<Vec<VcpuFd>, Failure> {
    (0..n as u64)
        .map(|i| {
            vm.create_vcpu(first + i)
                .ctx(&format!("KVM_CREATE_VCPU id {}", first + i))
        })
        .collect()
}

fn max_vcpus(diag: &mut Diag) -> CaseResult {
    let (kvm, _) = TestVm::barebones()?;
    let (max, max_id) = (kvm.get_max_vcpus(), kvm.get_max_vcpu_id());
    raise_fd_limit(max as u64 + 64);
    let start = std::time::Instant::now();
    let mut firsts = vec![0];
    if max_id > max {
        firsts.push((max_id - max) as u64);
    }
    for first in firsts {
        let vm = kvm.create_vm().ctx("KVM_CREATE_VM")?;
        let vcpus = create_many(&vm, first, max)?;
        check_eq!(vcpus.len(), max, "vCPUs created from id {first}");
        let extra = if first == 0 { max as u64 } else { 0 };
        expect_errno(
            vm.create_vcpu(extra),
            libc::EINVAL,
            &format!("vCPU number {} (id {extra})", max + 1),
        )?;
    }
    diag.note(format!(
        "KVM_CAP_MAX_VCPUS {max}, KVM_CAP_MAX_VCPU_ID {max_id}; created in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    ));
    Ok(())
}

fn max_vcpu_id(_: &mut Diag) -> CaseResult {
    let (kvm, vm) = TestVm::barebones()?;
    let max_id = kvm.get_max_vcpu_id() as u64;
    vm.create_vcpu(max_id - 1).ctx(&format!(
        "KVM_CREATE_VCPU id {} (KVM_CAP_MAX_VCPU_ID - 1)",
        max_id - 1
    ))?;
    expect_errno(
        vm.create_vcpu(max_id),
        libc::EINVAL,
        &format!("KVM_CREATE_VCPU id {max_id} (KVM_CAP_MAX_VCPU_ID)"),
    )
}

fn max_vcpu_id_cap(_: &mut Diag) -> CaseResult {
    let (_kvm, vm) = TestVm::barebones()?;
    let max = vm.check_extension_int(Cap::MaxVcpuId) as u64;
    let cap = |v: u64| kvm_enable_cap {
        cap: KVM_CAP_MAX_VCPU_ID,
        args: [v, 0, 0, 0],
        ..Default::default()
    };
    expect_errno(
        vm.enable_cap(&cap(max + 1)),
        libc::EINVAL,
        &format!("KVM_ENABLE_CAP(MAX_VCPU_ID, {})", max + 1),
    )?;
    vm.enable_cap(&cap(2))
        .ctx("KVM_ENABLE_CAP(MAX_VCPU_ID, 2)")?;
    expect_errno(
        vm.enable_cap(&cap(3)),
        libc::EINVAL,
        "KVM_ENABLE_CAP(MAX_VCPU_ID, 3) after 2",
    )?;
    vm.create_vcpu(1).ctx("KVM_CREATE_VCPU id 1")?;
    expect_errno(
        vm.create_vcpu(2),
        libc::EINVAL,
        "KVM_CREATE_VCPU id 2 with MAX_VCPU_ID 2",
    )
}

fn set_mp(vcpu: &VcpuFd, state: u32) -> Result<(), vmm_sys_util::errno::Error> {
    vcpu.set_mp_state(kvm_mp_state { mp_state: state })
}

fn mp_state(_: &mut Diag) -> CaseResult {
    let vm = TestVm::new(&[])?.with_irqchip()?;
    let _bsp = vm.vm.create_vcpu(0).ctx("KVM_CREATE_VCPU 0")?;
    let ap = vm.vm.create_vcpu(1).ctx("KVM_CREATE_VCPU 1")?;
    let get = |v: &VcpuFd| v.get_mp_state().map(|m| m.mp_state).ctx("KVM_GET_MP_STATE");
    check_eq!(get(&ap)?, KVM_MP_STATE_UNINITIALIZED, "AP after creation");
    let regs = ap.get_regs().ctx("KVM_GET_REGS")?;
    set_mp(&ap, KVM_MP_STATE_INIT_RECEIVED).ctx("KVM_SET_MP_STATE INIT_RECEIVED")?;
    check_eq!(
        get(&ap)?,
        KVM_MP_STATE_INIT_RECEIVED,
        "after setting INIT_RECEIVED"
    );
    check_same(
        &regs,
        &ap.get_regs().ctx("KVM_GET_REGS")?,
        "registers before and after setting INIT_RECEIVED",
    )?;
    // SIPI_RECEIVED is stored as INIT_RECEIVED plus a latched SIPI, which
    // KVM_GET_MP_STATE delivers (it accepts pending events): RUNNABLE, with
    // CS from the SIPI vector set through KVM_SET_VCPU_EVENTS.
    let mut events = ap.get_vcpu_events().ctx("KVM_GET_VCPU_EVENTS")?;
    events.sipi_vector = 0x12;
    events.flags = KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    ap.set_vcpu_events(&events)
        .ctx("KVM_SET_VCPU_EVENTS sipi_vector")?;
    set_mp(&ap, KVM_MP_STATE_SIPI_RECEIVED).ctx("KVM_SET_MP_STATE SIPI_RECEIVED")?;
    check_eq!(
        get(&ap)?,
        KVM_MP_STATE_RUNNABLE,
        "SIPI_RECEIVED read back (the latched SIPI delivered)"
    );
    let sregs = ap.get_sregs().ctx("KVM_GET_SREGS")?;
    check_eq!(
        (sregs.cs.selector, sregs.cs.base),
        (0x1200u16, 0x12000u64),
        "CS after the SIPI with vector 0x12"
    );
    check_eq!(
        ap.get_regs().ctx("KVM_GET_REGS")?.rip,
        0u64,
        "RIP after the SIPI"
    );
    for (name, state) in [
        ("HALTED", KVM_MP_STATE_HALTED),
        ("RUNNABLE", KVM_MP_STATE_RUNNABLE),
        ("UNINITIALIZED", KVM_MP_STATE_UNINITIALIZED),
    ] {
        set_mp(&ap, state).ctx(&format!("KVM_SET_MP_STATE {name}"))?;
        check_eq!(get(&ap)?, state, "after setting {name}");
    }
    expect_errno(set_mp(&ap, 99), libc::EINVAL, "KVM_SET_MP_STATE 99")?;
    // Without the in-kernel LAPIC only RUNNABLE is allowed.
    let (_kvm, plain) = TestVm::barebones()?;
    let v = plain.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    expect_errno(
        set_mp(&v, KVM_MP_STATE_HALTED),
        libc::EINVAL,
        "KVM_SET_MP_STATE HALTED without an in-kernel LAPIC",
    )?;
    set_mp(&v, KVM_MP_STATE_RUNNABLE).ctx("KVM_SET_MP_STATE RUNNABLE without an in-kernel LAPIC")
}

guest_asm::guest_code!(
    steps,
    ".code64",
    "nop",
    "mov eax, 1",
    "add rax, rax",
    "mov edi, 4",
    "mov dx, 0x1000",
    "in al, dx",
    "2: jmp 2b",
);

fn single_step(_: &mut Diag) -> CaseResult {
    let vm = TestVm::new(steps::code())?;
    require!(
        vm.kvm.check_extension(Cap::SetGuestDebug),
        "KVM_CAP_SET_GUEST_DEBUG is not supported"
    );
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    let mut dbg = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
        ..Default::default()
    };
    vcpu.set_guest_debug(&dbg).ctx("KVM_SET_GUEST_DEBUG")?;
    for (i, len) in [(1u64, 1u64), (2, 6), (3, 9), (4, 14), (5, 18)] {
        match vcpu.run().ctx("KVM_RUN")? {
            VcpuExit::Debug(d) => {
                check_eq!(d.pc, CODE_GPA + len, "RIP after single step {i}");
                check_eq!(d.exception, 1u32, "exception vector of step {i} (#DB)");
                check_eq!(d.dr6 & 0x4000, 0x4000u64, "DR6.BS after step {i}");
            }
            other => {
                return Err(Failure::Fail(format!(
                    "step {i}: got {}, expected KVM_EXIT_DEBUG",
                    describe(&other)
                )))
            }
        }
    }
    dbg.control = 0;
    vcpu.set_guest_debug(&dbg).ctx("KVM_SET_GUEST_DEBUG off")?;
    match vcpu.run().ctx("KVM_RUN")? {
        VcpuExit::IoIn(UCALL_PORT, _) => Ok(()),
        other => Err(Failure::Fail(format!(
            "after single-stepping is turned off: got {}, expected the DONE ucall",
            describe(&other)
        ))),
    }
}

const MSR_NON_EXISTENT: u32 = 0x474f_4f00;

guest_asm::guest_code!(
    msr_unknown,
    ".code64",
    "mov ecx, 0x474f4f00",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov rsi, rax",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "mov ecx, 0x474f4f00",
    "mov eax, 0x89abcdef",
    "mov edx, 0x01234567",
    "wrmsr",
    "mov edi, 4",
    "mov dx, 0x1000",
    "in al, dx",
    "2: hlt",
    "jmp 2b",
);

fn enable_user_msr(vm: &TestVm, reasons: u32) -> CaseResult {
    require!(
        vm.kvm.check_extension(Cap::X86UserSpaceMsr),
        "KVM_CAP_X86_USER_SPACE_MSR is not supported"
    );
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(reasons), 0, 0, 0],
        ..Default::default()
    };
    vm.vm
        .enable_cap(&cap)
        .ctx("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)")
}

/// Runs to a KVM_EXIT_X86_RDMSR of `index` for `reason` and answers `data`.
fn expect_rdmsr(vcpu: &mut VcpuFd, index: u32, reason: u32, data: u64) -> CaseResult {
    match vcpu.run().ctx("KVM_RUN")? {
        VcpuExit::X86Rdmsr(exit) => {
            check_eq!(exit.index, index, "RDMSR exit index");
            check_eq!(exit.reason.bits(), reason, "RDMSR exit reason");
            *exit.data = data;
            *exit.error = 0;
            Ok(())
        }
        other => Err(Failure::Fail(format!(
            "RDMSR of {index:#x}: got {}, expected KVM_EXIT_X86_RDMSR",
            describe(&other)
        ))),
    }
}

fn msr_exit_unknown(_: &mut Diag) -> CaseResult {
    let vm = TestVm::new(msr_unknown::code())?;
    enable_user_msr(&vm, KVM_MSR_EXIT_REASON_UNKNOWN)?;
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    expect_rdmsr(
        &mut vcpu,
        MSR_NON_EXISTENT,
        KVM_MSR_EXIT_REASON_UNKNOWN,
        0x1122_3344_5566_7788,
    )?;
    let [seen, _, _] = run_to_sync(&mut vcpu, &vm.mem)?;
    check_eq!(seen, 0x1122_3344_5566_7788u64, "value the guest read");
    match vcpu.run().ctx("KVM_RUN")? {
        VcpuExit::X86Wrmsr(exit) => {
            check_eq!(exit.index, MSR_NON_EXISTENT, "WRMSR exit index");
            check_eq!(exit.data, 0x0123_4567_89ab_cdefu64, "WRMSR exit data");
            *exit.error = 0;
        }
        other => {
            return Err(Failure::Fail(format!(
                "WRMSR: got {}, expected KVM_EXIT_X86_WRMSR",
                describe(&other)
            )))
        }
    }
    match run_to_ucall(&mut vcpu, &vm.mem)? {
        Ucall::Done => Ok(()),
        other => Err(Failure::Fail(format!("expected GUEST_DONE, got {other:?}"))),
    }
}

const MSR_PAT: u32 = 0x277;

guest_asm::guest_code!(
    msr_filtered,
    ".code64",
    "mov ecx, 0x277",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov rsi, rax",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "mov ecx, 0x277",
    "mov eax, 0x00070406",
    "mov edx, 0x00070406",
    "wrmsr",
    "mov ecx, 0xc0000080",
    "rdmsr",
    "mov esi, eax",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "2: hlt",
    "jmp 2b",
);

fn msr_filter(_: &mut Diag) -> CaseResult {
    let vm = TestVm::new(msr_filtered::code())?;
    enable_user_msr(&vm, KVM_MSR_EXIT_REASON_FILTER)?;
    let deny = [0u8];
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::READ,
        base: MSR_PAT,
        msr_count: 1,
        bitmap: &deny,
    };
    vm.vm
        .set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
        .ctx("KVM_X86_SET_MSR_FILTER")?;
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    expect_rdmsr(&mut vcpu, MSR_PAT, KVM_MSR_EXIT_REASON_FILTER, 0x42)?;
    let [seen, _, _] = run_to_sync(&mut vcpu, &vm.mem)?;
    check_eq!(seen, 0x42u64, "value the guest read from the filtered MSR");
    // The WRMSR of IA32_PAT (writes not filtered) and the RDMSR of EFER stay in KVM.
    let [efer, _, _] = run_to_sync(&mut vcpu, &vm.mem)?;
    check_eq!(
        efer & 0x500,
        0x500u64,
        "guest EFER.LME|LMA read without an exit"
    );
    Ok(())
}

fn cpuid_e2big(_: &mut Diag) -> CaseResult {
    let (kvm, vm) = TestVm::barebones()?;
    expect_errno(
        kvm.get_supported_cpuid(1).map(|_| ()),
        libc::E2BIG,
        "KVM_GET_SUPPORTED_CPUID with 1 entry",
    )?;
    let vcpu = vm.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .ctx("KVM_GET_SUPPORTED_CPUID")?;
    require!(
        cpuid.as_slice().len() > 1,
        "KVM supports a single CPUID leaf"
    );
    vcpu.set_cpuid2(&cpuid).ctx("KVM_SET_CPUID2")?;
    expect_errno(
        vcpu.get_cpuid2(1).map(|_| ()),
        libc::E2BIG,
        "KVM_GET_CPUID2 with 1 entry",
    )?;
    // On success nent is left as the caller set it on 6.1 (and updated on
    // newer kernels): compare the entries KVM holds, which come first.
    let back = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .ctx("KVM_GET_CPUID2")?;
    let n = cpuid.as_slice().len();
    if back.as_slice().len() < n {
        let kept: Vec<(u32, u32)> = back
            .as_slice()
            .iter()
            .map(|e| (e.function, e.index))
            .collect();
        let missing: Vec<String> = cpuid
            .as_slice()
            .iter()
            .filter(|e| !kept.contains(&(e.function, e.index)))
            .map(|e| format!("{:#x}.{}", e.function, e.index))
            .collect();
        return Err(Failure::Fail(format!(
            "KVM_GET_CPUID2 returned {} entries, {n} were set (missing: {})",
            back.as_slice().len(),
            missing.join(", ")
        )));
    }
    for (got, set) in back.as_slice()[..n].iter().zip(cpuid.as_slice()) {
        check_eq!(
            (got.function, got.index),
            (set.function, set.index),
            "leaf read back"
        );
    }
    Ok(())
}

guest_asm::guest_code!(
    cpuid_loop,
    ".code64",
    "mov r13, 0x300000",
    "2: mov eax, [r13]",
    "cmp eax, 0xffffffff",
    "je 3f",
    "xor ecx, ecx",
    "cpuid",
    "mov r8d, edx",
    "mov esi, eax",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "mov esi, r8d",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "add r13, 4",
    "jmp 2b",
    "3: mov edi, 4",
    "mov dx, 0x1000",
    "in al, dx",
    "4: hlt",
    "jmp 4b",
);

/// An edit of one CPUID entry.
type EntryChange = fn(&mut kvm_bindings::kvm_cpuid_entry2);

fn cpuid_after_run(_: &mut Diag) -> CaseResult {
    let vm = TestVm::new(cpuid_loop::code())?;
    vm.write_u64(DATA_GPA, 0xffff_ffff_0000_0000);
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    run_to_sync(&mut vcpu, &vm.mem)?;
    // KVM's current table (runtime bits included), read with exactly as many
    // entries as were set, as the kernel's cpuid_test does.
    let n = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .ctx("KVM_GET_SUPPORTED_CPUID")?
        .as_slice()
        .len();
    let cpuid = vcpu.get_cpuid2(n).ctx("KVM_GET_CPUID2")?;
    vcpu.set_cpuid2(&cpuid)
        .ctx("KVM_SET_CPUID2 of the unmodified table after KVM_RUN")?;
    let changes: [(&str, u32, EntryChange); 2] = [
        ("the processor signature (leaf 1 EAX)", 1, |e| e.eax ^= 0x10),
        ("MAXPHYADDR (leaf 0x80000008 EAX[7:0])", 0x8000_0008, |e| {
            e.eax = (e.eax & !0xff) | ((e.eax & 0xff) - 1)
        }),
    ];
    for (what, leaf, change) in changes {
        let mut changed = cpuid.clone();
        let Some(e) = changed
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == leaf)
        else {
            return Err(Failure::Skip(format!(
                "KVM does not report CPUID leaf {leaf:#x}"
            )));
        };
        change(e);
        expect_errno(
            vcpu.set_cpuid2(&changed),
            libc::EINVAL,
            &format!("KVM_SET_CPUID2 changing {what} after KVM_RUN"),
        )?;
    }
    Ok(())
}

fn guest_cpuid(_: &mut Diag) -> CaseResult {
    let vm = TestVm::new(cpuid_loop::code())?;
    let leaves = [0u32, 1, 0x8000_0000];
    for (i, l) in leaves.iter().chain(&[u32::MAX]).enumerate() {
        vm.mem
            .write_slice(
                &l.to_le_bytes(),
                vm_memory::GuestAddress(DATA_GPA + 4 * i as u64),
            )
            .map_err(|e| Failure::Fail(e.to_string()))?;
    }
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    let table = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .ctx("KVM_GET_CPUID2")?;
    for leaf in leaves {
        let [eax, ebx, ecx] = run_to_sync(&mut vcpu, &vm.mem)?;
        let [edx, _, _] = run_to_sync(&mut vcpu, &vm.mem)?;
        let e = table
            .as_slice()
            .iter()
            .find(|e| e.function == leaf && e.index == 0)
            .ok_or_else(|| Failure::Fail(format!("CPUID leaf {leaf:#x} is not in the table")))?;
        let seen = [eax as u32, ebx as u32, ecx as u32, edx as u32];
        if leaf == 1 {
            // EBX holds the APIC ID, ECX/EDX dynamic bits (OSXSAVE, APIC).
            check_eq!(seen[0], e.eax, "guest CPUID.1.EAX");
        } else {
            check!(
                seen == [e.eax, e.ebx, e.ecx, e.edx],
                "guest CPUID.{leaf:#x} {seen:#010x?}, KVM_GET_CPUID2 {:#010x?}",
                [e.eax, e.ebx, e.ecx, e.edx]
            );
        }
    }
    match run_to_ucall(&mut vcpu, &vm.mem)? {
        Ucall::Done => Ok(()),
        other => Err(Failure::Fail(format!("expected GUEST_DONE, got {other:?}"))),
    }
}
