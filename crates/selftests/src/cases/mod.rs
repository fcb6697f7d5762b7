//! The cases, by group. Each runs on a fresh VM in its own process.

use crate::check::CaseResult;

mod exits;
mod memslots;
mod resets;
mod sregs;
mod stats;
mod sync_regs;
mod vcpu;

/// Diagnostic lines a case wants printed (measurements, notes).
#[derive(Debug, Default)]
pub struct Diag {
    lines: Vec<String>,
}

impl Diag {
    /// Adds a line.
    pub fn note(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// The lines.
    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

/// One case.
#[derive(Clone, Copy)]
pub struct Case {
    /// `group.case`
    pub name: &'static str,
    /// What it checks, one line (`--list`).
    pub about: &'static str,
    /// The case.
    pub run: fn(&mut Diag) -> CaseResult,
}

/// Every case, in run order.
pub fn all() -> Vec<Case> {
    [
        sync_regs::CASES,
        resets::CASES,
        sregs::CASES,
        memslots::CASES,
        vcpu::CASES,
        stats::CASES,
        exits::CASES,
    ]
    .concat()
}

/// Host backend facts used to explain deviations.
pub fn host_backend() -> &'static str {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "kvm_pvm (the PVM software backend)"
    } else if std::path::Path::new("/sys/module/kvm_amd").exists() {
        "kvm_amd"
    } else if std::path::Path::new("/sys/module/kvm_intel").exists() {
        "kvm_intel"
    } else {
        "an unknown KVM backend"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_grouped_and_at_least_30() {
        let cases = all();
        assert!(cases.len() >= 30, "{} cases", cases.len());
        let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        assert!(names.iter().all(|n| n.split('.').count() == 2), "{names:?}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "duplicate case names");
    }
}
