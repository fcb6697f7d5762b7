//! Tiny assembly guests run by Caravel's VM on the host's /dev/kvm.
//!
//! Each test builds a real [`Vm`] (in-kernel irqchip, buses, COM1, i8042,
//! ACPI PM block, vCPU threads) around a few instructions and checks what the
//! host saw. Guests use general-purpose registers only. Without /dev/kvm the
//! tests print why and pass vacuously (the CI machine has /dev/kvm).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::BusDevice;
use vmm::config::{Payload, RawPayload, VmConfig};
use vmm::{ExitReason, Vm};

const CODE_ADDR: u64 = 0x10_0000;
const AP_CODE_ADDR: u64 = 0x1_0000;
const TIMEOUT: Duration = Duration::from_secs(60);

guest_asm::guest_code!(
    hello,
    ".code64",
    "mov dx, 0x3f8",
    "lea rsi, [rip + 3f]",
    "mov rcx, 6",
    "2: lodsb",
    "out dx, al",
    "loop 2b",
    "mov dx, 0x600",
    "mov al, 0x34", // SLP_EN | S5 << 2
    "out dx, al",
    "4: hlt",
    "jmp 4b",
    "3: .ascii \"hello\\n\"",
);

guest_asm::guest_code!(
    exits,
    ".code64",
    "mov dx, 0x510",
    "mov al, 0x11",
    "out dx, al",
    "mov ax, 0x2233",
    "out dx, ax",
    "mov eax, 0x44556677",
    "out dx, eax",
    "in eax, dx",
    "mov rdi, 0xd0000000",
    "mov [rdi], eax",
    "mov rbx, [rdi + 8]",
    "mov [rdi + 0x10], rbx",
    "mov rcx, 0xd8000000",
    "mov ecx, [rcx]",
    "mov [rdi + 0x20], ecx",
    "mov dx, 0x600",
    "mov al, 0x34",
    "out dx, al",
    "2: hlt",
    "jmp 2b",
);

guest_asm::guest_code!(
    smp_bsp,
    ".code64",
    "mov dx, 0x3f8",
    "mov al, 0x42", // 'B'
    "out dx, al",
    "mov rdi, 0xfee00000",
    "mov eax, 0x01000000", // destination APIC ID 1
    "mov [rdi + 0x310], eax",
    "mov eax, 0x00004500", // INIT, assert
    "mov [rdi + 0x300], eax",
    "mov eax, 0x00004610", // STARTUP, vector 0x10 -> 0x10000
    "mov [rdi + 0x300], eax",
    "2: hlt",
    "jmp 2b",
);

guest_asm::guest_code!(
    smp_ap,
    ".code16",
    "mov dx, 0x3f8",
    "mov al, 0x41", // 'A'
    "out dx, al",
    "mov dx, 0x600",
    "mov al, 0x34",
    "out dx, al",
    "2: hlt",
    "jmp 2b",
);

guest_asm::guest_code!(
    triple_fault,
    ".code64",
    "lidt [rip + 2f]",
    "ud2",
    "2: .word 0",
    ".quad 0",
);

guest_asm::guest_code!(
    i8042_reset,
    ".code64",
    "mov al, 0xfe",
    "out 0x64, al",
    "2: hlt",
    "jmp 2b"
);

guest_asm::guest_code!(
    acpi_reset,
    ".code64",
    "mov dx, 0x602",
    "mov al, 1",
    "out dx, al",
    "2: hlt",
    "jmp 2b"
);

guest_asm::guest_code!(
    pci_config,
    ".code64",
    "mov rdi, 0xd0000000",
    "mov dx, 0xcf8",
    "mov eax, 0x80000000", // 00:00.0 register 0
    "out dx, eax",
    "mov dx, 0xcfc",
    "in eax, dx",
    "mov [rdi], eax",
    "mov dx, 0xcf8",
    "mov eax, 0x8000f800", // 00:1f.0 register 0 (nothing there)
    "out dx, eax",
    "mov dx, 0xcfc",
    "in eax, dx",
    "mov [rdi + 4], eax",
    "mov dx, 0xcf8",
    "mov eax, 0x80000008", // 00:00.0 register 8, then the latch read back
    "out dx, eax",
    "in eax, dx",
    "mov [rdi + 8], eax",
    "mov dx, 0x600",
    "mov al, 0x34",
    "out dx, al",
    "2: hlt",
    "jmp 2b",
);

