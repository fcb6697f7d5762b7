//! KVM memory slot numbers of one VM: the only place they come from.
//!
//! Boot RAM, the virtio-mem region (one slot per hotplug slot) and the
//! mmap-able BARs of passed-through devices each take their slots here, in
//! the order the VM is built, instead of agreeing on numbers by arithmetic.

use std::ops::Range;

use crate::{Error, Result};

/// Hands out KVM memory slot numbers, up to the host's limit.
#[derive(Debug)]
pub struct MemSlots {
    next: u32,
    limit: u32,
}

impl MemSlots {
    /// Slots `0..limit` (`limit`: `KVM_CAP_NR_MEMSLOTS`).
    pub fn new(limit: u32) -> Self {
        Self { next: 0, limit }
    }

    /// `n` consecutive unused slots for `what`; a configuration error naming
    /// `flag` when the host has too few.
    pub fn take(&mut self, n: u32, flag: &'static str, what: &str) -> Result<Range<u32>> {
        let start = self.next;
        match start.checked_add(n) {
            Some(end) if end <= self.limit => {
                self.next = end;
                Ok(start..end)
            }
            _ => Err(Error::config(
                flag,
                format!(
                    "{what} needs {n} KVM memory slots; this host has {} and {start} are taken",
                    self.limit
                ),
            )),
        }
    }

    /// Slots handed out so far.
    pub fn used(&self) -> u32 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_consecutive_and_bounded() {
        let mut s = MemSlots::new(10);
        assert_eq!(s.take(2, "--memory", "boot RAM").unwrap(), 0..2);
        assert_eq!(s.take(8, "--memory", "hotplug_size=1G").unwrap(), 2..10);
        let e = s.take(1, "--device", "a BAR").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "--device: a BAR needs 1 KVM memory slots; this host has 10 and 10 are taken"
            ),
            "{e}"
        );
        assert_eq!(s.used(), 10);
        assert!(MemSlots::new(4).take(u32::MAX, "--memory", "x").is_err());
    }
}
