//! `caravel-rig --vfio`: SR-IOV and VF tokens against real vfio-pci, in an
//! outer VM that QEMU gives an emulated VT-d IOMMU and an igb NIC (82576,
//! SR-IOV PF at 00:03.0, VFs 8086:10ca at 00:13.x). Mirrors the kernel
//! selftest vfio_pci_sriov_uapi_test: right/wrong/missing token, PF closed
//! early, token overridden; plus caravel-sriov enable/status/disable and a
//! VF's regions, MSI-X and DMA through the vfio crate.

use std::os::fd::AsRawFd;
use std::process::Command;

use vfio::device::Device;
use vfio::pci::Sysfs;
use vfio::{Error, PciAddress, VfToken};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vmm_sys_util::eventfd::EventFd;

use crate::guest::{caravel_args, expect_exit, guest_cmd, Scenario};
use crate::mem_scenarios;
use crate::session::Session;
use crate::Env;

const PF: &str = "0000:00:03.0";
const T1: &str = "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11";
const T2: &str = "5d1e8f0a-2b3c-4d5e-8f90-a1b2c3d4e5f6";
const ENABLE_SRIOV: &str = "/sys/module/vfio_pci/parameters/enable_sriov";

/// The VFIO scenarios, in order (they share the PF's state).
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "vfio-sriov-enable",
        run: sriov_enable,
    },
    Scenario {
        name: "vfio-vf-token-matrix",
        run: token_matrix,
    },
    Scenario {
        name: "vfio-pf-early-close-and-token-override",
        run: override_token,
    },
    Scenario {
        name: "vfio-vf-regions-msix-dma",
        run: regions_msix_dma,
    },
    Scenario {
        name: "vfio-passthrough-refuses-missing-and-wrong-token",
        run: passthrough_refusals,
    },
    Scenario {
        name: "vfio-passthrough-vf-to-guest",
        run: passthrough,
    },
    Scenario {
        name: "vfio-passthrough-dma-follows-virtio-mem",
        run: passthrough_with_virtio_mem,
    },
    Scenario {
        name: "vfio-sriov-status-disable",
        run: status_disable,
    },
];

fn device_arg(vf: PciAddress, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("path=/sys/bus/pci/devices/{vf},vf_token={t}"),
        None => format!("path=/sys/bus/pci/devices/{vf}"),
    }
}

/// Sets the PF's token to `token`: with no VF in use, opening the PF with a
/// token sets it (the scenarios below do not depend on the ones above).
fn set_token(token: &str) -> Result<(), String> {
    Device::open(&Sysfs::default(), a(PF), Some(&t(token)))
        .map(drop)
        .map_err(|e| format!("setting the token by opening the PF: {e}"))
}

fn passthrough_refusals(env: &Env) -> Result<String, String> {
    set_token(T2)?;
    let vf = vfs()[0];
    let mut said = Vec::new();
    for (token, want) in [(None, "give vf_token=<uuid>"), (Some(T1), "is not the one")] {
        let dev = device_arg(vf, token);
        let mut s = Session::spawn(
            &env.bin("caravel"),
            &caravel_args(env, "vmlinux", "marker", &["--device", &dev]),
        )?;
        expect_exit(&mut s, 1)?;
        let err = s.stderr();
        if !err.contains(want) || s.tail().contains("CARAVEL-MARKER") {
            return Err(format!(
                "--device {dev}: expected \"{want}\" before any guest output, got:\n{err}"
            ));
        }
        said.push(
            err.lines()
                .find(|l| l.contains("error"))
                .unwrap_or_default()
                .to_string(),
        );
    }
    Ok(said.join(" | "))
}