fn kvm_available() -> bool {
    vmm::test_support::kvm_usable("tiny guest test")
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `(offset, bytes)` of each write a [`Recorder`] saw.
type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records writes; reads return a fixed pattern.
struct Recorder {
    writes: WriteLog,
    read_value: u64,
}

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let bytes = self.read_value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
}

fn config(vcpus: u8, segments: Vec<(u64, Vec<u8>)>) -> VmConfig {
    let mut c = VmConfig::new(Payload::Raw(RawPayload {
        segments,
        entry: CODE_ADDR,
    }));
    c.cpus.boot_vcpus = vcpus;
    c.memory.size = 64 << 20;
    c
}

fn build(cfg: &VmConfig) -> (Vm, Buffer) {
    let out = Buffer::default();
    let vm = Vm::new(cfg, Box::new(out.clone()), None, None).expect("VM builds");
    (vm, out)
}

fn text(b: &Buffer) -> String {
    String::from_utf8_lossy(&b.0.lock().unwrap()).into_owned()
}

#[test]
fn serial_output_and_acpi_poweroff() {
    if !kvm_available() {
        return;
    }
    let (vm, out) = build(&config(1, vec![(CODE_ADDR, hello::code().to_vec())]));
    let reason = vm.start().unwrap().wait(TIMEOUT);
    assert_eq!(reason, ExitReason::PowerOff);
    assert_eq!(text(&out), "hello\n");
}

#[test]
fn pio_and_mmio_exits_reach_bus_devices_with_their_widths() {
    if !kvm_available() {
        return;
    }
    let (vm, _out) = build(&config(1, vec![(CODE_ADDR, exits::code().to_vec())]));
    let pio_writes = Arc::new(Mutex::new(vec![]));
    let mmio_writes = Arc::new(Mutex::new(vec![]));
    vm.pio_bus()
        .insert(
            Arc::new(Mutex::new(Recorder {
                writes: pio_writes.clone(),
                read_value: 0xa5a5_5a5a,
            })),
            0x510,
            4,
        )
        .unwrap();
    vm.mmio_bus()
        .insert(
            Arc::new(Mutex::new(Recorder {
                writes: mmio_writes.clone(),
                read_value: 0x0123_4567_89ab_cdef,
            })),
            0xd000_0000,
            0x1000,
        )
        .unwrap();
    let stats = vm.kvm_stats();
    assert_eq!(vm.start().unwrap().wait(TIMEOUT), ExitReason::PowerOff);
    // vm.counters' source: KVM's vCPU statistics counted those 7 exits too
    // (by type only on hardware backends; PVM emulates PIO as instructions).
    let sum = stats.sum();
    assert!(sum.get("exits").copied().unwrap_or(0) >= 7, "{sum:?}");
    assert_eq!(
        *pio_writes.lock().unwrap(),
        vec![
            (0, vec![0x11]),
            (0, vec![0x33, 0x22]),
            (0, vec![0x77, 0x66, 0x55, 0x44])
        ]
    );
    assert_eq!(
        *mmio_writes.lock().unwrap(),
        vec![
            (0, 0xa5a5_5a5au32.to_le_bytes().to_vec()), // the PIO read, echoed
            (0x10, 0x0123_4567_89ab_cdefu64.to_le_bytes().to_vec()), // the 8-byte MMIO read, echoed
            (0x20, vec![0xff; 4]),                      // unmapped MMIO reads all ones
        ]
    );
}

