//! The scenarios. Each returns a one-line detail on success or an explanation.

use crate::guest::{
    caravel_args, expect_exit, field, guest_cmd, remote, spawn_with_api, Scenario, BOOT_TIMEOUT,
};
use crate::session::Session;
use crate::Env;

/// Every scenario, in run order.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "boot-vmlinux-pvh-2cpus",
        run: boot_vmlinux,
    },
    Scenario {
        name: "boot-bzimage-2cpus",
        run: boot_bzimage,
    },
    Scenario {
        name: "reboot-restarts-then-poweroff",
        run: reboot_then_poweroff,
    },
    Scenario {
        name: "no-reboot-exits-on-reboot",
        run: no_reboot,
    },
    Scenario {
        name: "api-info-ping-shutdown",
        run: api_info_shutdown,
    },
    Scenario {
        name: "api-pause-resume",
        run: pause_resume,
    },
    Scenario {
        name: "snapshot-restore-in-a-new-process",
        run: crate::snapshot_scenarios::restore_in_new_process,
    },
    Scenario {
        name: "not-a-kernel-exits-2",
        run: not_a_kernel,
    },
    Scenario {
        name: "pci-virtio-blk-console-rng",
        run: virtio_devices,
    },
    Scenario {
        name: "virtio-net-tap-ping-tcp-multiqueue",
        run: crate::net_scenarios::tap_ping_tcp_multiqueue,
    },
    Scenario {
        name: "virtio-vsock-host-guest-md5-flat-rss",
        run: crate::vsock_scenarios::host_guest_md5_flat_rss,
    },
    Scenario {
        name: "virtio-mem-resize",
        run: crate::mem_scenarios::resize_anonymous,
    },
    Scenario {
        name: "virtio-mem-shared-memfd",
        run: crate::mem_scenarios::resize_shared,
    },
    Scenario {
        name: "virtio-mem-no-driver-wait-times-out",
        run: crate::mem_scenarios::no_driver,
    },
    Scenario {
        name: "live-migration-unix-tcp-and-cut",
        run: crate::migration_scenarios::live_migration,
    },
    Scenario {
        name: "live-migration-local-memfd-then-tcp",
        run: crate::migration_scenarios::live_migration_local,
    },
    Scenario {
        name: "live-migration-virtio-net-pings-on",
        run: crate::migration_scenarios::live_migration_net,
    },
    Scenario {
        name: "virtio-balloon-inflate-deflate-oom",
        run: crate::balloon_scenarios::inflate_deflate_oom,
    },
    Scenario {
        name: "virtio-balloon-free-page-reporting",
        run: crate::balloon_scenarios::free_page_reporting,
    },
    Scenario {
        name: "memory-autosize-follows-a-ramp",
        run: crate::balloon_scenarios::autosize_ramp,
    },
    Scenario {
        name: "seccomp-filters-on-every-thread",
        run: crate::robust_scenarios::seccomp_on_every_thread,
    },
    Scenario {
        name: "virtio-blk-queue-depth-256-completes",
        run: crate::robust_scenarios::blk_queue_depth_256,
    },
    Scenario {
        name: "reboot-loop-leaves-fds-threads-rss-flat",
        run: crate::robust_scenarios::reboot_loop,
    },
];

fn boot_and_count_cpus(env: &Env, kernel: &str) -> Result<String, String> {
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, kernel, "marker", &["--cpus", "boot=2"]),
    )?;
    let (line, t_marker) = s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    if field(&line, "cpus=") != Some("2") {
        return Err(format!("guest saw {line:?}, expected cpus=2"));
    }
    let t_exit = expect_exit(&mut s, 0)?;
    Ok(format!(
        "marker at {:.2} s (guest uptime {}), exit 0 at {:.2} s",
        t_marker.as_secs_f64(),
        field(&line, "uptime=").unwrap_or("?"),
        t_exit.as_secs_f64()
    ))
}

fn boot_vmlinux(env: &Env) -> Result<String, String> {
    boot_and_count_cpus(env, "vmlinux")
}

fn boot_bzimage(env: &Env) -> Result<String, String> {
    boot_and_count_cpus(env, "bzImage")
}

