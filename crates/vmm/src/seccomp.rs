//! seccomp filters, one allow-list per kind of thread (`--seccomp`).
//!
//! Every thread Caravel starts installs the filter of its kind before it
//! does its work: the VMM thread (event loop, VM creation on reboot), vCPU
//! threads, the API threads, device workers, console writers. Filters stack:
//! a thread started by the VMM thread keeps the VMM's filter and adds its
//! own, narrower one. A syscall outside the list raises SIGSYS (mode
//! `true`), whose handler names the thread and the syscall and ends the
//! process with status 1; mode `log` lets it through and has the kernel log
//! it (audit). See `docs/security.md`.
//!
//! The lists hold what Rust's standard library, glibc or musl and Caravel
//! use on each thread, including the paths that are rare (panics, thread
//! exit, allocator growth): a missing entry kills the VM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What `--seccomp` asked for (shown in `vm.info` with the flag's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SeccompMode {
    /// No filter (`--seccomp false`).
    #[serde(rename = "false")]
    Off,
    /// A forbidden syscall ends Caravel with a message (`--seccomp true`, the default).
    #[serde(rename = "true")]
    Enforce,
    /// Forbidden syscalls are allowed and logged by the kernel (`--seccomp log`).
    #[serde(rename = "log")]
    Log,
}

/// The kinds of threads, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM thread: event loop, API commands, building VMs (reboots).
    Vmm,
    /// A vCPU: KVM_RUN and the device accesses it traps to.
    Vcpu,
    /// The API server's accept thread and its connection threads.
    Api,
    /// A virtio device worker (block, console, rng, mem).
    VirtioWorker,
    /// A console output writer.
    Output,
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the mode for every thread started from now on (the `caravel`
/// binary does this once, from `--seccomp`); libraries and tests leave it
/// off.
pub fn set_mode(mode: SeccompMode) {
    MODE.store(mode as u8, Ordering::Release);
    if mode == SeccompMode::Enforce {
        install_sigsys_handler();
    }
    if mode != SeccompMode::Off {
        // Virtio workers live in the virtio crate, which knows no seccomp:
        // it calls this hook at the start of each worker thread.
        virtio::worker::set_thread_start_hook(|| apply_or_exit(ThreadKind::VirtioWorker));
    }
}

/// The mode in force.
pub fn mode() -> SeccompMode {
    match MODE.load(Ordering::Acquire) {
        1 => SeccompMode::Enforce,
        2 => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

/// Installs the filter of `kind` on the calling thread (nothing when the
/// mode is off).
pub fn apply(kind: ThreadKind) -> Result<(), String> {
    let action = match mode() {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let prog = program(kind, action)?;
    seccompiler::apply_filter(&prog).map_err(|e| format!("seccomp filter for {kind:?}: {e}"))
}

/// [`apply`] for threads that cannot report an error: a thread that cannot
/// be confined does not run unconfined; the process ends.
pub fn apply_or_exit(kind: ThreadKind) {
    if let Err(e) = apply(kind) {
        log::error!("{e}; stopping (use --seccomp false to run without a sandbox)");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The compiled filter of `kind`: forbidden syscalls get `action`.
pub fn program(kind: ThreadKind, action: SeccompAction) -> Result<BpfProgram, String> {
    let rules = rules(kind)?;
    let filter = SeccompFilter::new(rules, action, SeccompAction::Allow, ARCH)
        .map_err(|e| format!("seccomp filter for {kind:?}: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter for {kind:?}: {e}"))
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &s in syscalls {
        rules.insert(s, vec![]);
    }
}

/// ioctl only with these request numbers (arg 1, compared as 32 bits).
fn allow_ioctls(rules: &mut Rules, requests: &[u64]) -> Result<(), String> {
    let mut list = Vec::new();
    for &r in requests {
        let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, r)
            .map_err(|e| e.to_string())?;
        list.push(SeccompRule::new(vec![c]).map_err(|e| e.to_string())?);
    }
    rules.insert(libc::SYS_ioctl, list);
    Ok(())
}

/// What every thread needs: memory, locks, signals (the vCPU kick, the
/// SIGSYS handler), time, thread exit, logging, panics.
fn common() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigaction,
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_tgkill,
            libc::SYS_tkill,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_prctl,
            // A thread adds its own filter to the one it inherited.
            libc::SYS_seccomp,
            libc::SYS_restart_syscall,
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_ppoll,
            libc::SYS_lseek,
            libc::SYS_fcntl,
            // A panic's backtrace reads the binary and /proc/self/maps.
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fstat,
            libc::SYS_readlinkat,
        ],
    );
    #[cfg(target_arch = "x86_64")]
    allow(
        &mut r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_poll,
            libc::SYS_arch_prctl,
            libc::SYS_open,
            libc::SYS_stat,
            libc::SYS_readlink,
        ],
    );
    r
}

/// KVM and VFIO ioctls a vCPU thread makes: KVM_RUN, and what guest
/// accesses trigger (MSI routes, BAR moves, VFIO config and interrupts).
#[cfg(target_arch = "x86_64")]
const VCPU_ARCH_IOCTLS: &[u64] = &[
    0x8090_ae81, // KVM_GET_REGS
    0x8138_ae83, // KVM_GET_SREGS
    0xae9f,      // KVM_KVMCLOCK_CTRL
];
#[cfg(target_arch = "aarch64")]
const VCPU_ARCH_IOCTLS: &[u64] = &[
    0x4010_aeab, // KVM_GET_ONE_REG
    0x4010_aeac, // KVM_SET_ONE_REG
    0x4020_aeae, // KVM_ARM_VCPU_INIT
    0x4040_aea7, // KVM_SET_DEVICE_ATTR
    0x4040_aea8, // KVM_GET_DEVICE_ATTR
    0x4040_aea9, // KVM_HAS_DEVICE_ATTR
];

const VCPU_IOCTLS: &[u64] = &[
    0xae80,      // KVM_RUN
    0x4020_ae46, // KVM_SET_USER_MEMORY_REGION (BAR moves)
    0x4040_ae79, // KVM_IOEVENTFD
    0x4020_ae76, // KVM_IRQFD
    0x4008_ae6a, // KVM_SET_GSI_ROUTING (MSI-X table writes)
    0x4020_aea5, // KVM_SIGNAL_MSI
    0x8004_ae98, // KVM_GET_MP_STATE
    0x4004_ae99, // KVM_SET_MP_STATE
    0x3b6e,      // VFIO_DEVICE_SET_IRQS
    0x3b6f,      // VFIO_DEVICE_RESET
    0x3b71,      // VFIO_IOMMU_MAP_DMA
    0x3b72,      // VFIO_IOMMU_UNMAP_DMA
];

/// A virtio worker: block I/O, plugging memory (discards, hole punching).
const WORKER_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// virtio-vsock's worker: host connections accepted on its socket,
/// guest connections made to `<socket>_<port>`, its timeout timer.
const VSOCK_WORKER_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
    // std's UnixStream reads with recv(2) (recvfrom); writes are write(2).
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_timerfd_settime,
];

