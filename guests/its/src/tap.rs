//! TAP 13 on the UART.

use core::fmt;

use crate::hw::println;

/// Numbers the checks and counts failures.
#[derive(Default)]
pub struct Tap {
    n: u32,
    failed: u32,
}

impl Tap {
    /// Starts the report.
    pub fn new() -> Self {
        println(format_args!("TAP version 13"));
        Tap::default()
    }

    /// One check.
    pub fn check(&mut self, pass: bool, what: fmt::Arguments) -> bool {
        self.n += 1;
        if !pass {
            self.failed += 1;
        }
        let status = if pass { "ok" } else { "not ok" };
        println(format_args!("{status} {} - {what}", self.n));
        pass
    }

    /// A diagnostic line.
    pub fn diag(&self, what: fmt::Arguments) {
        println(format_args!("# {what}"));
    }

    /// The plan and a summary line.
    pub fn finish(self) {
        println(format_args!("1..{}", self.n));
        println(format_args!(
            "# SUMMARY: {} tests, {} failed",
            self.n, self.failed
        ));
    }
}
