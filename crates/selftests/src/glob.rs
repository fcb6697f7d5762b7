//! `--filter` patterns: `*` matches any run of characters, `?` one character;
//! several patterns may be given separated by commas.

/// Whether `name` matches one of the comma-separated `patterns`.
pub fn matches_any(patterns: &str, name: &str) -> bool {
    patterns
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| matches(p.as_bytes(), name.as_bytes()))
}

/// Whether `name` matches the glob `pat` (iterative, no backtracking blowup).
pub fn matches(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches_any("sync_regs.*", "sync_regs.race_cr4"));
        assert!(!matches_any(
            "sync_regs.*",
            "sregs.invalid_apic_base_rejected"
        ));
        assert!(matches_any("*.race_*", "sync_regs.race_exc"));
        assert!(matches_any("memslots.*,exits.p?o", "exits.pio"));
        assert!(matches_any("*", "anything"));
        assert!(!matches_any("exits.pio", "exits.pio2"));
        assert!(matches_any("a*b*c", "aXbYbZc"));
    }
}