#[test]
fn pci_config_address_writes_are_seen_before_the_data_access_they_select() {
    if !kvm_available() {
        return;
    }
    let (vm, _out) = build(&config(1, vec![(CODE_ADDR, pci_config::code().to_vec())]));
    let writes = Arc::new(Mutex::new(vec![]));
    vm.mmio_bus()
        .insert(
            Arc::new(Mutex::new(Recorder {
                writes: writes.clone(),
                read_value: 0,
            })),
            0xd000_0000,
            0x1000,
        )
        .unwrap();
    // What the host bridge answers, asked from here through the same ports.
    let pio = vm.pio_bus().clone();
    let mut id = [0u8; 4];
    pio.write(0xcf8, &0x8000_0000u32.to_le_bytes());
    pio.read(0xcfc, &mut id);
    let (pio_counts, _) = vm.bus_counts();
    let before: std::collections::HashMap<String, u64> =
        pio_counts.snapshot().into_iter().collect();
    assert_eq!(vm.start().unwrap().wait(TIMEOUT), ExitReason::PowerOff);
    assert_eq!(
        *writes.lock().unwrap(),
        vec![
            (0, id.to_vec()),
            (4, vec![0xff; 4]),
            (8, 0x8000_0008u32.to_le_bytes().to_vec()),
        ],
        "the data port and the latch read back answer the latch the guest wrote last"
    );
    // With KVM_CAP_COALESCED_PIO the three latch writes came without exits.
    let after: std::collections::HashMap<String, u64> = pio_counts.snapshot().into_iter().collect();
    let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    if kvm.check_extension(kvm_ioctls::Cap::CoalescedPio) {
        assert_eq!(delta("coalesced writes"), 3, "{after:?}");
        assert_eq!(delta("0xcf8+0x8"), 3, "three reads exit: {after:?}");
    } else {
        eprintln!("no KVM_CAP_COALESCED_PIO here: every latch write exits");
        assert_eq!(delta("0xcf8+0x8"), 6, "{after:?}");
    }
}

#[test]
fn second_vcpu_starts_on_init_sipi_from_the_first() {
    if !kvm_available() {
        return;
    }
    let cfg = config(
        2,
        vec![
            (CODE_ADDR, smp_bsp::code().to_vec()),
            (AP_CODE_ADDR, smp_ap::code().to_vec()),
        ],
    );
    let (vm, out) = build(&cfg);
    assert_eq!(vm.start().unwrap().wait(TIMEOUT), ExitReason::PowerOff);
    assert_eq!(text(&out), "BA", "the AP runs only after the BSP's SIPI");
}