/// A virtio worker's ioctls: virtio-mem's KVM memory slots and VFIO DMA,
/// interrupt routes.
const WORKER_IOCTLS: &[u64] = &[
    0x4004_54d0, // TUNSETOFFLOAD (virtio-net activation and control queue)
    0x4020_ae46, // KVM_SET_USER_MEMORY_REGION (virtio-mem slots)
    0x4008_ae6a, // KVM_SET_GSI_ROUTING
    0x4020_aea5, // KVM_SIGNAL_MSI
    0x3b71,      // VFIO_IOMMU_MAP_DMA
    0x3b72,      // VFIO_IOMMU_UNMAP_DMA
];

fn rules(kind: ThreadKind) -> Result<Rules, String> {
    let mut r = common();
    match kind {
        ThreadKind::Vmm => {
            // Building and tearing down VMs (reboots), the event loop, API
            // commands, consoles and disks: most of the process's work.
            allow(
                &mut r,
                &[
                    libc::SYS_ioctl,
                    libc::SYS_clone,
                    libc::SYS_clone3,
                    libc::SYS_eventfd2,
                    libc::SYS_epoll_create1,
                    libc::SYS_memfd_create,
                    libc::SYS_ftruncate,
                    libc::SYS_dup,
                    libc::SYS_dup3,
                    libc::SYS_pipe2,
                    libc::SYS_flock,
                    libc::SYS_unlinkat,
                    libc::SYS_getdents64,
                    libc::SYS_connect,
                    libc::SYS_socket,
                    libc::SYS_shutdown,
                    libc::SYS_accept4,
                    libc::SYS_uname,
                    libc::SYS_prlimit64,
                    libc::SYS_getcwd,
                    libc::SYS_kill,
                    libc::SYS_wait4,
                    libc::SYS_sched_setaffinity,
                    libc::SYS_munlock,
                    libc::SYS_mlock,
                    // vm.snapshot: the directory and its files.
                    libc::SYS_mkdirat,
                    libc::SYS_renameat,
                    libc::SYS_renameat2,
                    // Live migration: listening, connecting, the stream.
                    libc::SYS_bind,
                    libc::SYS_listen,
                    libc::SYS_setsockopt,
                    libc::SYS_getsockopt,
                    libc::SYS_getsockname,
                    libc::SYS_sendto,
                    libc::SYS_recvfrom,
                    libc::SYS_sendmsg,
                    libc::SYS_recvmsg,
                ],
            );
            // Disks and virtio-mem memfds, vsock's sockets and timer, as
            // the workers use them (a worker started from here inherits
            // this filter).
            allow(&mut r, WORKER_SYSCALLS);
            allow(&mut r, VSOCK_WORKER_SYSCALLS);
            allow(&mut r, &[libc::SYS_timerfd_create]);
            #[cfg(target_arch = "x86_64")]
            allow(
                &mut r,
                &[
                    libc::SYS_unlink,
                    libc::SYS_dup2,
                    libc::SYS_pipe,
                    libc::SYS_mkdir,
                    libc::SYS_rename,
                    libc::SYS_accept,
                ],
            );
        }
        ThreadKind::Vcpu => {
            // Device accesses: disks and VFIO regions. A guest driver's
            // DRIVER_OK starts the device's worker from this thread, and
            // the worker inherits this filter: so everything a worker may
            // do is allowed here too, plus starting the thread.
            allow(
                &mut r,
                &[
                    libc::SYS_clone,
                    libc::SYS_clone3,
                    libc::SYS_epoll_create1,
                    libc::SYS_eventfd2,
                ],
            );
            allow(&mut r, WORKER_SYSCALLS);
            allow(&mut r, VSOCK_WORKER_SYSCALLS);
            let ioctls: Vec<u64> = VCPU_IOCTLS
                .iter()
                .chain(VCPU_ARCH_IOCTLS)
                .chain(WORKER_IOCTLS)
                .copied()
                .collect();
            allow_ioctls(&mut r, &ioctls)?;
        }
        ThreadKind::Api => {
            allow(
                &mut r,
                &[
                    libc::SYS_accept4,
                    libc::SYS_clone,
                    libc::SYS_clone3,
                    libc::SYS_setsockopt,
                    libc::SYS_getsockopt,
                    libc::SYS_shutdown,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_socket,
                    libc::SYS_connect,
                    // vm.counters reads KVM's statistics fds.
                    libc::SYS_pread64,
                ],
            );
            #[cfg(target_arch = "x86_64")]
            allow(&mut r, &[libc::SYS_accept]);
        }
        ThreadKind::VirtioWorker => {
            allow(&mut r, WORKER_SYSCALLS);
            allow(&mut r, VSOCK_WORKER_SYSCALLS);
            allow_ioctls(&mut r, WORKER_IOCTLS)?;
        }
        ThreadKind::Output => {}
    }
    Ok(r)
}

