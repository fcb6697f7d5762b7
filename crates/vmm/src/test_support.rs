//! Helpers for tests that need a usable `/dev/kvm`.
//!
//! Without one such a test skips and says why, unless `CARAVEL_REQUIRE_KVM=1`
//! is set (CI sets it), where a missing `/dev/kvm` is a failure: a gate that
//! silently passes on a machine without KVM cannot fail.

/// Whether `/dev/kvm` can be opened read-write. When it cannot, prints why the
/// calling test is skipped, or panics when `CARAVEL_REQUIRE_KVM=1`.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip_or_fail(test, &format!("/dev/kvm is not usable: {e}"));
            false
        }
    }
}

/// Reports that `test` cannot run for `reason`: a skip line on stderr, or a
/// panic when `CARAVEL_REQUIRE_KVM=1` says KVM must be there.
pub fn skip_or_fail(test: &str, reason: &str) {
    if kvm_required() {
        panic!("{test}: {reason}, and CARAVEL_REQUIRE_KVM=1 requires KVM");
    }
    eprintln!("skipped: {test}: {reason} (set CARAVEL_REQUIRE_KVM=1 to make this a failure)");
}

/// Whether the environment says KVM tests must run (`CARAVEL_REQUIRE_KVM=1`).
pub fn kvm_required() -> bool {
    std::env::var("CARAVEL_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Drives virtio device `id` of `vm` through its common configuration as a
/// driver would, up to DRIVER_OK: VERSION_1 only, and queue `i` of 16
/// entries at `rings[i]` = (descriptor table, avail ring, used ring). The
/// device's worker starts.
pub fn activate_virtio(vm: &crate::Vm, id: &str, rings: &[(u64, u64, u64)]) {
    let bar = vm
        .virtio_bar0(id)
        .unwrap_or_else(|| panic!("{id} has a BAR"));
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
    for (i, &(desc, avail, used)) in rings.iter().enumerate() {
        w16(0x16, i as u16); // queue_select
        w16(0x18, 16); // queue_size
        w64(0x20, desc);
        w64(0x28, avail);
        w64(0x30, used);
        w16(0x1c, 1); // queue_enable
    }
    w8(0x14, 0xf); // DRIVER_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kvm_fails_when_required() {
        // Run in a child so the environment change stays local.
        if std::env::var("TEST_SUPPORT_CHILD").is_ok() {
            skip_or_fail("child", "no KVM here");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let run = |require: &str| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "test_support::tests::a_missing_kvm_fails_when_required",
                ])
                .env("TEST_SUPPORT_CHILD", "1")
                .env("CARAVEL_REQUIRE_KVM", require)
                .output()
                .unwrap()
        };
        assert!(run("0").status.success());
        let required = run("1");
        assert!(!required.status.success());
        assert!(String::from_utf8_lossy(&required.stdout)
            .contains("CARAVEL_REQUIRE_KVM=1 requires KVM"));
    }
}
