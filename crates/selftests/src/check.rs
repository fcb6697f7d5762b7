//! Case outcomes and host-side assertions.
//!
//! A case returns `Ok(())` to pass or a [`Failure`]: `Fail` with a message
//! that shows both values, each in the width of its type (a u32 register as
//! eight hex digits, a u64 as sixteen), or `Skip` naming what is missing.
//! The kernel selftests' March 2020 fixes were exactly these messages
//! printed with the wrong format; here the width comes from the type.

use std::fmt;

/// Why a case did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host's KVM did not behave as its API promises.
    Fail(String),
    /// The case cannot run here (a capability is missing).
    Skip(String),
}

/// What a case returns.
pub type CaseResult = Result<(), Failure>;

/// A value shown in an assertion message.
pub trait Shown {
    /// Writes the value.
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

macro_rules! shown_hex {
    ($($t:ty => $w:literal),+) => {$(
        impl Shown for $t {
            fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#0w$x}", self, w = $w)
            }
        }
    )+};
}
shown_hex!(u8 => 4, u16 => 6, u32 => 10, u64 => 18, usize => 18);

macro_rules! shown_display {
    ($($t:ty),+) => {$(
        impl Shown for $t {
            fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{self}")
            }
        }
    )+};
}
shown_display!(i16, i32, i64, bool, &str, String);

impl<T: Shown> Shown for Option<T> {
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Some(v) => v.show(f),
            None => write!(f, "none"),
        }
    }
}

impl<T: Shown> Shown for Vec<T> {
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            v.show(f)?;
        }
        write!(f, "]")
    }
}

impl<A: Shown, B: Shown> Shown for (A, B) {
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        self.0.show(f)?;
        write!(f, ", ")?;
        self.1.show(f)?;
        write!(f, ")")
    }
}

impl<A: Shown, B: Shown, C: Shown> Shown for (A, B, C) {
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        self.0.show(f)?;
        write!(f, ", ")?;
        self.1.show(f)?;
        write!(f, ", ")?;
        self.2.show(f)?;
        write!(f, ")")
    }
}

/// Display adapter for [`Shown`] values.
pub struct Show<'a, T: Shown>(pub &'a T);

impl<T: Shown> fmt::Display for Show<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.show(f)
    }
}

/// Fails the case unless `$got == $want`; the message names what was
/// compared and shows both values.
#[macro_export]
macro_rules! check_eq {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            return Err($crate::check::Failure::Fail(format!(
                "{}: got {}, expected {}",
                format!($($what)+),
                $crate::check::Show(got),
                $crate::check::Show(want)
            )));
        }
    }};
}

/// Fails the case with a formatted message unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::check::Failure::Fail(format!($($msg)+)));
        }
    };
}

/// Skips the case with a formatted reason unless the condition holds (the
/// selftests' TEST_REQUIRE).
#[macro_export]
macro_rules! require {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::check::Failure::Skip(format!($($msg)+)));
        }
    };
}

/// Turns an ioctl error into a failure naming the ioctl.
pub trait IoctlContext<T> {
    /// `Err(e)` becomes `Fail("<what> failed: <e>")`.
    fn ctx(self, what: &str) -> Result<T, Failure>;
}

impl<T> IoctlContext<T> for Result<T, vmm_sys_util::errno::Error> {
    fn ctx(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::Fail(format!("{what} failed: {e}")))
    }
}

/// Expects an ioctl to fail with `errno`; fails the case otherwise.
pub fn expect_errno<T>(
    r: Result<T, vmm_sys_util::errno::Error>,
    errno: i32,
    what: &str,
) -> CaseResult {
    match r {
        Ok(_) => Err(Failure::Fail(format!(
            "{what} succeeded, expected {}",
            errno_name(errno)
        ))),
        Err(e) if e.errno() == errno => Ok(()),
        Err(e) => Err(Failure::Fail(format!(
            "{what} failed with {} ({e}), expected {}",
            errno_name(e.errno()),
            errno_name(errno)
        ))),
    }
}

/// The symbolic name of the errno values the cases expect.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::E2BIG => "E2BIG",
        libc::EINTR => "EINTR",
        libc::EFAULT => "EFAULT",
        libc::ENOENT => "ENOENT",
        libc::EPERM => "EPERM",
        libc::ENXIO => "ENXIO",
        libc::EBUSY => "EBUSY",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {errno}"),
    };
    name.into()
}

/// Fails unless two kernel structs are equal; the message lists the fields
/// that differ (from their `{:#?}` renderings), as `what: field a != b`.
pub fn check_same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T, what: &str) -> CaseResult {
    if a == b {
        return Ok(());
    }
    let (ra, rb) = (format!("{a:#?}"), format!("{b:#?}"));
    let diffs: Vec<String> = ra
        .lines()
        .zip(rb.lines())
        .filter(|(x, y)| x != y)
        .take(6)
        .map(|(x, y)| format!("{} != {}", x.trim(), y.trim().trim_end_matches(',')))
        .collect();
    Err(Failure::Fail(format!(
        "{what} differ: {}",
        diffs.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(got: u32, want: u32) -> CaseResult {
        check_eq!(got, want, "CR{} of vCPU {}", 0, 1);
        Ok(())
    }

    #[test]
    fn messages_show_both_values_in_the_width_of_their_type() {
        assert_eq!(compare(1, 1), Ok(()));
        assert_eq!(
            compare(0x60000010, 0x10),
            Err(Failure::Fail(
                "CR0 of vCPU 1: got 0x60000010, expected 0x00000010".into()
            ))
        );
        assert_eq!(Show(&0xfu64).to_string(), "0x000000000000000f");
        assert_eq!(Show(&0xfu8).to_string(), "0x0f");
        assert_eq!(Show(&vec![1u16, 2]).to_string(), "[0x0001, 0x0002]");
        assert_eq!(Show(&-22i32).to_string(), "-22");
    }

    #[test]
    fn errno_expectations() {
        let einval: Result<(), _> = Err(vmm_sys_util::errno::Error::new(libc::EINVAL));
        assert_eq!(expect_errno(einval, libc::EINVAL, "x"), Ok(()));
        let eexist: Result<(), _> = Err(vmm_sys_util::errno::Error::new(libc::EEXIST));
        let Err(Failure::Fail(m)) = expect_errno(eexist, libc::EINVAL, "KVM_SET_X") else {
            panic!("must fail");
        };
        assert!(m.starts_with("KVM_SET_X failed with EEXIST"), "{m}");
        assert_eq!(
            expect_errno(Ok(()), libc::E2BIG, "KVM_GET_CPUID2"),
            Err(Failure::Fail(
                "KVM_GET_CPUID2 succeeded, expected E2BIG".into()
            ))
        );
    }
}
