//! `caravel-sriov` against a fake sysfs tree: JSON status, errors that name
//! the fix (exit 1), bad command lines (exit 2).

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Command, Output};

fn fake_tree() -> PathBuf {
    let root = std::env::temp_dir().join(format!("caravel-sriov-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let pf = root.join("sys/bus/pci/devices/0000:00:03.0");
    std::fs::create_dir_all(&pf).unwrap();
    for (f, v) in [
        ("vendor", "0x8086"),
        ("device", "0x10c9"),
        ("sriov_totalvfs", "7"),
        ("sriov_numvfs", "0"),
    ] {
        std::fs::write(pf.join(f), v).unwrap();
    }
    let drv = root.join("sys/bus/pci/drivers/igb");
    std::fs::create_dir_all(&drv).unwrap();
    symlink(&drv, pf.join("driver")).unwrap();
    root
}

fn sriov(root: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caravel-sriov"))
        .arg("--sysfs-root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn status_errors_and_usage() {
    let root = fake_tree();
    let out = sriov(&root, &["status"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["pf"], "0000:00:03.0");
    assert_eq!(v[0]["driver"], "igb");
    assert_eq!(v[0]["total_vfs"], 7);
    assert!(v[0]["vfio_enable_sriov"].is_null(), "vfio-pci not loaded");

    let out = sriov(
        &root,
        &[
            "enable",
            "--pf",
            "0000:00:03.0",
            "--num-vfs",
            "2",
            "--vf-token",
            "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vfio-pci is not loaded: modprobe vfio-pci enable_sriov=1"),
        "{err}"
    );

    let out = sriov(&root, &["status", "--pf", "0000:00:09.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such PCI device"));

    let out = sriov(
        &root,
        &[
            "enable",
            "--pf",
            "0000:00:03.0",
            "--num-vfs",
            "2",
            "--vf-token",
            "not-a-uuid",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vf-token"));
    let out = sriov(&root, &["disable", "--pf", "00:3.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&root).unwrap();
}
