//! `resets`: the s390 resets test's idea on x86. KVM has no reset ioctl on
//! x86; RESET happens at vCPU creation and INIT arrives through the
//! in-kernel LAPIC. The state after each is compared field by field with
//! the architectural tables (SDM Vol. 3 Table 10-1, with KVM's documented
//! choices noted), read through three paths that must agree: the GET
//! ioctls, `kvm_run->s.regs`, and the guest's own view reported by ucall.

use std::sync::mpsc;
use std::time::Duration;

use kvm_bindings::{
    kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
};
use vm_memory::{Bytes, GuestAddress};

use super::{Case, Diag};
use crate::check::{check_same, CaseResult, Failure, IoctlContext};
use crate::harness::state::{read_msrs, sync_regs_now, MSR_APIC_BASE, MSR_EFER, MSR_PAT};
use crate::harness::ucall::run_to_sync;
use crate::harness::{run_to_ucall, TestVm, Ucall, CODE_GPA};
use crate::{check, check_eq};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case { name: "resets.power_on_bsp", about: "vCPU 0 after creation: RESET state, RUNNABLE, BSP APIC base; three paths agree", run: power_on_bsp },
    Case { name: "resets.power_on_ap", about: "vCPU 1 after creation: RESET state, UNINITIALIZED, non-BSP APIC base", run: power_on_ap },
    Case { name: "resets.init_sipi_clears", about: "INIT+SIPI from the BSP: GPRs, CRs, EFER, DRs reset; CS from the vector; three paths agree", run: init_sipi_clears },
    Case { name: "resets.init_keeps", about: "INIT keeps x87/SSE state and IA32_APIC_BASE (KVM zeroes only MPX state)", run: init_keeps },
];

// Real-mode code at the reset vector's jump target: reports EDX, CR0 and
// EFLAGS as found, then CR4, EFER and CR3.
guest_asm::guest_code!(
    reset_view,
    ".code16",
    "mov esi, edx",
    "mov ebx, cr0",
    "pushfd",
    "pop ecx",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "mov ecx, 0xc0000080",
    "rdmsr",
    "mov ebx, eax",
    "mov esi, cr4",
    "mov ecx, cr3",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "2: hlt",
    "jmp 2b",
);

// The BSP: INIT then SIPI (vector 0x10: CS 0x1000, RIP 0) to APIC ID 1.
guest_asm::guest_code!(
    init_sipi_bsp,
    ".code64",
    "mov rdi, 0xfee00000",
    "mov eax, 0x01000000",
    "mov [rdi + 0x310], eax",
    "mov eax, 0x00004500",
    "mov [rdi + 0x300], eax",
    "mov eax, 0x00004610",
    "mov [rdi + 0x300], eax",
    "mov edi, 4",
    "mov dx, 0x1000",
    "in al, dx",
    "2: hlt",
    "jmp 2b",
);

// The AP after SIPI, in real mode at 0x10000: reports EDX and EAX as found
// and CR0, then the x87 control word.
guest_asm::guest_code!(
    init_sipi_ap,
    ".code16",
    "mov esi, edx",
    "mov ebx, cr0",
    "mov ecx, eax",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "fnstcw word ptr [0x2000]",
    "movzx esi, word ptr [0x2000]",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "2: hlt",
    "jmp 2b",
);

const RESET_CR0: u64 = 0x6000_0010;
const DR6_RESET: u64 = 0xffff_0ff0;
const DR7_RESET: u64 = 0x400;
const PAT_RESET: u64 = 0x0007_0406_0007_0406;
const APIC_BASE_BSP: u64 = 0xfee0_0900;
const APIC_BASE_AP: u64 = 0xfee0_0800;
/// RDX at RESET without a CPUID table: KVM's fallback signature.
const RESET_RDX_NO_CPUID: u64 = 0x600;
const AP_VECTOR: u64 = 0x10;
const AP_CODE: u64 = AP_VECTOR << 12;
const RESET_SLOT_GPA: u64 = 0xffff_0000;
const STUB_OFFSET: u64 = 0xe000;

