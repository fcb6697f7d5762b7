//! A VM's teardown is total: dropping it (running, stopped or never
//! started) joins every thread it started and closes every fd it opened.
//!
//! This file holds one test so that no other test's threads or fds move the
//! process-wide counts it compares (`/proc/self/task`, `/proc/self/fd`).

use std::time::Duration;

use vmm::config::{
    BalloonConfig, ConsoleConfig, DiskConfig, HotplugConfig, Payload, RawPayload, VmConfig,
    VsockConfig,
};
use vmm::Vm;

const CODE_ADDR: u64 = 0x10_0000;

guest_asm::guest_code!(idle, ".code64", "2: hlt", "jmp 2b");

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

fn config(dir: &std::path::Path) -> VmConfig {
    let mut c = VmConfig::new(Payload::Raw(RawPayload {
        segments: vec![(CODE_ADDR, idle::code().to_vec())],
        entry: CODE_ADDR,
    }));
    c.cpus.boot_vcpus = 2;
    c.memory.size = 64 << 20;
    c.memory.hotplug = Some(HotplugConfig {
        hotplug_size: 256 << 20,
        hotplugged_size: 0,
        block_size: 2 << 20,
    });
    c.rng = true;
    // With its statistics timer (an fd of its own).
    c.balloon = Some(BalloonConfig {
        size: 0,
        deflate_on_oom: true,
        free_page_reporting: true,
        stats_interval: 1,
    });
    c.vsock = Some(VsockConfig {
        cid: 3,
        socket: dir.join("v.sock"),
        id: None,
    });
    c.console = ConsoleConfig::File(dir.join("hvc0.txt"));
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    c.disks = vec![DiskConfig {
        path: disk,
        readonly: false,
        id: None,
    }];
    c
}

/// Starts virtio-rng and virtio-balloon as a driver would, so that their
/// worker threads run.
fn activate_rng(vm: &Vm) {
    vmm::test_support::activate_virtio(vm, "virtio-rng", &[(0x20_0000, 0x20_1000, 0x20_2000)]);
    vmm::test_support::activate_virtio(
        vm,
        "virtio-balloon",
        &[
            (0x21_0000, 0x21_1000, 0x21_2000),
            (0x22_0000, 0x22_1000, 0x22_2000),
        ],
    );
}

#[test]
fn dropping_vms_joins_their_threads_and_closes_their_fds() {
    if !vmm::test_support::kvm_usable("teardown") {
        return;
    }
    let dir = tempdir();
    let cfg = config(&dir);
    // One VM first: lazily created process-wide fds (e.g. the KVM module's
    // caches, stdio) are not the VM's.
    drop(Vm::new(&cfg, Box::new(std::io::sink()), None, None).unwrap());
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");
    for round in 0..20 {
        let vm = Vm::new(&cfg, Box::new(std::io::sink()), None, None).unwrap();
        assert!(
            dir.join("v.sock").exists(),
            "round {round}: no vsock socket"
        );
        activate_rng(&vm);
        // The worker names itself once it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let running = |name: &str| thread_names().iter().any(|n| n == name);
        while !(running("virtio-rng") && running("virtio-balloon"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        for name in ["virtio-rng", "virtio-balloon"] {
            assert!(
                running(name),
                "round {round}: the {name} worker did not start: {:?}",
                thread_names()
            );
        }
        match round % 3 {
            // Dropped while its vCPUs run: RunningVm's Drop stops them.
            0 => drop(vm.start().unwrap()),
            // Stopped, then dropped.
            1 => {
                let running = vm.start().unwrap();
                std::thread::sleep(Duration::from_millis(5));
                running.stop();
            }
            // Never started.
            _ => drop(vm),
        }
        assert_eq!(
            count("/proc/self/task"),
            threads,
            "round {round}: threads left behind: {:?}",
            thread_names()
        );
        assert_eq!(count("/proc/self/fd"), fds, "round {round}: fds left open");
        assert!(
            !dir.join("v.sock").exists(),
            "round {round}: the vsock socket outlived its VM"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("caravel-teardown-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
