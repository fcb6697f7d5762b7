//! `caravel-rig --arm64`: Caravel on aarch64, inside the arm64 outer VM
//! (qemu-system-aarch64 TCG at EL2, real arm64 KVM with the in-kernel GICv3
//! and ITS). The guest is the tiny arm64 kernel (`/guest/Image`).

use crate::arm64_its_guest as its_guest;
use crate::guest::{expect_exit, guest_cmd, Scenario};
use crate::session::Session;
use crate::Env;

/// The aarch64 scenarios.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "arm64-boot-2cpus-poweroff",
        run: boot_poweroff,
    },
    Scenario {
        name: "arm64-psci-reset-reboots-or-exits",
        run: psci_reset,
    },
    Scenario {
        name: "arm64-virtio-blk-msix-through-its",
        run: virtio_its,
    },
    Scenario {
        name: "arm64-virtio-console-and-mem-resize",
        run: console_and_mem,
    },
    Scenario {
        name: "arm64-virtio-net-tap-ping-tcp-multiqueue",
        run: crate::net_scenarios::tap_ping_tcp_multiqueue_arm64,
    },
    Scenario {
        name: "arm64-virtio-vsock-host-guest-md5-flat-rss",
        run: crate::vsock_scenarios::host_guest_md5_flat_rss_arm64,
    },
    Scenario {
        name: "arm64-virtio-balloon-inflate-deflate-oom",
        run: crate::balloon_scenarios::inflate_deflate_oom_arm64,
    },
    Scenario {
        name: "arm64-virtio-balloon-free-page-reporting",
        run: crate::balloon_scenarios::free_page_reporting_arm64,
    },
    Scenario {
        name: "arm64-snapshot-restore-in-a-new-process",
        run: crate::snapshot_scenarios::restore_in_new_process_arm64,
    },
    Scenario {
        name: "arm64-live-migration-unix-tcp-and-cut",
        run: crate::migration_scenarios::live_migration_arm64,
    },
    Scenario {
        name: "arm64-its-save-decode-restore",
        run: its_snapshot,
    },
    Scenario {
        name: "arm64-its-introspection",
        run: its_guest::introspection,
    },
    Scenario {
        name: "arm64-its-trigger",
        run: its_guest::trigger,
    },
    Scenario {
        name: "arm64-its-migration",
        run: its_guest::migration,
    },
    Scenario {
        name: "arm64-its-pending-migration",
        run: its_guest::pending_migration,
    },
    Scenario {
        name: "arm64-its-migrate-unmapped-collection",
        run: its_guest::unmapped_collection,
    },
];

