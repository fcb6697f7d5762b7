//! A VM's teardown is total: dropping it (running, stopped or never
//! started) joins every thread it started and closes every fd it opened.
//!
//! This file holds one test so that no other test's threads or fds move the
//! process-wide counts it compares (`/proc/self/task`, `/proc/self/fd`).

use std::time::Duration;

use vmm::config::{ConsoleConfig, DiskConfig, HotplugConfig, Payload, RawPayload, VmConfig};
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

/// Drives virtio-rng through its common configuration as a driver would, up
/// to DRIVER_OK, so that its worker thread runs.
fn activate_rng(vm: &Vm) {
    let bar = vm.virtio_bar0("virtio-rng").expect("virtio-rng has a BAR");
    let bus = vm.mmio_bus();
    let w8 = |off: u64, v: u8| assert!(bus.write(bar + off, &[v]));
    let w16 = |off: u64, v: u16| assert!(bus.write(bar + off, &v.to_le_bytes()));
    let w32 = |off: u64, v: u32| assert!(bus.write(bar + off, &v.to_le_bytes()));
    let w64 = |off: u64, v: u64| {
        w32(off, v as u32);
        w32(off + 4, (v >> 32) as u32);
    };
    w8(0x14, 0); // reset
    w8(0x14, 1); // ACKNOWLEDGE
    w8(0x14, 3); // DRIVER
    w32(0x08, 1); // driver_feature_select = 1
    w32(0x0c, 1); // VIRTIO_F_VERSION_1
    w32(0x08, 0);
    w32(0x0c, 0);
    w8(0x14, 0xb); // FEATURES_OK
    w16(0x16, 0); // queue_select
    w16(0x18, 16); // queue_size
    w64(0x20, 0x20_0000); // desc
    w64(0x28, 0x20_1000); // driver (avail)
    w64(0x30, 0x20_2000); // device (used)
    w16(0x1c, 1); // queue_enable
    w8(0x14, 0xf); // DRIVER_OK
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
        activate_rng(&vm);
        // The worker names itself once it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !thread_names().iter().any(|n| n == "virtio-rng")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            thread_names().iter().any(|n| n == "virtio-rng"),
            "round {round}: the virtio-rng worker did not start: {:?}",
            thread_names()
        );
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
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("caravel-teardown-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