fn check_seg(s: &kvm_segment, name: &str, selector: u16, base: u64, code: bool) -> CaseResult {
    check_eq!(s.selector, selector, "{name}.selector");
    check_eq!(s.base, base, "{name}.base");
    check_eq!(s.limit, 0xffffu32, "{name}.limit");
    check_eq!(s.present, 1u8, "{name}.present");
    if code {
        // Code, readable (VMX also sets Accessed, SVM does not).
        check_eq!(s.type_ & 0xa, 0xau8, "{name}.type code|read bits");
    }
    Ok(())
}

/// Architectural RESET/INIT values common to both (CS aside).
fn check_reset_common(regs: &kvm_regs, sregs: &kvm_sregs, rdx: u64, what: &str) -> CaseResult {
    let gprs = [
        ("rax", regs.rax),
        ("rbx", regs.rbx),
        ("rcx", regs.rcx),
        ("rsi", regs.rsi),
        ("rdi", regs.rdi),
        ("rsp", regs.rsp),
        ("rbp", regs.rbp),
        ("r8", regs.r8),
        ("r9", regs.r9),
        ("r10", regs.r10),
        ("r11", regs.r11),
        ("r12", regs.r12),
        ("r13", regs.r13),
        ("r14", regs.r14),
        ("r15", regs.r15),
    ];
    for (name, v) in gprs {
        check_eq!(v, 0u64, "{what}: {name}");
    }
    check_eq!(regs.rdx, rdx, "{what}: rdx (processor signature)");
    check_eq!(regs.rflags, 2u64, "{what}: rflags");
    check_eq!(sregs.cr0, RESET_CR0, "{what}: cr0");
    check_eq!(sregs.cr2, 0u64, "{what}: cr2");
    check_eq!(sregs.cr3, 0u64, "{what}: cr3");
    check_eq!(sregs.cr4, 0u64, "{what}: cr4");
    check_eq!(sregs.efer, 0u64, "{what}: efer");
    for (name, s) in [
        ("ds", &sregs.ds),
        ("es", &sregs.es),
        ("fs", &sregs.fs),
        ("gs", &sregs.gs),
        ("ss", &sregs.ss),
    ] {
        check_seg(s, &format!("{what}: {name}"), 0, 0, false)?;
    }
    check_eq!(
        (sregs.gdt.base, sregs.gdt.limit),
        (0u64, 0xffffu16),
        "{what}: gdtr base, limit"
    );
    check_eq!(
        (sregs.idt.base, sregs.idt.limit),
        (0u64, 0xffffu16),
        "{what}: idtr base, limit"
    );
    check_eq!(
        (sregs.ldt.selector, sregs.ldt.limit),
        (0u16, 0xffffu32),
        "{what}: ldtr selector, limit"
    );
    check_eq!(
        (sregs.tr.selector, sregs.tr.limit),
        (0u16, 0xffffu32),
        "{what}: tr selector, limit"
    );
    Ok(())
}

/// x87/SSE at RESET as KVM sets it up (FINIT values: FCW 0x37f, where the
/// SDM's power-up column says 0x40; MXCSR 0x1f80; registers zero).
/// x87/SSE at RESET as KVM sets it up (FINIT values: FCW 0x37f, where the
/// SDM's power-up column says 0x40; MXCSR 0x1f80; registers zero). MXCSR is
/// read through KVM_GET_XSAVE: KVM_GET_FPU leaves its `mxcsr` field 0.
fn check_fpu_reset(fpu: &kvm_fpu, mxcsr: u32, what: &str) -> CaseResult {
    check_eq!(fpu.fcw, 0x37fu16, "{what}: x87 FCW");
    check_eq!(fpu.fsw, 0u16, "{what}: x87 FSW");
    check_eq!(mxcsr, 0x1f80u32, "{what}: MXCSR (KVM_GET_XSAVE)");
    check!(
        fpu.xmm.iter().all(|x| x.iter().all(|&b| b == 0)),
        "{what}: XMM registers are not zero"
    );
    Ok(())
}

