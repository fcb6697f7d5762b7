//! Live migration between two VMs in one process, over a Unix socket, with a
//! tiny guest that keeps writing memory while it is migrated (on the host's
//! /dev/kvm; without one the tests print why and pass vacuously, and CI
//! sets CARAVEL_REQUIRE_KVM=1 to make that a failure).
#![cfg(target_arch = "x86_64")]

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm::config::{BalloonConfig, Payload, RawPayload, VmConfig};
use vmm::migration::receive::{receive, Received};
use vmm::migration::send::{SendOptions, Session};
use vmm::migration::{Conn, Endpoint, Listener};
use vmm::{ExitReason, Vm};

const CODE_ADDR: u64 = 0x10_0000;
const COUNTER: u64 = 0x20_0000;
/// Set by the guest when memory does not hold what it stored.
const LOST: u64 = 0x20_1000;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A guest that counts in memory and checks it: each step loads the value
/// at `COUNTER`, compares it with the count it last stored (kept in R8),
/// and stores the next one; on a mismatch it sets `LOST` and stops. A
/// destination whose memory missed a page written during pre-copy, while
/// its registers came with the state, trips the check at once.
fn counting_config() -> VmConfig {
    guest_asm::guest_code!(
        count_on,
        ".code64",
        "mov rdi, 0x200000",
        "xor r8, r8",
        "2: mov rax, [rdi]",
        "cmp rax, r8",
        "jne 3f",
        "inc rax",
        "mov [rdi], rax",
        "mov r8, rax",
        "jmp 2b",
        "3: mov qword ptr [rdi + 0x1000], 1",
        "4: jmp 4b"
    );
    let mut c = VmConfig::new(Payload::Raw(RawPayload {
        segments: vec![(CODE_ADDR, count_on::code().to_vec())],
        entry: CODE_ADDR,
    }));
    c.memory.size = 64 << 20;
    c
}

fn counter(mem: &impl Bytes<GuestAddress, E = vm_memory::GuestMemoryError>) -> u64 {
    mem.read_obj::<u64>(GuestAddress(COUNTER)).unwrap()
}

fn socket(name: &str) -> Endpoint {
    Endpoint::Unix(std::env::temp_dir().join(format!(
        "caravel-migtest-{name}-{}.sock",
        std::process::id()
    )))
}

fn no_progress(_: &api::types::MigrationInfo) {}

fn opts(to: Endpoint) -> SendOptions {
    SendOptions {
        to,
        local: false,
        downtime: Duration::from_millis(300),
        max_iterations: 5,
    }
}

/// A destination on `at` for a VM of `cfg`, receiving in a thread.
fn destination(at: &Endpoint, cfg: &VmConfig) -> std::thread::JoinHandle<Received> {
    let listener = Listener::bind(at).unwrap();
    let host = cfg.clone();
    std::thread::spawn(move || -> Received {
        let mut conn = listener.accept(None).unwrap().unwrap();
        let conn_unix = conn.unix().map(|u| u.try_clone().unwrap());
        let mut make_vm = |cfg: &VmConfig, ram: vmm::memory::GuestRam| {
            Vm::new_for_migration(cfg, Box::new(std::io::sink()), None, ram)
        };
        let mut fds = |n| vmm::migration::recv_fds(conn_unix.as_ref().unwrap(), n);
        receive(&mut conn, &host, &mut make_vm, &mut fds, &no_progress).unwrap()
    })
}

/// Starts the counting guest of `cfg`, migrates it with `opts` once it has
/// counted a while, and returns its last count on the source, the
/// source's figures and what the destination received.
fn migrate_counting_guest(
    cfg: &VmConfig,
    opts: SendOptions,
) -> (u64, api::types::MigrationInfo, Received) {
    let dest = destination(&opts.to, cfg);
    let source = Vm::new(cfg, Box::new(std::io::sink()), None, None)
        .unwrap()
        .start()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while counter(source.vm().memory()) < 10_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut session = Session::start(source.vm(), cfg, opts, &no_progress).unwrap();
    session.precopy(source.vm(), &no_progress).unwrap();
    let paused_at = Instant::now();
    let paused = source.pause();
    let last = counter(paused.memory());
    let info = session.finish(&paused, paused_at, &no_progress).unwrap();
    drop(paused);
    (last, info, dest.join().unwrap())
}

/// The moved guest counts on past `last` with its own check never tripped.
fn counts_on(got: Received, last: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while counter(got.vm.vm().memory()) <= last && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(counter(got.vm.vm().memory()) > last, "the guest counts on");
    let lost = got
        .vm
        .vm()
        .memory()
        .read_obj::<u64>(GuestAddress(LOST))
        .unwrap();
    assert_eq!(lost, 0, "the guest found its memory behind its registers");
    got.vm.request_exit(ExitReason::Shutdown);
    assert_eq!(got.vm.stop(), ExitReason::Shutdown);
}

/// The guest counts while its memory is copied; it is paused, the last
/// dirty pages and the state follow, and the destination's VM counts on
/// from where the source stopped, its own check never tripped: the page
/// written during pre-copy came again through KVM's dirty log.
#[test]
fn a_counting_guest_moves_to_a_second_vm_and_counts_on() {
    if !vmm::test_support::kvm_usable("migration") {
        return;
    }
    let (last, info, got) = migrate_counting_guest(&counting_config(), opts(socket("ok")));
    let first = counter(got.vm.vm().memory());
    assert!(
        first >= last,
        "the destination counts on from {first}, not from the source's last {last}"
    );
    assert!(info.iterations >= 1);
    assert!(info.downtime_ms.is_some());
    // Zero pages are not sent: far less than the 64 MiB of RAM went.
    assert!(
        info.memory_bytes < 8 << 20,
        "{} bytes of memory sent",
        info.memory_bytes
    );
    counts_on(got, last);
}