fn passthrough(env: &Env) -> Result<String, String> {
    set_token(T2)?;
    let vf = vfs()[0];
    let dev = device_arg(vf, Some(T2));
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, "vmlinux", "interactive", &["--device", &dev]),
    )?;
    let lines = guest_cmd(
        &mut s,
        "for d in /sys/bus/pci/devices/*; do echo \"PCI $(basename $d) $(cat $d/vendor):$(cat $d/device) $(basename $(readlink $d/driver) 2>/dev/null)\"; done; echo MSIX $(ls /sys/bus/pci/devices/0000:00:01.0/msi_irqs | wc -l); dmesg | grep -i igbvf | tail -n 3; true",
    )?;
    let vf_line = lines
        .iter()
        .find(|l| l.contains("PCI ") && l.contains("0x8086:0x10ca"))
        .ok_or_else(|| {
            format!(
                "the guest does not see the VF 8086:10ca:\n{}",
                lines.join("\n")
            )
        })?
        .trim()
        .to_string();
    if !vf_line.ends_with("igbvf") {
        return Err(format!(
            "the VF is not bound to igbvf in the guest: {vf_line}\n{}",
            s.tail()
        ));
    }
    // igbvf enables MSI-X at probe: the vectors the guest allocated through
    // the emulated capability.
    let msix: u32 = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("MSIX "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if msix == 0 {
        return Err(format!(
            "igbvf enabled no MSI-X vector in the guest:\n{}",
            lines.join("\n")
        ));
    }
    let mac = lines
        .iter()
        .find(|l| l.contains("Address:"))
        .map_or("", |l| l.trim());
    s.send("poweroff -f")?;
    expect_exit(&mut s, 0)?;
    Ok(format!(
        "guest: {vf_line}, {msix} MSI-X vectors enabled; {mac}"
    ))
}

/// VmLck of `pid` in MiB: VFIO type-1 accounts the pages it pins there.
fn pinned_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmLck:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10)
}

fn passthrough_with_virtio_mem(env: &Env) -> Result<String, String> {
    set_token(T2)?;
    let dev = device_arg(vfs()[0], Some(T2));
    let sock = env.tmp.join("vfio-mem.sock").display().to_string();
    let mut s = mem_scenarios::start_with(env, &sock, "", &["--device", &dev])?;
    let boot = pinned_mib(s.pid());
    mem_scenarios::resize_wait(env, &sock, "768M", 60)?;
    let grown = pinned_mib(s.pid());
    mem_scenarios::resize_wait(env, &sock, "256M", 60)?;
    let shrunk = pinned_mib(s.pid());
    // A snapshot cannot carry a passed-through device: refused by name.
    crate::guest::remote(env, &sock, "pause")?;
    let snap = env.tmp.join("vfio-snap");
    let url = format!("file://{}", snap.display());
    let refusal = match crate::guest::remote_snapshot(env, &sock, &url) {
        Ok(out) => return Err(format!("vm.snapshot with a VF succeeded: {out}")),
        Err(e) => e,
    };
    if !refusal.contains("passed-through devices (vfio0)") {
        return Err(format!(
            "vm.snapshot with a VF refused for another reason: {refusal}"
        ));
    }
    if snap.join("state.json").exists() {
        return Err("a refused snapshot left a state file".into());
    }
    crate::guest::remote(env, &sock, "resume")?;
    // Nor can a live migration: refused up front, the guest runs on.
    let url = format!("unix:{}", env.tmp.join("vfio-mig.sock").display());
    let out = std::process::Command::new(env.bin("caravel-remote"))
        .args(["--api-socket", &sock, "send-migration", &url])
        .output()
        .map_err(|e| format!("cannot run caravel-remote: {e}"))?;
    let migration = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if out.status.success() || !migration.contains("passed-through devices (vfio0)") {
        return Err(format!(
            "vm.send-migration with a VF: {} {migration}",
            out.status
        ));
    }
    let info = crate::guest::remote(env, &sock, "info")?;
    if !info.contains("\"Running\"") {
        return Err(format!(
            "after the refused migration the VM is not running: {info}"
        ));
    }
    s.send("poweroff -f")?;
    expect_exit(&mut s, 0)?;
    // Boot RAM (256 MiB) is pinned at start; +512 MiB plugged, then unplugged.
    if !(250..=260).contains(&boot) || grown.abs_diff(boot + 512) > 8 || shrunk.abs_diff(boot) > 8 {
        return Err(format!(
            "pinned (VmLck) {boot} -> {grown} -> {shrunk} MiB; expected 256 -> 768 -> 256"
        ));
    }
    Ok(format!("pinned for device DMA: {boot} -> {grown} -> {shrunk} MiB as the guest plugged and unplugged 512 MiB; vm.snapshot refused: {refusal}; vm.send-migration refused: {migration}"))
}