fn power_on(id: u64) -> CaseResult {
    let mut vm = TestVm::new(&[])?.with_irqchip()?;
    let bsp = id == 0;
    // The BSP runs from the reset vector: a jump to the reporting stub.
    let (_, rom) = vm.add_slot(RESET_SLOT_GPA, 0x1_0000, 0)?;
    let jmp_rel = (STUB_OFFSET as i64 - 0xfff3) as i16;
    let mut reset_vector = [0xe9u8, 0, 0];
    reset_vector[1..].copy_from_slice(&jmp_rel.to_le_bytes());
    rom.write_bytes(0xfff0, &reset_vector);
    rom.write_bytes(STUB_OFFSET as usize, reset_view::code());
    let mut vcpus = Vec::new();
    for i in 0..=id {
        vcpus.push(vm.vm.create_vcpu(i).ctx("KVM_CREATE_VCPU")?);
    }
    let mut vcpu = vcpus.pop().expect("created");
    let what = format!("vCPU {id} after creation");
    let regs = vcpu.get_regs().ctx("KVM_GET_REGS")?;
    let sregs = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
    check_reset_common(&regs, &sregs, RESET_RDX_NO_CPUID, &what)?;
    check_eq!(regs.rip, 0xfff0u64, "{what}: rip");
    check_seg(&sregs.cs, &format!("{what}: cs"), 0xf000, 0xffff_0000, true)?;
    let dr = vcpu.get_debug_regs().ctx("KVM_GET_DEBUGREGS")?;
    check_eq!((dr.dr6, dr.dr7), (DR6_RESET, DR7_RESET), "{what}: dr6, dr7");
    let apic_base = if bsp { APIC_BASE_BSP } else { APIC_BASE_AP };
    check_eq!(
        sregs.apic_base,
        apic_base,
        "{what}: apic_base (KVM_GET_SREGS)"
    );
    let msrs = read_msrs(&vcpu, &[MSR_EFER, MSR_APIC_BASE, MSR_PAT])?;
    check_eq!(
        msrs[0],
        sregs.efer,
        "{what}: IA32_EFER (KVM_GET_MSRS) against KVM_GET_SREGS"
    );
    check_eq!(msrs[1], apic_base, "{what}: IA32_APIC_BASE (KVM_GET_MSRS)");
    check_eq!(msrs[2], PAT_RESET, "{what}: IA32_PAT");
    let mp = vcpu.get_mp_state().ctx("KVM_GET_MP_STATE")?.mp_state;
    let want_mp = if bsp {
        KVM_MP_STATE_RUNNABLE
    } else {
        KVM_MP_STATE_UNINITIALIZED
    };
    check_eq!(mp, want_mp, "{what}: mp_state");
    // Path two: kvm_run->s.regs.
    let (sr, ss) = sync_regs_now(&mut vcpu)?;
    check_same(&regs, &sr, "KVM_GET_REGS and s.regs.regs at RESET")?;
    check_same(&sregs, &ss, "KVM_GET_SREGS and s.regs.sregs at RESET")?;
    let fpu = check_fpu_reset(&vcpu.get_fpu().ctx("KVM_GET_FPU")?, mxcsr(&vcpu)?, &what);
    if !bsp {
        return fpu;
    }
    // Path three: the guest's own view, from the reset vector.
    let [edx, cr0, eflags] = run_to_sync(&mut vcpu, &vm.mem)?;
    check_eq!(edx, RESET_RDX_NO_CPUID, "guest view at RESET: EDX");
    check_eq!(cr0, RESET_CR0, "guest view at RESET: CR0");
    check_eq!(eflags & 0xffff, 2u64, "guest view at RESET: FLAGS");
    let [cr4, efer, cr3] = run_to_sync(&mut vcpu, &vm.mem)?;
    check_eq!(
        (cr4, efer, cr3),
        (0u64, 0u64, 0u64),
        "guest view at RESET: CR4, EFER, CR3"
    );
    fpu
}

fn power_on_bsp(_: &mut Diag) -> CaseResult {
    power_on(0)
}

fn power_on_ap(_: &mut Diag) -> CaseResult {
    power_on(1)
}

/// MXCSR from KVM_GET_XSAVE (bytes 24..28 of the legacy area).
fn mxcsr(vcpu: &kvm_ioctls::VcpuFd) -> Result<u32, Failure> {
    Ok(vcpu.get_xsave().ctx("KVM_GET_XSAVE")?.region[6])
}

/// What the AP looked like at its first ucall after INIT+SIPI.
struct ApView {
    regs: kvm_regs,
    sregs: kvm_sregs,
    sync: (kvm_regs, kvm_sregs),
    fpu: kvm_fpu,
    mxcsr: u32,
    dr: (u64, u64),
    apic_base: u64,
    mp_state: u32,
    guest: [u64; 3],
    guest_fcw: u64,
    signature: u64,
}

