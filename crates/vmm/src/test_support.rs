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