fn reboot_then_poweroff(env: &Env) -> Result<String, String> {
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, "vmlinux", "interactive", &[]),
    )?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("reboot")?;
    s.expect("CARAVEL-GOT reboot", BOOT_TIMEOUT)?;
    let (_, t2) = s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    let t = expect_exit(&mut s, 0)?;
    let boots = s
        .transcript
        .iter()
        .filter(|l| l.contains("CARAVEL-MARKER"))
        .count();
    if boots != 2 {
        return Err(format!("{boots} boots seen, expected 2\n{}", s.tail()));
    }
    Ok(format!(
        "second boot's marker at {:.2} s, exit 0 at {:.2} s",
        t2.as_secs_f64(),
        t.as_secs_f64()
    ))
}

fn no_reboot(env: &Env) -> Result<String, String> {
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, "vmlinux", "interactive", &["--no-reboot"]),
    )?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("reboot")?;
    let t = expect_exit(&mut s, 0)?;
    let boots = s
        .transcript
        .iter()
        .filter(|l| l.contains("CARAVEL-MARKER"))
        .count();
    if boots != 1 {
        return Err(format!("{boots} boots seen, expected 1"));
    }
    Ok(format!("exit 0 at {:.2} s", t.as_secs_f64()))
}

/// `vm.pause` stops the guest (typed input is not answered, `vm.info` says
/// Paused, a second pause is refused), `vm.resume` lets it go on where it
/// stopped (the input typed meanwhile is answered).
fn pause_resume(env: &Env) -> Result<String, String> {
    let (mut s, sock) = spawn_with_api(env, "pause", "interactive")?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    let state = |env: &Env| -> Result<String, String> {
        let info: serde_json::Value = serde_json::from_str(&remote(env, &sock, "info")?)
            .map_err(|e| format!("vm.info is not JSON: {e}"))?;
        Ok(info["state"].as_str().unwrap_or("?").to_string())
    };
    remote(env, &sock, "pause")?;
    if state(env)? != "Paused" {
        return Err(format!("vm.info after vm.pause: {}", state(env)?));
    }
    if remote(env, &sock, "pause").is_ok() {
        return Err("a second vm.pause was accepted".into());
    }
    s.send("echo typed-while-paused")?;
    if let Ok((line, _)) = s.expect("CARAVEL-GOT", std::time::Duration::from_secs(3)) {
        return Err(format!("the paused guest answered: {line}"));
    }
    let resumed = std::time::Instant::now();
    remote(env, &sock, "resume")?;
    if state(env)? != "Running" {
        return Err(format!("vm.info after vm.resume: {}", state(env)?));
    }
    s.expect("CARAVEL-GOT echo typed-while-paused", BOOT_TIMEOUT)?;
    let answered = resumed.elapsed();
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    Ok(format!(
        "paused: no answer for 3 s, second pause refused; resumed: answered after {:.2} s; exit 0",
        answered.as_secs_f64()
    ))
}

fn api_info_shutdown(env: &Env) -> Result<String, String> {
    let (mut s, sock) = spawn_with_api(env, "api", "idle")?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    let info: serde_json::Value = serde_json::from_str(&remote(env, &sock, "info")?)
        .map_err(|e| format!("vm.info is not JSON: {e}"))?;
    if info["state"] != "Running"
        || info["config"]["cpus"]["boot_vcpus"] != 2
        || info["memory_actual_size"] != 256u64 << 20
    {
        return Err(format!("unexpected vm.info: {info}"));
    }
    let ping: serde_json::Value = serde_json::from_str(&remote(env, &sock, "ping")?)
        .map_err(|e| format!("vmm.ping is not JSON: {e}"))?;
    if ping["pid"] != s.pid() {
        return Err(format!(
            "vmm.ping pid {} is not caravel's {}",
            ping["pid"],
            s.pid()
        ));
    }
    let counters: serde_json::Value = serde_json::from_str(&remote(env, &sock, "counters")?)
        .map_err(|e| format!("vm.counters is not JSON: {e}"))?;
    let exits = counters["kvm"]["exits"].as_u64().unwrap_or(0);
    if exits == 0 || counters["kvm"]["io_exits"].as_u64().unwrap_or(0) == 0 {
        return Err(format!(
            "vm.counters shows no KVM exits of a booted guest: {counters}"
        ));
    }
    remote(env, &sock, "shutdown")?;
    let t = expect_exit(&mut s, 0)?;
    if std::path::Path::new(&sock).exists() {
        return Err("the API socket was left behind".into());
    }
    Ok(format!(
        "info state=Running, counters kvm.exits={exits}, shutdown -> exit 0 at {:.2} s",
        t.as_secs_f64()
    ))
}