/// The balloon moves with the VM: the destination (whose own command line
/// has none) builds it from the source's configuration and takes the size
/// the source had been resized to, not the one it started with.
#[test]
fn the_balloon_moves_with_the_size_it_was_given() {
    if !vmm::test_support::kvm_usable("migration") {
        return;
    }
    let mut cfg = counting_config();
    cfg.balloon = Some(BalloonConfig {
        size: 8 << 20,
        deflate_on_oom: true,
        free_page_reporting: true,
        stats_interval: 1,
    });
    let o = opts(socket("balloon"));
    let dest = destination(&o.to, &counting_config());
    let source = Vm::new(&cfg, Box::new(std::io::sink()), None, None)
        .unwrap()
        .start()
        .unwrap();
    source.vm().balloon().unwrap().set_target(12 << 20).unwrap();
    let mut session = Session::start(source.vm(), &cfg, o, &no_progress).unwrap();
    session.precopy(source.vm(), &no_progress).unwrap();
    let paused_at = Instant::now();
    let paused = source.pause();
    let last = counter(paused.memory());
    session.finish(&paused, paused_at, &no_progress).unwrap();
    drop(paused);
    let got = dest.join().unwrap();
    let b = got
        .vm
        .vm()
        .balloon()
        .expect("the destination has the balloon")
        .info();
    assert_eq!(b.target, 12 << 20, "the size it was resized to");
    assert!(b.options.deflate_on_oom && b.options.free_page_reporting);
    assert_eq!(b.options.stats_interval, Duration::from_secs(1));
    counts_on(got, last);
}

/// With `local`, guest memory (a memfd with `shared=on`) is handed over as
/// a file descriptor: nothing is copied, and the destination's guest counts
/// on in the very same memory.
#[test]
fn a_local_migration_hands_shared_memory_over_without_copying() {
    if !vmm::test_support::kvm_usable("migration") {
        return;
    }
    let mut cfg = counting_config();
    cfg.memory.shared = true;
    let local = SendOptions {
        local: true,
        ..opts(socket("local"))
    };
    let (last, info, got) = migrate_counting_guest(&cfg, local);
    assert_eq!(info.memory_bytes, 0, "no memory was copied");
    assert!(counter(got.vm.vm().memory()) >= last);
    counts_on(got, last);
}

/// `local` needs memfd-backed memory and a Unix socket: refused up front
/// with the fix, nothing sent.
#[test]
fn a_local_migration_of_private_memory_or_over_tcp_is_refused() {
    if !vmm::test_support::kvm_usable("migration") {
        return;
    }
    let cfg = counting_config();
    let vm = Vm::new(&cfg, Box::new(std::io::sink()), None, None).unwrap();
    let local = |to| SendOptions {
        local: true,
        ..opts(to)
    };
    let e = Session::start(&vm, &cfg, local(socket("private")), &no_progress)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shared=on"), "{e}");
    let e = Session::start(
        &vm,
        &cfg,
        local(Endpoint::Tcp("127.0.0.1:1".into())),
        &no_progress,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("unix:/path"), "{e}");
}

/// A destination that goes away after accepting the VM's shape: pre-copy
/// fails with the reason, and the source's guest keeps counting with dirty
/// logging off again.
#[test]
fn a_cut_migration_leaves_the_source_running() {
    if !vmm::test_support::kvm_usable("migration") {
        return;
    }
    let cfg = counting_config();
    let at = socket("cut");
    let listener = Listener::bind(&at).unwrap();
    let dest = std::thread::spawn(move || {
        let mut conn: Conn = listener.accept(None).unwrap().unwrap();
        use vmm::migration::stream::{read_frame, write_json, Kind, Reply};
        for _ in 0..2 {
            read_frame(&mut conn).unwrap();
            write_json(&mut conn, Kind::Reply, &Reply { error: None }).unwrap();
        }
        // A little memory, then the destination dies.
        read_frame(&mut conn).unwrap();
    });
    let source = Vm::new(&cfg, Box::new(std::io::sink()), None, None)
        .unwrap()
        .start()
        .unwrap();
    let session = Session::start(source.vm(), &cfg, opts(at), &no_progress);
    let mut session = session.unwrap();
    let err = session.precopy(source.vm(), &no_progress).unwrap_err();
    let info = session.abandon(source.vm(), &err, &no_progress);
    dest.join().unwrap();
    assert_eq!(info.phase, api::types::MigrationPhase::Failed);
    assert!(info.error.unwrap().starts_with("migration: "));
    let before = counter(source.vm().memory());
    let deadline = Instant::now() + TIMEOUT;
    while counter(source.vm().memory()) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        counter(source.vm().memory()) > before,
        "the source guest runs"
    );
    source.request_exit(ExitReason::Shutdown);
    assert_eq!(source.stop(), ExitReason::Shutdown);
}

/// A VM is refused before anything is sent when the destination does not
/// take the stream (here: nobody listens).
#[test]
fn no_destination_is_a_clear_error() {
    if !vmm::test_support::kvm_usable("migration") {
        return;
    }
    let cfg = counting_config();
    let vm = Vm::new(&cfg, Box::new(std::io::sink()), None, None).unwrap();
    let err = Session::start(&vm, &cfg, opts(socket("nobody")), &no_progress)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("migration: cannot connect to the destination"),
        "{err}"
    );
}
