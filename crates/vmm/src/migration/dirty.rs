//! Which guest pages a migration still has to send.
//!
//! A [`PageSet`] covers the memory a migration sends (boot RAM and the
//! plugged virtio-mem runs) with one bit per page. Dirty bitmaps from KVM
//! (pages vCPUs wrote, per memory slot) and from the devices' view of guest
//! memory (pages device models wrote, per region) are OR-ed in at their guest
//! addresses; bits that fall outside the covered memory (an unplugged block,
//! a hole) are dropped, so nothing outside it is ever sent.

/// One covered range: guest address, pages, one bit per page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    gpa: u64,
    pages: u64,
    bits: Vec<u64>,
}

/// A set of guest pages within fixed ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSet {
    page: u64,
    ranges: Vec<Range>,
}

impl PageSet {
    /// An empty set over `ranges` (guest address, length; page-aligned, not
    /// overlapping) with pages of `page` bytes (a power of two).
    pub fn new(page: u64, ranges: &[(u64, u64)]) -> Self {
        let mut ranges: Vec<Range> = ranges
            .iter()
            .filter(|(_, len)| *len > 0)
            .map(|&(gpa, len)| {
                let pages = len / page;
                Range {
                    gpa,
                    pages,
                    bits: vec![0; pages.div_ceil(64) as usize],
                }
            })
            .collect();
        ranges.sort_by_key(|r| r.gpa);
        Self { page, ranges }
    }

    /// The covered ranges as (guest address, length).
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .map(|r| (r.gpa, r.pages * self.page))
            .collect()
    }

    /// Adds every covered page.
    pub fn fill(&mut self) {
        for r in &mut self.ranges {
            let pages = r.pages;
            for (i, w) in r.bits.iter_mut().enumerate() {
                let left = pages - i as u64 * 64;
                *w = if left >= 64 { !0 } else { (1u64 << left) - 1 };
            }
        }
    }

    /// Adds the pages of `[gpa, gpa + len)` that are covered.
    pub fn add_range(&mut self, gpa: u64, len: u64) {
        let first = gpa / self.page;
        let end = gpa.saturating_add(len).div_ceil(self.page);
        self.for_covered(first, end, |r, i| {
            r.bits[(i / 64) as usize] |= 1 << (i % 64)
        });
    }

    /// ORs in a dirty bitmap (bit `n` of word `n / 64` = the page at
    /// `gpa + n * page`), as KVM and vm-memory hand them out.
    pub fn add_bitmap(&mut self, gpa: u64, bitmap: &[u64]) {
        let base = gpa / self.page;
        for (w, &word) in bitmap.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = u64::from(word.trailing_zeros());
                word &= word - 1;
                let pfn = base + w as u64 * 64 + bit;
                self.for_covered(pfn, pfn + 1, |r, i| {
                    r.bits[(i / 64) as usize] |= 1 << (i % 64)
                });
            }
        }
    }

    /// Calls `f(range, index in range)` for covered pages in `[first, end)`
    /// (page frame numbers).
    fn for_covered(&mut self, first: u64, end: u64, mut f: impl FnMut(&mut Range, u64)) {
        let page = self.page;
        for r in &mut self.ranges {
            let r_first = r.gpa / page;
            let lo = first.max(r_first);
            let hi = end.min(r_first + r.pages);
            for pfn in lo..hi {
                f(r, pfn - r_first);
            }
        }
    }

    /// Pages in the set.
    pub fn count(&self) -> u64 {
        self.ranges
            .iter()
            .flat_map(|r| &r.bits)
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// Bytes in the set.
    pub fn bytes(&self) -> u64 {
        self.count() * self.page
    }

    /// Runs of consecutive pages in the set as (guest address, length), in
    /// address order, each at most `max_len` bytes (a multiple of the page).
    pub fn runs(&self, max_len: u64) -> Vec<(u64, u64)> {
        let max_pages = (max_len / self.page).max(1);
        let mut out = Vec::new();
        for r in &self.ranges {
            let mut i = 0;
            while i < r.pages {
                let word = r.bits[(i / 64) as usize];
                if word == 0 {
                    i = (i / 64 + 1) * 64;
                    continue;
                }
                if word & (1 << (i % 64)) == 0 {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < r.pages
                    && i - start < max_pages
                    && r.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
                {
                    i += 1;
                }
                out.push((r.gpa + start * self.page, (i - start) * self.page));
            }
        }
        out
    }

    /// Empties the set (the ranges stay).
    pub fn clear(&mut self) {
        self.ranges.iter_mut().for_each(|r| r.bits.fill(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    #[test]
    fn kvm_and_device_bitmaps_merge_into_covered_pages_only() {
        // Boot RAM 0..1 MiB and one plugged run at 4 GiB + 2 MiB (2 MiB).
        let mut s = PageSet::new(P, &[(0, 1 << 20), ((4 << 30) + (2 << 20), 2 << 20)]);
        // KVM: slot at 0, pages 0, 1, 63, 64 and 255.
        s.add_bitmap(0, &[1 | 2 | (1 << 63), 1, 0, 1 << 63]);
        // Device view: a region at 4 GiB + 2 MiB, its pages 0 and 2; and a
        // slot at 4 GiB (a block not plugged): its bit 0 is outside.
        s.add_bitmap((4 << 30) + (2 << 20), &[0b101]);
        s.add_bitmap(4 << 30, &[1]);
        // The same page from both sources counts once.
        s.add_bitmap(0, &[1]);
        assert_eq!(s.count(), 7);
        assert_eq!(
            s.runs(1 << 20),
            vec![
                (0, 2 * P),
                (63 * P, 2 * P),
                (255 * P, P),
                ((4 << 30) + (2 << 20), P),
                ((4 << 30) + (2 << 20) + 2 * P, P),
            ]
        );
        s.clear();
        assert_eq!(s.count(), 0);
        assert!(s.runs(1 << 20).is_empty());
    }

    #[test]
    fn fill_and_ranges_cover_exactly_the_given_memory() {
        let mut s = PageSet::new(P, &[(1 << 20, 100 * P), (0, 64 * P)]);
        s.fill();
        assert_eq!(s.count(), 164);
        assert_eq!(s.ranges(), vec![(0, 64 * P), (1 << 20, 100 * P)]);
        // Runs are cut at max_len.
        let runs = s.runs(40 * P);
        assert_eq!(runs[0], (0, 40 * P));
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 164 * P);
        assert!(runs.iter().all(|r| r.1 <= 40 * P));
    }

    #[test]
    fn ranges_added_are_clipped() {
        let mut s = PageSet::new(P, &[(8 * P, 8 * P)]);
        s.add_range(0, 10 * P); // pages 8, 9 covered
        s.add_range(15 * P, u64::MAX); // page 15; no overflow
        assert_eq!(s.runs(u64::MAX), vec![(8 * P, 2 * P), (15 * P, P)]);
    }
}
