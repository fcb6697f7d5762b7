//! The guest's memory statistics (virtio 1.2 §5.5.6.3): an array of
//! `struct virtio_balloon_stat { le16 tag; le64 val; }`, packed, that the
//! driver sends on the statistics queue whenever the device hands its
//! buffer back.

use serde::{Deserialize, Serialize};

/// Bytes of one statistic.
pub const STAT_LEN: usize = 10;
/// Most statistics read from one buffer (the spec defines 10, Linux 6.12
/// sends 16); more are ignored.
pub const MAX_STATS: usize = 32;

/// The guest's statistics, with Firecracker's field names (`GET
/// /balloon/statistics`). A statistic the guest did not send is absent.
/// Memory amounts are in bytes, the others are counts (swap amounts are
/// bytes: the driver converts pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryStats {
    /// `VIRTIO_BALLOON_S_SWAP_IN` (tag 0): memory swapped in, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// `VIRTIO_BALLOON_S_SWAP_OUT` (1): memory swapped out, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// `VIRTIO_BALLOON_S_MAJFLT` (2): major page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// `VIRTIO_BALLOON_S_MINFLT` (3): minor page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// `VIRTIO_BALLOON_S_MEMFREE` (4): memory the guest does not use at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// `VIRTIO_BALLOON_S_MEMTOT` (5): memory the guest manages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// `VIRTIO_BALLOON_S_AVAIL` (6): the guest's estimate of memory
    /// available to new programs without swapping (`MemAvailable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// `VIRTIO_BALLOON_S_CACHES` (7): page cache that can be dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// `VIRTIO_BALLOON_S_HTLB_PGALLOC` (8): hugetlb page allocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// `VIRTIO_BALLOON_S_HTLB_PGFAIL` (9): failed hugetlb allocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// `VIRTIO_BALLOON_S_OOM_KILL` (10): processes killed by the OOM killer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// `VIRTIO_BALLOON_S_ALLOC_STALL` (11): allocation stalls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
}

impl GuestMemoryStats {
    /// Reads a statistics buffer; unknown tags and a trailing partial entry
    /// are ignored, and only the first [`MAX_STATS`] entries count. A later
    /// entry with the same tag replaces an earlier one.
    pub fn parse(buf: &[u8]) -> Self {
        let mut s = Self::default();
        for entry in buf.chunks_exact(STAT_LEN).take(MAX_STATS) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&entry[2..10]);
            let val = Some(u64::from_le_bytes(v));
            match tag {
                0 => s.swap_in = val,
                1 => s.swap_out = val,
                2 => s.major_faults = val,
                3 => s.minor_faults = val,
                4 => s.free_memory = val,
                5 => s.total_memory = val,
                6 => s.available_memory = val,
                7 => s.disk_caches = val,
                8 => s.hugetlb_allocations = val,
                9 => s.hugetlb_failures = val,
                10 => s.oom_kill = val,
                11 => s.alloc_stall = val,
                _ => {}
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn known_tags_fill_their_fields() {
        let mut buf = Vec::new();
        for (tag, val) in [(5u16, 1u64 << 30), (6, 700 << 20), (2, 42), (99, 7), (4, 5)] {
            buf.extend(entry(tag, val));
        }
        buf.extend_from_slice(&[1, 2, 3]); // partial entry
        let s = GuestMemoryStats::parse(&buf);
        assert_eq!(s.total_memory, Some(1 << 30));
        assert_eq!(s.available_memory, Some(700 << 20));
        assert_eq!(s.major_faults, Some(42));
        assert_eq!(s.free_memory, Some(5));
        assert_eq!(s.swap_in, None);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["available_memory"], 700 << 20);
        assert!(
            json.get("swap_in").is_none(),
            "absent statistics are left out"
        );
    }

    #[test]
    fn only_the_first_entries_count() {
        let mut buf = Vec::new();
        for _ in 0..MAX_STATS {
            buf.extend(entry(99, 0));
        }
        buf.extend(entry(5, 1));
        assert_eq!(GuestMemoryStats::parse(&buf).total_memory, None);
    }
}