#[test]
fn triple_fault_is_reported_as_a_crash_with_registers() {
    if !kvm_available() {
        return;
    }
    let (vm, _out) = build(&config(1, vec![(CODE_ADDR, triple_fault::code().to_vec())]));
    match vm.start().unwrap().wait(TIMEOUT) {
        ExitReason::Crash(msg) => {
            assert!(msg.starts_with("vCPU 0: "), "{msg}");
            assert!(
                msg.contains("triple fault") || msg.contains("internal error"),
                "{msg}"
            );
            assert!(
                msg.contains("rip="),
                "registers are part of the report: {msg}"
            );
        }
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn i8042_and_acpi_reset_request_a_reset() {
    if !kvm_available() {
        return;
    }
    for code in [i8042_reset::code(), acpi_reset::code()] {
        let (vm, _out) = build(&config(1, vec![(CODE_ADDR, code.to_vec())]));
        assert_eq!(vm.start().unwrap().wait(TIMEOUT), ExitReason::Reset);
    }
}

#[test]
fn a_halted_guest_is_stopped_on_request() {
    if !kvm_available() {
        return;
    }
    guest_asm::guest_code!(spin, ".code64", "2: hlt", "jmp 2b");
    let (vm, _out) = build(&config(2, vec![(CODE_ADDR, spin::code().to_vec())]));
    let running = vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    running.request_exit(ExitReason::Shutdown);
    assert_eq!(running.stop(), ExitReason::Shutdown);
}

/// A paused guest does not run; resumed, it continues where it stopped
/// (the vCPU keeps its state across pause and start).
#[test]
fn a_paused_guest_stops_and_a_resumed_one_goes_on() {
    if !kvm_available() {
        return;
    }
    use vm_memory::{Bytes, GuestAddress};
    guest_asm::guest_code!(
        count,
        ".code64",
        "mov rdi, 0x200000",
        "2: inc qword ptr [rdi]",
        "jmp 2b"
    );
    let (vm, _out) = build(&config(1, vec![(CODE_ADDR, count::code().to_vec())]));
    let counter = |vm: &Vm| {
        vm.memory()
            .read_obj::<u64>(GuestAddress(0x20_0000))
            .unwrap()
    };
    let wait_past = |vm: &Vm, v: u64| {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while counter(vm) <= v && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        counter(vm)
    };
    let running = vm.start().unwrap();
    assert!(wait_past(running.vm(), 0) > 0, "the guest never counted");
    let paused = running.pause();
    let at_pause = counter(&paused);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counter(&paused), at_pause, "a paused guest ran");
    let running = paused.start().unwrap();
    assert!(
        wait_past(running.vm(), at_pause) > at_pause,
        "the resumed guest did not continue"
    );
    running.request_exit(ExitReason::Shutdown);
    assert_eq!(running.stop(), ExitReason::Shutdown);
}

/// A guest that counts in RAX and stores each value at 0x200000.
#[cfg(target_arch = "x86_64")]
fn counting_config() -> VmConfig {
    guest_asm::guest_code!(
        count_on,
        ".code64",
        "mov rdi, 0x200000",
        "xor eax, eax",
        "2: inc rax",
        "mov [rdi], rax",
        "jmp 2b"
    );
    config(1, vec![(CODE_ADDR, count_on::code().to_vec())])
}

/// The counting guest's last stored value.
#[cfg(target_arch = "x86_64")]
fn counter(vm: &Vm) -> u64 {
    use vm_memory::{Bytes, GuestAddress};
    vm.memory()
        .read_obj::<u64>(GuestAddress(0x20_0000))
        .unwrap()
}

/// Runs the counting guest until it has counted to `to`, then pauses it.
#[cfg(target_arch = "x86_64")]
fn count_and_pause(cfg: &VmConfig, to: u64) -> Vm {
    let (vm, _out) = build(cfg);
    let running = vm.start().unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while counter(running.vm()) < to && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let vm = running.pause();
    assert!(
        counter(&vm) >= to,
        "the guest did not count: {}",
        counter(&vm)
    );
    vm
}

/// Zeroes the counter, starts `vm` and returns the first value the guest
/// stores: the saved count + 1 when its registers came along, 1 when it
/// started over.
#[cfg(target_arch = "x86_64")]
fn first_count_after_start(vm: Vm) -> u64 {
    use vm_memory::{Bytes, GuestAddress};
    vm.memory()
        .write_obj(0u64, GuestAddress(0x20_0000))
        .unwrap();
    let running = vm.start().unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut first = 0;
    while first == 0 && std::time::Instant::now() < deadline {
        first = counter(running.vm());
    }
    running.request_exit(ExitReason::Shutdown);
    assert_eq!(running.stop(), ExitReason::Shutdown);
    first
}

/// A paused VM saved with `Vm::snapshot` and restored into a fresh VM built
/// from the same configuration goes on where it stopped: the counter in its
/// memory continues from the saved value because RAX (the count) and RIP
/// came along (a vCPU started afresh would count from 0 again), and the
/// state passes through serde.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_snapshot_restored_into_a_new_vm_continues() {
    if !kvm_available() {
        return;
    }
    let cfg = counting_config();
    let old = count_and_pause(&cfg, 100_000);
    let saved = counter(&old);
    let st = old.snapshot().unwrap();
    // Through serde, as a snapshot file will carry it.
    let json = serde_json::to_vec(&st).unwrap();
    let st: vmm::snapshot::VmState = serde_json::from_slice(&json).unwrap();
    assert_eq!(st.arch.vcpus.len(), 1);
    let (fresh, _out2) = build(&cfg);
    fresh.restore(&st, old.memory()).unwrap();
    drop(old);
    assert_eq!(counter(&fresh), saved, "memory copied");
    let first = first_count_after_start(fresh);
    assert!(
        first > saved,
        "the restored guest counted from {first}, not on from {saved}"
    );
}

