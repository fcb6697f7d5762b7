//! `caravel-rig --arm64`: Caravel on aarch64, inside the arm64 outer VM
//! (qemu-system-aarch64 TCG at EL2, real arm64 KVM with the in-kernel GICv3
//! and ITS). The guest is the tiny arm64 kernel (`/guest/Image`).

use crate::scenarios::{expect_exit, guest_cmd, Scenario};
use crate::session::Session;
use crate::Env;

/// The aarch64 scenarios.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "arm64-boot-2cpus-poweroff",
        run: boot_poweroff,
    },
    Scenario {
        name: "arm64-virtio-blk-msix-through-its",
        run: virtio_its,
    },
];

fn args(env: &Env, test: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--kernel",
        &env.guest("Image"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        &format!("console=ttyS0 quiet panic=-1 caravel.test={test}"),
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
        "grep -e ITS -e MSI /proc/interrupts; echo SECTORS $(cat /sys/block/vda/size); head -c 4096 /dev/hwrng | wc -c",
    )?;
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
    Ok(format!("{its_lines} ITS-MSI interrupt lines (virtio-blk, virtio-rng), vda 8192 sectors, hwrng read, exit 0"))
}
