//! KVM's binary statistics of this VM's vCPUs (KVM_GET_STATS_FD), summed
//! over vCPUs: the counters behind `GET /api/v1/vm.counters`.
//!
//! A stats fd holds a header, descriptors (type, unit, size, offset, name)
//! and a data block; values are read with pread at every query, so they are
//! current. Only single-value statistics are reported (histograms are not).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;

/// `_IO(KVMIO, 0xce)`
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
const HEADER_SIZE: usize = 24;
const DESC_FIXED: usize = 16;
/// Largest name KVM uses is 48 bytes; anything far beyond is a broken header.
const NAME_SIZE_MAX: usize = 256;
const DESC_MAX: usize = 4096;

/// One statistic: its name and where its value lives.
#[derive(Debug, Clone)]
struct Stat {
    name: String,
    offset: u64,
}

/// The stats fds of a VM's vCPUs.
#[derive(Debug, Default)]
pub struct KvmStats {
    vcpus: Vec<(File, Vec<Stat>)>,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn read_at(f: &File, len: usize, off: u64) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off)?;
    Ok(b)
}

/// Reads the header and descriptors of a stats fd.
fn descriptors(f: &File) -> std::io::Result<Vec<Stat>> {
    let h = read_at(f, HEADER_SIZE, 0)?;
    let (name_size, num_desc) = (u32_at(&h, 4) as usize, u32_at(&h, 8) as usize);
    let (desc_offset, data_offset) = (u64::from(u32_at(&h, 16)), u64::from(u32_at(&h, 20)));
    if name_size == 0 || name_size > NAME_SIZE_MAX || num_desc > DESC_MAX {
        return Err(std::io::Error::other(format!(
            "implausible KVM stats header (name_size {name_size}, {num_desc} descriptors)"
        )));
    }
    let desc_size = DESC_FIXED + name_size;
    let raw = read_at(f, desc_size * num_desc, desc_offset)?;
    Ok(raw
        .chunks_exact(desc_size)
        .filter(|d| u16::from_le_bytes([d[6], d[7]]) == 1)
        .map(|d| {
            let name = &d[DESC_FIXED..];
            let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            Stat {
                name: String::from_utf8_lossy(&name[..len]).into_owned(),
                offset: data_offset + u64::from(u32_at(d, 8)),
            }
        })
        .collect())
}

impl KvmStats {
    /// Opens the stats fd of each vCPU. Fails if the kernel has no binary
    /// stats (KVM_CAP_BINARY_STATS_FD, Linux 5.14).
    pub fn open(vcpus: &[VcpuFd]) -> std::io::Result<Self> {
        let mut out = Vec::with_capacity(vcpus.len());
        for v in vcpus {
            // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
            let fd = unsafe { libc::ioctl(v.as_raw_fd(), KVM_GET_STATS_FD, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the ioctl returned a new fd that nothing else owns.
            let f = unsafe { File::from_raw_fd(fd) };
            let stats = descriptors(&f)?;
            out.push((f, stats));
        }
        Ok(Self { vcpus: out })
    }

    /// Every single-value vCPU statistic, summed over the vCPUs.
    pub fn sum(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for (f, stats) in &self.vcpus {
            for s in stats {
                let mut b = [0u8; 8];
                if f.read_exact_at(&mut b, s.offset).is_ok() {
                    *totals.entry(s.name.clone()).or_insert(0) += u64::from_le_bytes(b);
                }
            }
        }
        totals
    }
}