const DIRTY_FCW: u16 = 0x27f;
const DIRTY_MXCSR: u32 = 0x9f80;
const DIRTY_XMM0: [u8; 16] = [0xa5; 16];

/// Dirties the AP, lets the BSP send INIT+SIPI, and captures the AP.
fn init_sipi() -> Result<ApView, Failure> {
    let vm = TestVm::new(init_sipi_bsp::code())?.with_irqchip()?;
    vm.mem
        .write_slice(init_sipi_ap::code(), GuestAddress(AP_CODE))
        .map_err(|e| Failure::Fail(e.to_string()))?;
    let mut bsp = vm.long_mode_vcpu(0, CODE_GPA)?;
    let mut ap = vm.vm.create_vcpu(1).ctx("KVM_CREATE_VCPU 1")?;
    let cpuid = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .ctx("KVM_GET_SUPPORTED_CPUID")?;
    let signature = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .map_or(RESET_RDX_NO_CPUID, |e| u64::from(e.eax));
    ap.set_cpuid2(&cpuid).ctx("KVM_SET_CPUID2")?;
    // Dirty everything INIT must clear, and the state it must keep.
    let regs = kvm_regs {
        rax: 0x1111,
        rbx: 0x2222,
        rcx: 0x3333,
        rdx: 0x4444,
        rsi: 0x5555,
        rdi: 0x6666,
        rsp: 0x7770,
        rbp: 0x8880,
        r8: 8,
        r9: 9,
        r10: 10,
        r11: 11,
        r12: 12,
        r13: 13,
        r14: 14,
        r15: 15,
        rip: 0x1234,
        rflags: 0x202,
    };
    ap.set_regs(&regs).ctx("KVM_SET_REGS (dirtying the AP)")?;
    let mut sregs = ap.get_sregs().ctx("KVM_GET_SREGS")?;
    sregs.cr2 = 0xdead_0000;
    sregs.cr4 = 0x20;
    ap.set_sregs(&sregs)
        .ctx("KVM_SET_SREGS (dirtying the AP)")?;
    // x87/SSE through KVM_SET_XSAVE with both components marked in use:
    // KVM_SET_FPU writes only the legacy area, and a vCPU whose XSAVE header
    // says "init state" loses those values at its first run (seen on 6.1).
    let mut xs = ap.get_xsave().ctx("KVM_GET_XSAVE")?;
    xs.region[0] = (xs.region[0] & 0xffff_0000) | u32::from(DIRTY_FCW);
    xs.region[6] = DIRTY_MXCSR;
    for (i, w) in DIRTY_XMM0.chunks(4).enumerate() {
        xs.region[40 + i] = u32::from_le_bytes(w.try_into().expect("4 bytes"));
    }
    xs.region[128] |= 3; // XSTATE_BV: x87 | SSE
                         // SAFETY: this process enables no dynamic XSTATE features, so KVM copies
                         // at most the 4096 bytes of `kvm_xsave`.
    unsafe { ap.set_xsave(&xs) }.ctx("KVM_SET_XSAVE (dirtying the AP)")?;
    let fpu = ap.get_fpu().ctx("KVM_GET_FPU")?;
    check_eq!(
        (fpu.fcw, mxcsr(&ap)?),
        (DIRTY_FCW, DIRTY_MXCSR),
        "x87 FCW, MXCSR read back before INIT"
    );
    let mut dr = ap.get_debug_regs().ctx("KVM_GET_DEBUGREGS")?;
    dr.dr7 = 0x401;
    ap.set_debug_regs(&dr)
        .ctx("KVM_SET_DEBUGREGS (dirtying the AP)")?;

    // As VMMs do before the first KVM_RUN (Caravel sets LINT0/LINT1 here).
    // The PVM backend delivers no INIT to an AP whose LAPIC was never set.
    for v in [&bsp, &ap] {
        let lapic = v.get_lapic().ctx("KVM_GET_LAPIC")?;
        v.set_lapic(&lapic).ctx("KVM_SET_LAPIC")?;
    }
    let mem = vm.mem.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| {
            let guest = run_to_sync(&mut ap, &mem)?;
            // s.regs first: that KVM_RUN completes the pending IN, so the
            // GET ioctls below see the same instant.
            let sync = sync_regs_now(&mut ap)?;
            let regs = ap.get_regs().ctx("KVM_GET_REGS")?;
            let sregs = ap.get_sregs().ctx("KVM_GET_SREGS")?;
            let fpu = ap.get_fpu().ctx("KVM_GET_FPU")?;
            let mxcsr = mxcsr(&ap)?;
            let dr = ap.get_debug_regs().ctx("KVM_GET_DEBUGREGS")?;
            let apic_base = read_msrs(&ap, &[MSR_APIC_BASE])?[0];
            let mp_state = ap.get_mp_state().ctx("KVM_GET_MP_STATE")?.mp_state;
            let [guest_fcw, _, _] = run_to_sync(&mut ap, &mem)?;
            Ok(ApView {
                regs,
                sregs,
                sync,
                fpu,
                mxcsr,
                dr: (dr.dr6, dr.dr7),
                apic_base,
                mp_state,
                guest,
                guest_fcw,
                signature,
            })
        })();
        let _ = tx.send(r);
    });
    match run_to_ucall(&mut bsp, &vm.mem)? {
        Ucall::Done => {}
        other => {
            return Err(Failure::Fail(format!(
                "BSP: expected GUEST_DONE, got {other:?}"
            )))
        }
    }
    rx.recv_timeout(Duration::from_secs(20)).map_err(|_| {
        Failure::Fail("the AP did not reach its first ucall within 20 s of INIT+SIPI".into())
    })?
}