/// Caravel's vmm as a library: a Linux guest with virtio-blk and -rng boots,
/// its ITS is saved (KVM writes the tables Linux built into guest memory),
/// the its crate decodes them, and they are restored into a fresh VM holding
/// a copy of the memory, in KVM's order; a save of the restored ITS must
/// decode to the same state. A corrupted snapshot is refused with the
/// codec's reason before KVM sees it.
#[cfg(target_arch = "aarch64")]
fn its_snapshot(env: &Env) -> Result<String, String> {
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};
    use vmm::config::{CpusConfig, DiskConfig, LinuxPayload, MemoryConfig, Payload, VmConfig};

    let img = env.tmp.join("arm64-its-disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
    let mut cfg = VmConfig::new(Payload::Linux(LinuxPayload {
        kernel: env.guest("Image").into(),
        initramfs: Some(env.guest("initrd.cpio.gz").into()),
        cmdline: "console=ttyAMA0 quiet panic=-1 caravel.test=idle".into(),
    }));
    cfg.cpus = CpusConfig { boot_vcpus: 2 };
    cfg.memory = MemoryConfig::boot_only(256 << 20);
    cfg.rng = true;
    // Read-only: the restored VM opens the same image while the saved
    // one still holds it, and disk locks let only read-only users share.
    cfg.disks.push(DiskConfig {
        path: img,
        readonly: true,
        id: None,
    });
    let e = |e: vmm::Error| e.to_string();

    let out = crate::capture::Capture::default();
    let vm = vmm::Vm::new(&cfg, Box::new(out.clone()), None, None).map_err(e)?;
    let devfns: Vec<u32> = vm
        .devices()
        .iter()
        .filter_map(|d| {
            let (dev, func) = d.pci_bdf.rsplit(':').next()?.split_once('.')?;
            Some((u32::from_str_radix(dev, 16).ok()? << 3) | func.parse::<u32>().ok()?)
        })
        .collect();
    let running = vm.start().map_err(e)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.text().contains("CARAVEL-MARKER") {
        if Instant::now() > deadline {
            return Err("the guest did not boot within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vm = running.pause();
    // A whole-VM snapshot carries the virtio devices (paused with the VM).
    let whole = vm.snapshot().map_err(e)?;
    let names: Vec<_> = whole.devices.iter().map(|d| d.name.as_str()).collect();
    if names != ["virtio-blk0", "virtio-rng"] {
        return Err(format!("the whole-VM snapshot holds devices {names:?}"));
    }
    let st = vm.its_save().map_err(e)?;
    let d = its::tables::decode(&st.regs, 2, vmm::MAX_LPI, vm.memory());
    if !d.issues.is_empty() {
        return Err(format!(
            "the tables KVM saved do not decode cleanly: {:?}",
            d.issues
        ));
    }
    for id in &devfns {
        let dev = d.devices.get(id).ok_or_else(|| {
            format!("device {id:#x} (a virtio function) is not in the saved device table:\n{d}")
        })?;
        if dev.events.is_empty() || dev.events.values().any(|i| i.lpi < 8192) {
            return Err(format!(
                "device {id:#x}: no events or an LPI below 8192:\n{d}"
            ));
        }
    }
    let mapped = d
        .collections
        .values()
        .filter(|pe| pe.is_some_and(|p| p < 2))
        .count();
    if mapped == 0 {
        return Err(format!("no collection is mapped to a vCPU:\n{d}"));
    }
    let events: usize = d.devices.values().map(|dv| dv.events.len()).sum();

    // Restore into a fresh VM holding a copy of guest memory.
    let copy_into = |to: &vmm::Vm| vmm::memory::copy_guest_memory(vm.memory(), to.memory());
    let vm2 = vmm::Vm::new(&cfg, Box::new(std::io::sink()), None, None).map_err(e)?;
    copy_into(&vm2)?;
    vm2.its_restore(&st).map_err(e)?;
    let st2 = vm2.its_save().map_err(e)?;
    let d2 = its::tables::decode(&st2.regs, 2, vmm::MAX_LPI, vm2.memory());
    if d2.devices != d.devices || d2.collections != d.collections || st2.regs.ctlr != st.regs.ctlr {
        return Err(format!(
            "the restored ITS saves differently:\nbefore:\n{d}\nafter:\n{d2}"
        ));
    }

    // A snapshot whose ITT names an LPI below 8192 is refused.
    let vm3 = vmm::Vm::new(&cfg, Box::new(std::io::sink()), None, None).map_err(e)?;
    copy_into(&vm3)?;
    let (id, dev) = d.devices.iter().next().ok_or("no device")?;
    let (ev, _) = dev.events.iter().next().ok_or("no event")?;
    let ite_at = GuestAddress(dev.itt + 8 * u64::from(*ev));
    let ite: u64 = vm3.memory().read_obj(ite_at).map_err(|e| e.to_string())?;
    let bad = (ite & !(0xffff_ffffu64 << 16)) | (7 << 16);
    vm3.memory()
        .write_obj(bad, ite_at)
        .map_err(|e| e.to_string())?;
    let refused = match vm3.its_restore(&st) {
        Ok(()) => {
            return Err(format!(
                "device {id:#x} event {ev} naming LPI 7 was accepted"
            ))
        }
        Err(err) => err.to_string(),
    };
    if !refused.contains("LPI 7 outside") {
        return Err(format!("refused for the wrong reason: {refused}"));
    }
    drop(vm);
    Ok(format!(
        "saved {} devices, {events} events, {} collections ({mapped} on vCPUs); restored into a fresh VM and saved again: identical; a corrupted ITE refused: \"{refused}\"; whole-VM snapshot with devices {names:?}",
        d.devices.len(),
        d.collections.len()
    ))
}

#[cfg(not(target_arch = "aarch64"))]
fn its_snapshot(_: &Env) -> Result<String, String> {
    Err("aarch64 only".into())
}

/// Caravel's arguments for arm64 guest test `test`: 2 vCPUs, 256 MiB, plus `extra`.
pub fn args(env: &Env, test: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--kernel",
        &env.guest("Image"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        &format!("console=ttyAMA0 quiet panic=-1 caravel.test={test}"),
        "--cpus",
        "boot=2",
        "--memory",
        "size=256M",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn boot_poweroff(env: &Env) -> Result<String, String> {
    let mut s = Session::spawn(&env.bin("caravel"), &args(env, "marker", &[]))?;
    let (line, t) = s.expect("CARAVEL-MARKER", std::time::Duration::from_secs(120))?;
    if !line.contains("cpus=2") {
        return Err(format!("the guest does not see 2 CPUs: {line}"));
    }
    let end = expect_exit(&mut s, 0)?;
    Ok(format!(
        "marker at {:.2} s ({}), PSCI SYSTEM_OFF -> exit 0 at {:.2} s",
        t.as_secs_f64(),
        line.split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" "),
        end.as_secs_f64()
    ))
}

/// virtio-console and virtio-mem, the x86 device code unchanged: the
/// guest writes to hvc0, and `caravel-remote resize` grows and shrinks its
/// memory through the API (MSI-X config interrupts through the ITS).
fn console_and_mem(env: &Env) -> Result<String, String> {
    use crate::mem_scenarios::{check_total, mem_total, resize_wait, rss};
    const MIB: u64 = 1 << 20;
    let hvc = env.tmp.join("arm64-hvc.txt");
    let sock = env.tmp.join("arm64-mem.sock").display().to_string();
    let _ = std::fs::remove_file(&hvc);
    let a = hotplug_args(
        env,
        &sock,
        &["--console", &format!("file={}", hvc.display())],
    );
    let mut s = Session::spawn(&env.bin("caravel"), &a)?;
    s.expect("CARAVEL-MARKER", std::time::Duration::from_secs(120))?;
    guest_cmd(&mut s, "echo CARAVEL-HVC > /dev/hvc0")?;
    let base = mem_total(&mut s)?;
    let grow = resize_wait(env, &sock, "768M", 60)?;
    check_total(&mut s, base, 512 * MIB, "after resize to 768M")?;
    let rss_grown = rss(s.pid());
    let shrink = match resize_wait(env, &sock, "256M", 60) {
        Ok(line) => line,
        Err(e) => {
            let log = guest_cmd(
                &mut s,
                "dmesg | grep -iE -A3 'oops|bug:|unable to handle' | head -8",
            )
            .unwrap_or_default();
            return Err(format!("{e}\nguest kernel:\n{}", log.join("\n")));
        }
    };
    check_total(&mut s, base, 0, "after resize back to 256M")?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    let hvc_text = std::fs::read_to_string(&hvc).unwrap_or_default();
    if !hvc_text.contains("CARAVEL-HVC") {
        return Err(format!("hvc0 output missing: {hvc_text:?}"));
    }
    Ok(format!(
        "hvc0 ok; MemTotal {} MiB -> +512 MiB -> back ({grow}; {shrink}); RSS at 768M {} MiB; exit 0",
        base / MIB,
        rss_grown / MIB
    ))
}

/// An interactive guest with 256 MiB, a 1 GiB virtio-mem region, the API
/// on `sock` (a stale one removed) and `extra` arguments.
pub fn hotplug_args(env: &Env, sock: &str, extra: &[&str]) -> Vec<String> {
    let _ = std::fs::remove_file(sock);
    let mut a = args(
        env,
        "interactive",
        &["--api-socket", &format!("path={sock}")],
    );
    for x in a.iter_mut() {
        if x == "size=256M" {
            *x = "size=256M,hotplug_method=virtio-mem,hotplug_size=1G".into();
        } else if x.starts_with("console=") {
            *x = x.replace("quiet", "quiet memhp_default_state=online_movable");
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// PSCI SYSTEM_RESET: Caravel boots the guest again (a fresh VM), or with
/// `--no-reboot` exits 0.
fn psci_reset(env: &Env) -> Result<String, String> {
    let timeout = std::time::Duration::from_secs(120);
    let markers = |s: &Session| {
        s.transcript
            .iter()
            .filter(|l| l.contains("CARAVEL-MARKER"))
            .count()
    };
    let mut s = Session::spawn(&env.bin("caravel"), &args(env, "interactive", &[]))?;
    s.expect("CARAVEL-READY", timeout)?;
    s.send("reboot")?;
    let (_, second) = s.expect("CARAVEL-MARKER", timeout)?;
    s.expect("CARAVEL-READY", timeout)?;
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    if markers(&s) != 2 {
        return Err(format!(
            "{} boots seen, expected 2\n{}",
            markers(&s),
            s.tail()
        ));
    }
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &args(env, "interactive", &["--no-reboot"]),
    )?;
    s.expect("CARAVEL-READY", timeout)?;
    s.send("reboot")?;
    let t = expect_exit(&mut s, 0)?;
    if markers(&s) != 1 {
        return Err(format!(
            "--no-reboot: {} boots seen, expected 1",
            markers(&s)
        ));
    }
    Ok(format!(
        "SYSTEM_RESET: second boot's marker at {:.2} s, then SYSTEM_OFF exit 0; with --no-reboot: exit 0 at {:.2} s",
        second.as_secs_f64(),
        t.as_secs_f64()
    ))
}

fn virtio_its(env: &Env) -> Result<String, String> {
    let img = env.tmp.join("arm64-disk.img");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i >> 9) as u8).collect();
    std::fs::write(&img, &data).map_err(|e| format!("{}: {e}", img.display()))?;
    let disk = format!("path={}", img.display());
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &args(env, "interactive", &["--disk", &disk, "--rng"]),
    )?;
    let lines = guest_cmd(
        &mut s,
        "grep -e ITS -e MSI /proc/interrupts; echo SECTORS $(cat /sys/block/vda/size); head -c 4096 /dev/hwrng | wc -c; grep PL011 /proc/tty/driver/ttyAMA",
    )?;
    // The console: the PL011 driver, interrupt-driven in both directions.
    let uart = lines
        .iter()
        .find(|l| l.contains("uart:PL011"))
        .ok_or_else(|| format!("the console is not on the PL011:\n{}", lines.join("\n")))?;
    let count = |key: &str| -> u64 {
        uart.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or(0)
    };
    let (tx, rx) = (count("tx:"), count("rx:"));
    if tx == 0 || rx == 0 {
        return Err(format!(
            "the PL011 moved no data (tx {tx}, rx {rx}): {uart}"
        ));
    }
    let its_lines = lines.iter().filter(|l| l.contains("ITS-MSI")).count();
    if its_lines == 0 {
        return Err(format!(
            "no ITS-MSI interrupt in the guest:\n{}",
            lines.join("\n")
        ));
    }
    let sectors = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("SECTORS "))
        .unwrap_or("?")
        .to_string();
    if sectors != "8192" {
        return Err(format!(
            "vda has {sectors} sectors, expected 8192:\n{}",
            lines.join("\n")
        ));
    }
    s.send("poweroff")?;
    expect_exit(&mut s, 0)?;
    Ok(format!("{its_lines} ITS-MSI interrupt lines (virtio-blk, virtio-rng), vda 8192 sectors, hwrng read, console on the PL011 (tx {tx} rx {rx} bytes), exit 0"))
}
