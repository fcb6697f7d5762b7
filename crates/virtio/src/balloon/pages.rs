//! The inflate and deflate queues' payload: arrays of little-endian 32-bit
//! page frame numbers in 4 KiB units (`VIRTIO_BALLOON_PFN_SHIFT`), whatever
//! the guest's own page size.

/// Bytes of one balloon page.
pub const PAGE_SIZE: u64 = 4096;
/// Most page numbers taken from one buffer (Linux sends at most 256).
pub const MAX_PFNS_PER_BUFFER: usize = 4096;

/// The pages of an inflate or deflate buffer as runs of consecutive page
/// frames, `(first pfn, count)`, ascending, each page once. `None` when the
/// buffer is not a whole number of page numbers.
pub fn pfn_runs(buf: &[u8]) -> Option<Vec<(u64, u64)>> {
    if !buf.len().is_multiple_of(4) {
        return None;
    }
    let mut pfns: Vec<u64> = buf
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    pfns.sort_unstable();
    pfns.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for pfn in pfns {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == pfn => *count += 1,
            _ => runs.push((pfn, 1)),
        }
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(pfns: &[u32]) -> Vec<u8> {
        pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    #[test]
    fn consecutive_pages_merge_in_any_order() {
        assert_eq!(
            pfn_runs(&buf(&[12, 10, 11, 20, 11, 21, 5])),
            Some(vec![(5, 1), (10, 3), (20, 2)])
        );
        assert_eq!(pfn_runs(&[]), Some(vec![]));
        assert_eq!(
            pfn_runs(&buf(&[u32::MAX])),
            Some(vec![(u64::from(u32::MAX), 1)])
        );
    }

    #[test]
    fn a_partial_page_number_is_refused() {
        assert_eq!(pfn_runs(&[1, 0, 0, 0, 2]), None);
    }
}
