//! One thread per vCPU: KVM_RUN, dispatch PIO/MMIO exits to the buses, report
//! guest shutdown and crashes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::coalesced_io::CoalescedRing;
use crate::events::EventMonitor;
use crate::exit::{ExitReason, ExitSignal};

/// Signal used to kick a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only job is to make
/// KVM_RUN return EINTR.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), noop_handler) {
            log::error!("cannot install the vCPU kick signal handler: {e}");
        }
    });
}

/// What a vCPU thread needs.
pub struct VcpuContext {
    /// Index (= APIC ID).
    pub id: u8,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where to report why the VM stops.
    pub exit: Arc<ExitSignal>,
    /// Set by the VMM to stop all vCPUs.
    pub stop: Arc<AtomicBool>,
    /// Optional event log.
    pub events: Option<Arc<EventMonitor>>,
    /// Port writes KVM queued without exiting, replayed before each exit
    /// is handled (and before the thread stops) so devices see them first.
    pub coalesced: Option<Arc<CoalescedRing>>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<VcpuFd>,
    done: Arc<AtomicBool>,
}

/// Starts `vcpu` on its own thread.
pub fn spawn(vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<VcpuHandle> {
    install_kick_handler();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{}", ctx.id))
        .spawn(move || {
            crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Vcpu);
            let vcpu = run(vcpu, &ctx);
            done2.store(true, Ordering::Release);
            vcpu
        })?;
    Ok(VcpuHandle { thread, done })
}

/// Stops every vCPU: the stop flag is already set by the caller; kick each
/// thread until it has left KVM_RUN, then join. Kicks repeat because a signal
/// that lands between the flag check and KVM_RUN would otherwise be lost.
/// Returns the vCPUs whose threads ended normally, in order.
pub fn stop_all(handles: Vec<VcpuHandle>) -> Vec<VcpuFd> {
    loop {
        let mut running = 0;
        for h in &handles {
            if !h.done.load(Ordering::Acquire) {
                running += 1;
                let _ = h.thread.kill(kick_signal());
            }
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    handles
        .into_iter()
        .filter_map(|h| h.thread.join().ok())
        .collect()
}

/// Completes an exit the vCPU thread handled but KVM has not consumed yet
/// (an MMIO read's data goes into the register, the PC moves past the
/// access) without running guest code: KVM_RUN with `immediate_exit`.
/// A snapshot taken before this would replay or lose the access.
pub fn complete_pending_exit(vcpu: &mut VcpuFd) {
    vcpu.set_kvm_immediate_exit(1);
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        Err(e) => log::warn!("completing the last exit: KVM_RUN: {e}"),
        Ok(exit) => log::warn!("completing the last exit: KVM_RUN returned {exit:?}"),
    }
    vcpu.set_kvm_immediate_exit(0);
}

fn crash(ctx: &VcpuContext, vcpu: &VcpuFd, what: &str) {
    let regs = crate::platform::describe_registers(vcpu);
    ctx.exit.set(ExitReason::Crash(format!(
        "vCPU {}: {what}\n{regs}",
        ctx.id
    )));
}

fn internal_error(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, for
    // which KVM fills the `internal` member of the exit union.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal.data[..n]
        .iter()
        .map(|d| format!("{d:#x}"))
        .collect();
    let kind = match internal.suberror {
        1 => "emulation failure",
        2 => "simultaneous exception",
        3 => "delivery event",
        _ => "unknown",
    };
    format!(
        "KVM internal error, suberror {} ({kind}), data [{}]",
        internal.suberror,
        data.join(", ")
    )
}

fn run(mut vcpu: VcpuFd, ctx: &VcpuContext) -> VcpuFd {
    let mut first = true;
    while !ctx.stop.load(Ordering::Acquire) {
        if first {
            first = false;
            if let Some(ev) = &ctx.events {
                ev.emit(
                    "vcpu",
                    "first-run",
                    Some(serde_json::json!({ "id": ctx.id })),
                );
            }
        }
        let result = vcpu.run();
        if let Some(ring) = &ctx.coalesced {
            ring.replay(&ctx.pio, &ctx.mmio);
        }
        match result {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !ctx.pio.write(u64::from(port), data) {
                    log::trace!("unhandled port write {port:#x} {data:x?}");
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(u64::from(port), data) {
                    log::trace!("unhandled port read {port:#x}");
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) {
                    devices::warn_ratelimited!(
                        "vCPU {}: write to unmapped MMIO {addr:#x} ignored",
                        ctx.id
                    );
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    devices::warn_ratelimited!(
                        "vCPU {}: read from unmapped MMIO {addr:#x} returns all ones",
                        ctx.id
                    );
                }
            }
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::Shutdown) => {
                crash(ctx, &vcpu, "triple fault (KVM_EXIT_SHUTDOWN)");
                break;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                crash(ctx, &vcpu, &format!("VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}, cpu {cpu})"));
                break;
            }
            Ok(VcpuExit::InternalError) => {
                let msg = internal_error(&mut vcpu);
                crash(ctx, &vcpu, &msg);
                break;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ctx.exit.set(ExitReason::PowerOff),
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ctx.exit.set(ExitReason::Reset),
                    other => crash(
                        ctx,
                        &vcpu,
                        &format!("system event {other} (KVM_EXIT_SYSTEM_EVENT)"),
                    ),
                }
                break;
            }
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                crash(ctx, &vcpu, &what);
                break;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) if cfg!(target_arch = "aarch64") && e.errno() == libc::ENOSYS => {
                crash(ctx, &vcpu, "KVM_RUN failed with ENOSYS: the guest accessed MMIO with an instruction KVM cannot emulate (no valid syndrome: a load/store pair or a writeback addressing mode)");
                break;
            }
            Err(e) => {
                crash(ctx, &vcpu, &format!("KVM_RUN failed: {e}"));
                break;
            }
        }
    }
    vcpu
}
