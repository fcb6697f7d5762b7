//! Results in kselftest's TAP dialect (or JSON), and kselftest's exit codes.
//!
//! ```text
//! TAP version 13
//! 1..3
//! # diagnostic lines of case 1
//! ok 1 sync_regs.read_invalid
//! # why case 2 failed
//! not ok 2 sregs.unsupported_cr4_rejected
//! ok 3 memslots.dirty_ring # SKIP KVM_CAP_DIRTY_LOG_RING is not supported
//! # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
//! ```

use serde::{Deserialize, Serialize};

/// kselftest's exit code when every case passed (or was skipped, with at
/// least one pass).
pub const EXIT_PASS: i32 = 0;
/// kselftest's exit code when a case failed.
pub const EXIT_FAIL: i32 = 1;
/// kselftest's exit code when every case was skipped.
pub const EXIT_SKIP: i32 = 4;

/// A case's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// `ok N name`
    Pass,
    /// `not ok N name`
    Fail,
    /// `ok N name # SKIP reason`
    Skip,
}

/// What one case produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseReport {
    /// `group.case`
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it failed or was skipped (empty on a pass).
    pub message: String,
    /// Diagnostic lines (measurements, notes), printed as `# ` lines.
    pub diagnostics: Vec<String>,
    /// Wall-clock time of the case, in milliseconds.
    #[serde(default)]
    pub millis: u64,
}

/// Counts of verdicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Passed cases.
    pub pass: usize,
    /// Failed cases.
    pub fail: usize,
    /// Skipped cases.
    pub skip: usize,
}

impl Totals {
    /// Adds one verdict.
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Pass => self.pass += 1,
            Verdict::Fail => self.fail += 1,
            Verdict::Skip => self.skip += 1,
        }
    }

    /// kselftest's exit code for these totals.
    pub fn exit_code(&self) -> i32 {
        if self.fail > 0 {
            EXIT_FAIL
        } else if self.pass == 0 {
            EXIT_SKIP
        } else {
            EXIT_PASS
        }
    }

    /// The closing `# Totals:` line.
    pub fn tap_line(&self) -> String {
        format!(
            "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:0",
            self.pass, self.fail, self.skip
        )
    }
}

/// The TAP header and plan.
pub fn tap_header(n: usize) -> String {
    format!("TAP version 13\n1..{n}")
}

/// The TAP lines of case number `n` (1-based): diagnostics, the message of a
/// failure, then the result line.
pub fn tap_case(n: usize, r: &CaseReport) -> String {
    let mut out = String::new();
    for d in &r.diagnostics {
        out.push_str(&format!("# {d}\n"));
    }
    match r.verdict {
        Verdict::Pass => out.push_str(&format!("ok {n} {}", r.name)),
        Verdict::Fail => {
            for line in r.message.lines() {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("not ok {n} {}", r.name));
        }
        Verdict::Skip => {
            let reason = r.message.lines().next().unwrap_or("");
            out.push_str(&format!("ok {n} {} # SKIP {reason}", r.name));
        }
    }
    out
}

/// The JSON document of a whole run.
pub fn json(reports: &[CaseReport], totals: &Totals) -> String {
    serde_json::json!({ "cases": reports, "totals": totals }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, verdict: Verdict, message: &str) -> CaseReport {
        CaseReport {
            name: name.into(),
            verdict,
            message: message.into(),
            diagnostics: vec![],
            millis: 0,
        }
    }

    #[test]
    fn tap_lines_follow_kselftest() {
        assert_eq!(tap_header(2), "TAP version 13\n1..2");
        let mut pass = report("a.b", Verdict::Pass, "");
        pass.diagnostics.push("pio: 10 us".into());
        assert_eq!(tap_case(1, &pass), "# pio: 10 us\nok 1 a.b");
        let fail = report("a.c", Verdict::Fail, "line 1\nline 2");
        assert_eq!(tap_case(2, &fail), "# line 1\n# line 2\nnot ok 2 a.c");
        let skip = report("a.d", Verdict::Skip, "KVM_CAP_X is not supported");
        assert_eq!(
            tap_case(3, &skip),
            "ok 3 a.d # SKIP KVM_CAP_X is not supported"
        );
    }

    #[test]
    fn exit_codes_are_kselftests() {
        let mut t = Totals::default();
        t.add(Verdict::Skip);
        assert_eq!(t.exit_code(), EXIT_SKIP);
        t.add(Verdict::Pass);
        assert_eq!(t.exit_code(), EXIT_PASS);
        t.add(Verdict::Fail);
        assert_eq!(t.exit_code(), EXIT_FAIL);
        assert_eq!(
            t.tap_line(),
            "# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0"
        );
    }
}