fn a(s: &str) -> PciAddress {
    s.parse().expect("address")
}

fn t(s: &str) -> VfToken {
    s.parse().expect("token")
}

fn sriov(env: &Env, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(env.bin("caravel-sriov"))
        .args(args)
        .output()
        .map_err(|e| format!("caravel-sriov: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "caravel-sriov {} exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("caravel-sriov output is not JSON: {e}"))
}

fn vfs() -> Vec<PciAddress> {
    Sysfs::default().vfs(a(PF))
}

fn expect_err(
    r: Result<Device, Error>,
    what: &str,
    check: fn(&Error) -> bool,
) -> Result<String, String> {
    match r {
        Ok(_) => Err(format!("{what}: opened, expected a refusal")),
        Err(e) if check(&e) => Ok(e.to_string()),
        Err(e) => Err(format!("{what}: wrong error: {e}")),
    }
}

fn sriov_enable(env: &Env) -> Result<String, String> {
    let _ = std::fs::write(ENABLE_SRIOV, "N");
    let s = sriov(
        env,
        &["enable", "--pf", PF, "--num-vfs", "2", "--vf-token", T1],
    )?;
    let param = std::fs::read_to_string(ENABLE_SRIOV).unwrap_or_default();
    if param.trim() != "Y" {
        return Err(format!("enable_sriov is {param:?} after enable"));
    }
    let vfs = s["vfs"].as_array().cloned().unwrap_or_default();
    let groups: std::collections::BTreeSet<u64> = vfs
        .iter()
        .filter_map(|v| v["iommu_group"].as_u64())
        .collect();
    if s["driver"] != "vfio-pci"
        || s["num_vfs"] != 2
        || vfs.len() != 2
        || groups.len() != 2
        || vfs
            .iter()
            .any(|v| v["driver"] != "vfio-pci" || v["id"] != "8086:10ca")
    {
        return Err(format!("unexpected status after enable: {s}"));
    }
    if s.to_string().contains(T1) {
        return Err("status shows the token".into());
    }
    Ok(format!(
        "PF on vfio-pci, VFs {} and {} on vfio-pci in groups {groups:?}",
        vfs[0]["bdf"], vfs[1]["bdf"]
    ))
}

fn token_matrix(_: &Env) -> Result<String, String> {
    let sysfs = Sysfs::default();
    let [vf0, _vf1] = vfs()[..] else {
        return Err("expected 2 VFs".into());
    };
    let missing = expect_err(Device::open(&sysfs, vf0, None), "VF without token", |e| {
        matches!(e, Error::TokenRequired { .. })
    })?;
    let wrong = expect_err(Device::open(&sysfs, vf0, Some(&t(T2))), "VF with T2", |e| {
        matches!(e, Error::TokenWrong { .. })
    })?;
    let held = Device::open(&sysfs, vf0, Some(&t(T1))).map_err(|e| format!("VF with T1: {e}"))?;
    let busy = expect_err(
        Device::open(&sysfs, vf0, Some(&t(T1))),
        "VF opened twice",
        |e| matches!(e, Error::Busy { .. }),
    )?;
    // The PF restarting while a VF is in use needs the token too.
    expect_err(
        Device::open(&sysfs, a(PF), None),
        "PF without token, VF in use",
        |e| matches!(e, Error::TokenRequired { bdf, pf } if bdf == pf),
    )?;
    expect_err(
        Device::open(&sysfs, a(PF), Some(&t(T2))),
        "PF with T2, VF in use",
        |e| matches!(e, Error::TokenWrong { .. }),
    )?;
    drop(Device::open(&sysfs, a(PF), Some(&t(T1))).map_err(|e| format!("PF with T1: {e}"))?);
    drop(held);
    Ok(format!(
        "missing: \"{missing}\"; wrong: \"{wrong}\"; twice: \"{busy}\""
    ))
}

fn override_token(_: &Env) -> Result<String, String> {
    let sysfs = Sysfs::default();
    let [vf0, vf1] = vfs()[..] else {
        return Err("expected 2 VFs".into());
    };
    // pf_early_close: the PF fd caravel-sriov used is closed; T1 still holds.
    let v0 = Device::open(&sysfs, vf0, Some(&t(T1)))
        .map_err(|e| format!("VF after the PF closed: {e}"))?;
    // override_token: the PF owner sets T2 while a VF is open.
    let pf = Device::open(&sysfs, a(PF), Some(&t(T1))).map_err(|e| format!("PF with T1: {e}"))?;
    pf.set_vf_token(&t(T2)).map_err(|e| e.to_string())?;
    if pf.vf_token_readable() {
        return Err("the VF token can be read back (it must be write-only)".into());
    }
    drop(pf);
    expect_err(
        Device::open(&sysfs, vf1, Some(&t(T1))),
        "VF with the old token",
        |e| matches!(e, Error::TokenWrong { .. }),
    )?;
    drop(
        Device::open(&sysfs, vf1, Some(&t(T2)))
            .map_err(|e| format!("VF with the new token: {e}"))?,
    );
    drop(v0);
    Ok("token survives the PF fd; T2 replaces T1 while a VF is open".into())
}

fn regions_msix_dma(_: &Env) -> Result<String, String> {
    let sysfs = Sysfs::default();
    let vf = vfs()[0];
    let d = Device::open(&sysfs, vf, Some(&t(T2))).map_err(|e| e.to_string())?;
    let cfg = d
        .region_info(VFIO_PCI_CONFIG_REGION_INDEX)
        .map_err(|e| e.to_string())?;
    let mut id = [0u8; 4];
    d.read_region(&cfg, 0, &mut id).map_err(|e| e.to_string())?;
    let (vendor, device) = (
        u16::from_le_bytes([id[0], id[1]]),
        u16::from_le_bytes([id[2], id[3]]),
    );
    if (vendor, device) != (0x8086, 0x10ca) {
        return Err(format!(
            "VF config space reads {vendor:04x}:{device:04x}, expected 8086:10ca"
        ));
    }
    let bar0 = d
        .region_info(VFIO_PCI_BAR0_REGION_INDEX)
        .map_err(|e| e.to_string())?;
    if bar0.size == 0 {
        return Err("VF BAR0 is empty".into());
    }
    let msix = d
        .irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
        .map_err(|e| e.to_string())?;
    if msix.count == 0 {
        return Err("VF has no MSI-X vectors".into());
    }
    let ev = EventFd::new(0).map_err(|e| e.to_string())?;
    d.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, &[ev.as_raw_fd()])
        .map_err(|e| e.to_string())?;
    d.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, &[])
        .map_err(|e| e.to_string())?;
    let buf = vec![0u8; 4 << 20];
    let host = (buf.as_ptr() as u64 + 0x1f_ffff) & !0x1f_ffff;
    // SAFETY: `buf` outlives the mapping, which is removed just below.
    unsafe { d.container().map_dma(0x1000_0000, 2 << 20, host) }.map_err(|e| e.to_string())?;
    d.container()
        .unmap_dma(0x1000_0000, 2 << 20)
        .map_err(|e| e.to_string())?;
    drop(buf);
    Ok(format!(
        "config {vendor:04x}:{device:04x}, BAR0 {} KiB, {} MSI-X vectors (one wired to an eventfd), 2 MiB DMA mapped and unmapped",
        bar0.size >> 10,
        msix.count
    ))
}

fn status_disable(env: &Env) -> Result<String, String> {
    let all = sriov(env, &["status"])?;
    if all.as_array().map_or(0, Vec::len) != 1 {
        return Err(format!("status lists {all}"));
    }
    let s = sriov(env, &["disable", "--pf", PF])?;
    if s["num_vfs"] != 0 || s["vfs"].as_array().is_some_and(|v| !v.is_empty()) {
        return Err(format!("VFs left after disable: {s}"));
    }
    Ok("status lists the PF; disable leaves 0 VFs".into())
}
