//! One bit per block: set = plugged.

/// A fixed-size bitmap with a population count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBitmap {
    words: Vec<u64>,
    len: u64,
    count: u64,
}

impl BlockBitmap {
    /// `len` clear bits.
    pub fn new(len: u64) -> Self {
        Self {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            count: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bit `i` (false beyond the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Set bits in `[start, start + n)`.
    pub fn count_range(&self, start: u64, n: u64) -> u64 {
        let end = (start + n).min(self.len);
        let mut c = 0;
        let mut i = start;
        while i < end {
            let w = self.words[(i / 64) as usize];
            if i.is_multiple_of(64) && end - i >= 64 {
                c += u64::from(w.count_ones());
                i += 64;
            } else {
                c += (w >> (i % 64)) & 1;
                i += 1;
            }
        }
        c
    }

    /// Sets or clears every bit of `[start, start + n)`.
    pub fn set_range(&mut self, start: u64, n: u64, value: bool) {
        let end = (start + n).min(self.len);
        let mut i = start;
        while i < end {
            let word = &mut self.words[(i / 64) as usize];
            if i.is_multiple_of(64) && end - i >= 64 {
                let before = u64::from(word.count_ones());
                *word = if value { u64::MAX } else { 0 };
                let after = if value { 64 } else { 0 };
                self.count = self.count + after - before;
                i += 64;
            } else {
                let bit = 1u64 << (i % 64);
                let was = *word & bit != 0;
                if value && !was {
                    *word |= bit;
                    self.count += 1;
                } else if !value && was {
                    *word &= !bit;
                    self.count -= 1;
                }
                i += 1;
            }
        }
    }

    /// Clears everything.
    pub fn clear(&mut self) {
        self.words.fill(0);
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_counts() {
        let mut b = BlockBitmap::new(200);
        b.set_range(3, 130, true);
        assert_eq!(b.count(), 130);
        assert!(!b.get(2) && b.get(3) && b.get(132) && !b.get(133));
        assert_eq!(b.count_range(0, 200), 130);
        assert_eq!(b.count_range(60, 10), 10);
        assert_eq!(b.count_range(128, 64), 5);
        b.set_range(64, 64, false);
        assert_eq!(b.count(), 66);
        b.set_range(0, 500, true);
        assert_eq!(b.count(), 200, "clamped to the length");
        assert!(!b.get(200));
        b.clear();
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn setting_twice_counts_once() {
        let mut b = BlockBitmap::new(10);
        b.set_range(0, 5, true);
        b.set_range(2, 5, true);
        assert_eq!(b.count(), 7);
        b.set_range(0, 1, false);
        b.set_range(0, 1, false);
        assert_eq!(b.count(), 6);
    }
}