fn not_a_kernel(env: &Env) -> Result<String, String> {
    let mut args = caravel_args(env, "initrd.cpio.gz", "marker", &[]);
    args[1] = env.guest("initrd.cpio.gz");
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    expect_exit(&mut s, 2)?;
    let err = s.stderr();
    if !err.contains("--kernel") || !err.contains("not a Linux kernel") {
        return Err(format!("error does not name --kernel: {err}"));
    }
    Ok(err.lines().next().unwrap_or("").to_string())
}

/// Runs one shell command in an `interactive` guest; returns its output lines.
/// `md5sum` of a file in the outer VM.
pub fn host_md5(path: &std::path::Path) -> Result<String, String> {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .map_err(|e| format!("md5sum: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

fn virtio_devices(env: &Env) -> Result<String, String> {
    let disk = env.tmp.join("rig-disk.img");
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&disk, &data).map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
    let want_md5 = host_md5(&disk)?;
    let hvc = env.tmp.join("rig-hvc.txt");
    let _ = std::fs::remove_file(&hvc);
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(
            env,
            "vmlinux",
            "interactive",
            &[
                "--disk",
                &format!("path={}", disk.display()),
                "--console",
                &format!("file={}", hvc.display()),
                "--rng",
            ],
        ),
    )?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    // Enumeration through ACPI and ECAM.
    let ids = guest_cmd(&mut s, "for d in /sys/bus/pci/devices/*; do echo PCIDEV $(basename $d) $(cat $d/vendor) $(cat $d/device); done")?;
    for dev in ["0x1042", "0x1043", "0x1044"] {
        if !ids.iter().any(|l| l.contains("0x1af4") && l.contains(dev)) {
            return Err(format!(
                "no virtio device {dev} on the guest's PCI bus: {ids:?}"
            ));
        }
    }
    let dmesg = guest_cmd(&mut s, "dmesg | grep -E 'PCI0|MMCONFIG|ECAM' | head -5")?;
    if !dmesg
        .iter()
        .any(|l| l.contains("MMCONFIG") || l.contains("ECAM"))
        || !dmesg.iter().any(|l| l.contains("PCI0"))
    {
        return Err(format!(
            "guest did not use ACPI host bridge + ECAM: {dmesg:?}"
        ));
    }
    // Every virtio function uses MSI-X.
    let msi = guest_cmd(
        &mut s,
        "cat /sys/bus/pci/devices/*/msi_irqs/* | sort | uniq -c",
    )?;
    if !msi.iter().any(|l| l.contains("msix")) || msi.iter().any(|l| l.trim().ends_with(" msi")) {
        return Err(format!("interrupt modes: {msi:?}"));
    }
    // The disk: checksum, then a write the host must see.
    let md5 = guest_cmd(&mut s, "md5sum /dev/vda")?;
    if !md5.iter().any(|l| l.starts_with(&want_md5)) {
        return Err(format!("guest md5 {md5:?}, host {want_md5}"));
    }
    guest_cmd(
        &mut s,
        "printf CARAVEL-WRITTEN | dd of=/dev/vda bs=512 seek=2 conv=notrunc,fsync 2>/dev/null",
    )?;
    // Entropy.
    let rng = guest_cmd(&mut s, "cat /sys/class/misc/hw_random/rng_current; dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1")?;
    if !rng.iter().any(|l| l.contains("virtio_rng"))
        || !rng
            .iter()
            .any(|l| l.split_whitespace().filter(|w| w.len() == 2).count() >= 16)
    {
        return Err(format!("/dev/hwrng: {rng:?}"));
    }
    // The virtio console.
    guest_cmd(&mut s, "echo CARAVEL-HVC > /dev/hvc0")?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    let t = expect_exit(&mut s, 0)?;
    let img = std::fs::read(&disk).map_err(|e| e.to_string())?;
    if &img[1024..1024 + 15] != b"CARAVEL-WRITTEN" {
        return Err("the guest's write is not in the image".into());
    }
    let hvc_text = std::fs::read_to_string(&hvc).unwrap_or_default();
    if !hvc_text.contains("CARAVEL-HVC") {
        return Err(format!("hvc0 output missing: {hvc_text:?}"));
    }
    Ok(format!("blk md5 {want_md5} ok, write seen by host, hwrng ok, hvc0 ok, MSI-X only, exit 0 at {:.2} s", t.as_secs_f64()))
}