/// The same through a snapshot directory: `snapshot::files::save` writes
/// `state.json` and a sparse `memory` file, and a VM built for a restore
/// (no payload loaded) continues from them, its memory mapped from the
/// file. Damaging the state file makes the load fail with its checksum.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_snapshot_directory_restores_into_a_vm_built_without_a_payload() {
    if !kvm_available() {
        return;
    }
    use vmm::snapshot::files;
    let cfg = counting_config();
    let old = count_and_pause(&cfg, 50_000);
    let saved = counter(&old);
    let dir = std::env::temp_dir().join(format!("caravel-snapdir-{}", std::process::id()));
    let report = files::save(&old, &cfg, &dir).unwrap();
    drop(old);
    assert_eq!(report.memory_size, cfg.memory.size);
    assert!(
        report.memory_stored < 1 << 20,
        "only touched pages are stored: {} bytes",
        report.memory_stored
    );
    let snapshot = files::load(&dir).unwrap();
    let restore_cfg = snapshot.config.apply_to(&cfg);
    let fresh = Vm::new_for_restore(&restore_cfg, Box::new(std::io::sink()), None).unwrap();
    let r = files::restore(&fresh, &snapshot, &dir, false).unwrap();
    assert!(r.mapped, "private anonymous memory is mapped from the file");
    assert_eq!(counter(&fresh), saved, "memory came back from the file");
    let first = first_count_after_start(fresh);
    assert!(
        first > saved,
        "restored from files, the guest counted from {first}, not on from {saved}"
    );
    // One flipped byte in the state: refused by the checksum.
    let path = dir.join(files::STATE_FILE);
    let mut text = std::fs::read(&path).unwrap();
    let last = text.len() - 2;
    text[last] ^= 1;
    std::fs::write(&path, &text).unwrap();
    let err = files::load(&dir).err().unwrap().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("checksum mismatch"), "{err}");
}

/// COM1 output into a pipe that nobody reads: the guest keeps writing, and
/// the VM still stops when asked (output is dropped and counted instead of
/// blocking the vCPU in write(2)).
#[test]
fn a_host_that_never_reads_the_serial_port_does_not_block_the_vm() {
    if !kvm_available() {
        return;
    }
    guest_asm::guest_code!(
        chatter,
        ".code64",
        "mov dx, 0x3f8",
        "2: mov al, 0x78",
        "out dx, al",
        "jmp 2b"
    );
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let path = format!("/proc/self/fd/{}", fds[1]);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let out = vmm::console::open_output(
        &vmm::config::ConsoleConfig::File(path.into()),
        "--serial",
        "serial-out",
        dropped.clone(),
    )
    .unwrap();
    let cfg = config(1, vec![(CODE_ADDR, chatter::code().to_vec())]);
    let running = Vm::new(&cfg, out, None, None).unwrap().start().unwrap();
    // Run until the pipe (64 KiB) and the output buffer (64 KiB) are full.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while dropped.load(std::sync::atomic::Ordering::Relaxed) == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the guest never filled the pipe and the buffer"
    );
    running.request_exit(ExitReason::Shutdown);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(running.stop()));
    assert_eq!(
        rx.recv_timeout(TIMEOUT).ok(),
        Some(ExitReason::Shutdown),
        "the VM did not stop: a vCPU is stuck writing to the host"
    );
    // SAFETY: both ends are ours; nothing else uses them.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[test]
fn too_many_vcpus_is_a_config_error() {
    if !kvm_available() {
        return;
    }
    let err = Vm::new(
        &config(255, vec![]),
        Box::new(Buffer::default()),
        None,
        None,
    )
    .err()
    .unwrap();
    assert!(err.is_config_error(), "{err}");
    assert!(err.to_string().starts_with("--cpus:"), "{err}");
}