/// The calling thread's name, for the SIGSYS message.
fn thread_name(buf: &mut [u8; 16]) -> &[u8] {
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `buf`.
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..n]
}

/// Writes `n` in decimal into `out`, returns the digits.
fn decimal(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &out[i..]
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe calls below: write(2), prctl(2), _exit(2).
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for
    // SIGSYS from seccomp, the syscall number sits after the
    // (si_signo, si_errno, si_code) ints and the faulting address:
    // `struct { void *si_call_addr; int si_syscall; unsigned si_arch; }`.
    let nr = unsafe {
        let base = (info as *const u8).add(16);
        let call_addr = base as *const usize;
        *(call_addr.add(1) as *const i32)
    };
    let mut name = [0u8; 16];
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"caravel: seccomp: thread '",
        thread_name(&mut name),
        b"' made forbidden syscall ",
        decimal(nr as u64, &mut digits),
        b" (see docs/security.md; --seccomp log or false to investigate); exiting\n",
    ];
    for p in parts {
        // SAFETY: write(2) on stderr with a valid buffer.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process.
    unsafe { libc::_exit(1) };
}

fn install_sigsys_handler() {
    // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO; the
    // handler only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_for_this_architecture() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::VirtioWorker,
            ThreadKind::Output,
        ] {
            let p = program(kind, SeccompAction::Trap).unwrap();
            assert!(!p.is_empty(), "{kind:?}");
        }
    }

    /// In a child process: install a kind's filter, then make a syscall the
    /// list does not have; the SIGSYS handler must name thread and syscall
    /// and exit 1. Also check /proc says the thread is filtered.
    #[test]
    fn a_forbidden_syscall_ends_the_process_with_a_message() {
        if std::env::var("SECCOMP_TEST_CHILD").is_ok() {
            set_mode(SeccompMode::Enforce);
            std::thread::Builder::new()
                .name("api-conn".into())
                .spawn(|| {
                    apply(ThreadKind::Api).unwrap();
                    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                    println!(
                        "{}",
                        status.lines().find(|l| l.starts_with("Seccomp:")).unwrap()
                    );
                    // An allowed syscall works...
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    // ...and one outside the API's list (memfd_create) kills.
                    // SAFETY: memfd_create with a valid NUL-terminated name.
                    unsafe { libc::memfd_create(c"x".as_ptr(), 0) };
                    println!("not reached");
                })
                .unwrap()
                .join()
                .unwrap();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::a_forbidden_syscall_ends_the_process_with_a_message",
                "--nocapture",
            ])
            .env("SECCOMP_TEST_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("Seccomp:\t2"),
            "filter mode 2 in /proc: {stdout}"
        );
        assert!(!stdout.contains("not reached"));
        let nr = libc::SYS_memfd_create.to_string();
        assert!(
            stderr.contains(&format!("thread 'api-conn' made forbidden syscall {nr}")),
            "{stderr}"
        );
    }
}
