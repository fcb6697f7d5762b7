//! `exits`: what one exit costs, as kvm-unit-tests' vmexit tests measure it.
//! Reported as TAP diagnostics; a case fails only if the guest misbehaves,
//! never on time. PIO, MMIO and HLT (no in-kernel irqchip) go out to this
//! process; CPUID stays in KVM. Figures: nanoseconds of host wall time per
//! exit and guest TSC cycles per exit (RDTSC around the loop).

use std::time::Instant;

use kvm_ioctls::VcpuExit;

use super::{Case, Diag};
use crate::check::{CaseResult, Failure, IoctlContext};
use crate::check_eq;
use crate::harness::ucall::{decode, describe};
use crate::harness::{TestVm, Ucall, CODE_GPA, DATA_GPA, UCALL_PORT};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case {
        name: "exits.pio",
        about: "round trip of an OUT to a port this process handles (benchmark)",
        run: pio,
    },
    Case {
        name: "exits.mmio",
        about: "round trip of a write to an unbacked address (benchmark)",
        run: mmio,
    },
    Case {
        name: "exits.cpuid",
        about: "CPUID handled inside KVM (benchmark)",
        run: cpuid,
    },
    Case {
        name: "exits.hlt",
        about: "HLT without an in-kernel irqchip, to this process and back (benchmark)",
        run: hlt,
    },
];

const ITERATIONS: u64 = 2000;
const BENCH_PORT: u16 = 0x1001;
const BENCH_MMIO: u64 = 0xd000_0000;

/// Each guest: R12 = iterations from DATA_GPA, TSC before and after the
/// loop, cycles reported with GUEST_SYNC.
macro_rules! bench_guest {
    ($name:ident, $($body:literal),+) => {
        guest_asm::guest_code!(
            $name,
            ".code64",
            "mov r12, [0x300000]",
            "mov r13, 0xd0000000",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov r14, rax",
            "2:",
            $($body,)+
            "dec r12",
            "jnz 2b",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "sub rax, r14",
            "mov rsi, rax",
            "mov edi, 1",
            "mov dx, 0x1000",
            "in al, dx",
            "3: jmp 3b",
        );
    };
}

bench_guest!(pio_loop, "mov dx, 0x1001", "out dx, al");
bench_guest!(mmio_loop, "mov [r13], eax");
bench_guest!(cpuid_bench, "xor eax, eax", "cpuid");
bench_guest!(hlt_loop, "hlt");

/// Which exits the host expects on the way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Pio,
    Mmio,
    Hlt,
    None,
}

fn bench(diag: &mut Diag, code: &[u8], expect: Expect, what: &str) -> CaseResult {
    let vm = TestVm::new(code)?;
    vm.write_u64(DATA_GPA, ITERATIONS);
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let mut seen = 0u64;
    let start = Instant::now();
    let cycles = loop {
        match vcpu.run().ctx("KVM_RUN")? {
            VcpuExit::IoOut(BENCH_PORT, _) if expect == Expect::Pio => seen += 1,
            VcpuExit::MmioWrite(BENCH_MMIO, _) if expect == Expect::Mmio => seen += 1,
            VcpuExit::Hlt if expect == Expect::Hlt => seen += 1,
            VcpuExit::IoIn(UCALL_PORT, data) => {
                data.fill(0);
                match decode(&vcpu, &vm.mem)? {
                    Ucall::Sync([c, _, _]) => break c,
                    other => {
                        return Err(Failure::Fail(format!("expected GUEST_SYNC, got {other:?}")))
                    }
                }
            }
            other => {
                return Err(Failure::Fail(format!(
                    "{what}: unexpected {} after {seen} exits",
                    describe(&other)
                )))
            }
        }
    };
    let wall = start.elapsed();
    if expect != Expect::None {
        check_eq!(seen, ITERATIONS, "{what}: exits seen by the host");
    }
    let ns = wall.as_nanos() as f64 / ITERATIONS as f64;
    let per = cycles as f64 / ITERATIONS as f64;
    let tsc_ns = tsc_khz.map_or(String::new(), |k| {
        format!(" = {:.0} ns at {} MHz", per * 1e6 / f64::from(k), k / 1000)
    });
    diag.note(format!(
        "{what}: {ITERATIONS} exits, {ns:.0} ns each (host wall), {per:.0} guest TSC cycles each{tsc_ns}"
    ));
    Ok(())
}

fn pio(diag: &mut Diag) -> CaseResult {
    bench(diag, pio_loop::code(), Expect::Pio, "PIO")
}

fn mmio(diag: &mut Diag) -> CaseResult {
    bench(diag, mmio_loop::code(), Expect::Mmio, "MMIO")
}

fn cpuid(diag: &mut Diag) -> CaseResult {
    bench(diag, cpuid_bench::code(), Expect::None, "CPUID")
}

fn hlt(diag: &mut Diag) -> CaseResult {
    bench(diag, hlt_loop::code(), Expect::Hlt, "HLT")
}