fn init_sipi_clears(_: &mut Diag) -> CaseResult {
    let v = init_sipi()?;
    let what = "AP after INIT+SIPI";
    // At the first ucall the stub has set RSI/RBX/RCX/RDI/RDX/RAX itself.
    let mut regs = v.regs;
    (regs.rsi, regs.rbx, regs.rcx, regs.rdi, regs.rax) = (0, 0, 0, 0, 0);
    regs.rdx = v.signature;
    check_reset_common(&regs, &v.sregs, v.signature, what)?;
    check_seg(
        &v.sregs.cs,
        &format!("{what}: cs"),
        (AP_VECTOR << 8) as u16,
        AP_CODE,
        true,
    )?;
    check_eq!(v.dr, (DR6_RESET, DR7_RESET), "{what}: dr6, dr7");
    check_eq!(v.mp_state, KVM_MP_STATE_RUNNABLE, "{what}: mp_state");
    // Three paths.
    check_same(
        &v.regs,
        &v.sync.0,
        "KVM_GET_REGS and s.regs.regs after INIT+SIPI",
    )?;
    check_same(
        &v.sregs,
        &v.sync.1,
        "KVM_GET_SREGS and s.regs.sregs after INIT+SIPI",
    )?;
    let [edx, cr0, eax] = v.guest;
    check_eq!(edx, v.signature, "guest view after INIT: EDX (CPUID.1.EAX)");
    check_eq!(eax, 0u64, "guest view after INIT: EAX (BIST result)");
    check_eq!(cr0, RESET_CR0, "guest view after INIT: CR0");
    check_eq!(cr0, v.sregs.cr0, "guest view of CR0 against KVM_GET_SREGS");
    Ok(())
}

fn init_keeps(_: &mut Diag) -> CaseResult {
    let v = init_sipi()?;
    check_eq!(v.fpu.fcw, DIRTY_FCW, "x87 FCW after INIT (KVM_GET_FPU)");
    check_eq!(
        v.guest_fcw as u16,
        DIRTY_FCW,
        "x87 FCW after INIT (guest fnstcw)"
    );
    check_eq!(v.mxcsr, DIRTY_MXCSR, "MXCSR after INIT (KVM_GET_XSAVE)");
    check_eq!(
        v.fpu.xmm[0].to_vec(),
        DIRTY_XMM0.to_vec(),
        "XMM0 after INIT"
    );
    check_eq!(v.apic_base, APIC_BASE_AP, "IA32_APIC_BASE after INIT");
    check_eq!(
        v.sregs.apic_base,
        APIC_BASE_AP,
        "apic_base (KVM_GET_SREGS) after INIT"
    );
    Ok(())
}
