//! The guest-to-host call, after the selftests' x86 ucall: the guest puts
//! the command in RDI and up to three arguments in RSI, RBX and RCX, then
//! runs `in al, dx` with DX = 0x1000. (The kernel's guests pass a pointer to
//! a struct in RDI; these guests are a few lines of assembly with no memory
//! allocator, so the arguments travel in registers.)
//!
//! ```text
//! mov edi, 1          // UCALL_SYNC
//! mov rsi, rax        // arg0
//! mov dx, 0x1000
//! in al, dx
//! ```
//!
//! ABORT carries an assertion number, the value seen and the value expected;
//! PRINT carries the guest-physical address of a NUL-terminated string.

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::check::{Failure, IoctlContext};

/// The ucall I/O port.
pub const UCALL_PORT: u16 = 0x1000;
/// `UCALL_SYNC`: a checkpoint with values for the host.
pub const UCALL_SYNC: u64 = 1;
/// `UCALL_ABORT`: a guest assertion failed.
pub const UCALL_ABORT: u64 = 2;
/// `UCALL_PRINT`: a message.
pub const UCALL_PRINT: u64 = 3;
/// `UCALL_DONE`: the guest finished.
pub const UCALL_DONE: u64 = 4;
const PRINT_MAX: usize = 256;

/// A decoded ucall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ucall {
    /// GUEST_SYNC with its arguments.
    Sync([u64; 3]),
    /// GUEST_DONE.
    Done,
    /// A guest assertion: its number, the value seen, the value expected.
    Abort {
        /// Which assertion of the guest code.
        id: u64,
        /// Value seen.
        got: u64,
        /// Value expected.
        want: u64,
    },
    /// A message from the guest.
    Print(String),
}

/// Decodes the ucall the vCPU is stopped at (the `in` exit on the port).
pub fn decode(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> Result<Ucall, Failure> {
    let r = vcpu.get_regs().ctx("KVM_GET_REGS")?;
    Ok(match r.rdi {
        UCALL_SYNC => Ucall::Sync([r.rsi, r.rbx, r.rcx]),
        UCALL_DONE => Ucall::Done,
        UCALL_ABORT => Ucall::Abort {
            id: r.rsi,
            got: r.rbx,
            want: r.rcx,
        },
        UCALL_PRINT => {
            let mut buf = [0u8; PRINT_MAX];
            let _ = mem.read_slice(&mut buf, GuestAddress(r.rsi));
            let end = buf.iter().position(|&b| b == 0).unwrap_or(PRINT_MAX);
            Ucall::Print(String::from_utf8_lossy(&buf[..end]).into_owned())
        }
        other => {
            return Err(Failure::Fail(format!(
                "unknown ucall {other:#x} at RIP {:#x}",
                r.rip
            )))
        }
    })
}

/// A readable name of an exit.
pub fn describe(exit: &VcpuExit) -> String {
    match exit {
        VcpuExit::IoIn(port, d) => format!("KVM_EXIT_IO in port {port:#x} size {}", d.len()),
        VcpuExit::IoOut(port, d) => format!("KVM_EXIT_IO out port {port:#x} data {d:x?}"),
        VcpuExit::MmioRead(a, d) => format!("KVM_EXIT_MMIO read {a:#x} size {}", d.len()),
        VcpuExit::MmioWrite(a, d) => format!("KVM_EXIT_MMIO write {a:#x} data {d:x?}"),
        VcpuExit::InternalError => "KVM_EXIT_INTERNAL_ERROR".into(),
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN (triple fault)".into(),
        VcpuExit::Hlt => "KVM_EXIT_HLT".into(),
        VcpuExit::Debug(d) => format!("KVM_EXIT_DEBUG at {:#x}", d.pc),
        VcpuExit::FailEntry(reason, cpu) => {
            format!("KVM_EXIT_FAIL_ENTRY reason {reason:#x} cpu {cpu}")
        }
        other => format!("{other:?}"),
    }
}

/// Runs until the next ucall; a guest ABORT and any other exit fail the case.
pub fn run_to_ucall(vcpu: &mut VcpuFd, mem: &GuestMemoryMmap) -> Result<Ucall, Failure> {
    loop {
        let exit = match vcpu.run() {
            // A blocked AP woken by INIT/SIPI returns EAGAIN once: run again.
            Err(e) if e.errno() == libc::EAGAIN => continue,
            r => r.ctx("KVM_RUN")?,
        };
        match exit {
            VcpuExit::IoIn(UCALL_PORT, data) => {
                data.fill(0);
                let uc = decode(vcpu, mem)?;
                return match uc {
                    Ucall::Abort { id, got, want } => Err(Failure::Fail(format!(
                        "guest assertion {id} failed: got {got:#x}, expected {want:#x}"
                    ))),
                    Ucall::Print(m) => {
                        eprintln!("guest: {m}");
                        continue;
                    }
                    uc => Ok(uc),
                };
            }
            other => {
                let what = describe(&other);
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                return Err(Failure::Fail(format!(
                    "unexpected {what} at RIP {rip:#x} (waiting for a ucall)"
                )));
            }
        }
    }
}

/// Runs until the next ucall and requires a SYNC; returns its arguments.
pub fn run_to_sync(vcpu: &mut VcpuFd, mem: &GuestMemoryMmap) -> Result<[u64; 3], Failure> {
    match run_to_ucall(vcpu, mem)? {
        Ucall::Sync(args) => Ok(args),
        other => Err(Failure::Fail(format!(
            "expected a GUEST_SYNC, got {other:?}"
        ))),
    }
}
