//! The `memory` file of a snapshot: every guest memory region at its place
//! in the file (regions back to back, in guest-address order), written
//! sparse. Boot RAM is stored except its all-zero pages; the virtio-mem
//! region stores only plugged blocks. On restore only the file's data
//! extents (`SEEK_DATA`/`SEEK_HOLE`) are read, so holes cost neither time
//! nor host memory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;

/// One guest memory region and where it is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
}

/// The regions of `mem`, in order.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<SavedRegion> {
    mem.iter()
        .map(|r| SavedRegion {
            gpa: r.start_addr().0,
            size: r.len(),
        })
        .collect()
}

/// The parts of `region` a snapshot stores: all of it, or for the
/// virtio-mem region (starting at `hotplug.0`) its plugged runs.
fn stored_ranges(region: SavedRegion, hotplug: Option<(u64, &[(u64, u64)])>) -> Vec<(u64, u64)> {
    match hotplug {
        Some((base, runs)) if base == region.gpa => runs
            .iter()
            .filter(|&&(o, l)| o.checked_add(l).is_some_and(|e| e <= region.size))
            .copied()
            .collect(),
        _ => vec![(0, region.size)],
    }
}

/// Writes guest memory into `file` (empty, fresh). Returns the bytes
/// written (data, without holes).
pub fn write(
    file: &File,
    mem: &GuestMemoryMmap,
    hotplug: Option<(u64, &[(u64, u64)])>,
) -> Result<u64, String> {
    let total: u64 = regions(mem).iter().map(|r| r.size).sum();
    file.set_len(total)
        .map_err(|e| format!("memory file: cannot size it: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_base = 0u64;
    let mut written = 0u64;
    for region in regions(mem) {
        for (offset, len) in stored_ranges(region, hotplug) {
            let mut done = 0u64;
            while done < len {
                let n = CHUNK.min((len - done) as usize);
                let at = offset + done;
                mem.read_slice(&mut buf[..n], GuestAddress(region.gpa + at))
                    .map_err(|e| format!("reading guest memory at {:#x}: {e}", region.gpa + at))?;
                written += write_nonzero_pages(file, &buf[..n], file_base + at)?;
                done += n as u64;
            }
        }
        file_base += region.size;
    }
    Ok(written)
}

/// Writes the pages of `data` that are not all zero at `file_offset`
/// onward, coalescing neighbours into one write.
fn write_nonzero_pages(file: &File, data: &[u8], file_offset: u64) -> Result<u64, String> {
    let mut written = 0;
    let mut run: Option<usize> = None;
    let pages = data.len().div_ceil(PAGE);
    for p in 0..=pages {
        let page = data.get(p * PAGE..((p + 1) * PAGE).min(data.len()));
        let nonzero = page.is_some_and(|b| b.iter().any(|&x| x != 0));
        match (nonzero, run) {
            (true, None) => run = Some(p * PAGE),
            (false, Some(start)) => {
                let end = (p * PAGE).min(data.len());
                file.write_all_at(&data[start..end], file_offset + start as u64)
                    .map_err(|e| format!("memory file: write failed: {e}"))?;
                written += (end - start) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// `lseek(fd, offset, whence)` for `SEEK_DATA`/`SEEK_HOLE`; `None` when
/// there is no more data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> Result<Option<u64>, String> {
    // SAFETY: lseek(2) on an fd we own; it only moves the file offset
    // (which nothing else here uses: reads are positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(format!("memory file: lseek: {e}"));
    }
    Ok(Some(r as u64))
}

/// The data extents of `file` inside `[start, end)`.
fn data_extents(file: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let Some(data) = seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}

/// Calls `f(region, host region, file offset of the region, extent)` for
/// every data extent of `file` that a snapshot of `mem` stores (in the
/// virtio-mem region: inside plugged runs), after checking that `mem` has
/// the saved regions. Returns the sum of what `f` returns.
fn for_each_extent<F>(
    file: &File,
    mem: &GuestMemoryMmap,
    saved: &[SavedRegion],
    hotplug: Option<(u64, &[(u64, u64)])>,
    mut f: F,
) -> Result<u64, String>
where
    F: FnMut(SavedRegion, &vm_memory::GuestRegionMmap, u64, (u64, u64)) -> Result<u64, String>,
{
    let ours = regions(mem);
    if ours != saved {
        return Err(format!(
            "the snapshot's memory regions {saved:x?} are not this VM's {ours:x?}"
        ));
    }
    let mut file_base = 0u64;
    let mut total = 0u64;
    for (region, host) in ours.into_iter().zip(mem.iter()) {
        for (offset, len) in stored_ranges(region, hotplug) {
            let (start, end) = (file_base + offset, file_base + offset + len);
            for extent in data_extents(file, start, end)? {
                total += f(region, host, file_base, extent)?;
            }
        }
        file_base += region.size;
    }
    Ok(total)
}

/// Reads a snapshot's memory file into `mem` (same regions as `saved`):
/// only data extents, and in the virtio-mem region only plugged runs.
/// Returns the bytes read.
pub fn read(
    file: &File,
    mem: &GuestMemoryMmap,
    saved: &[SavedRegion],
    hotplug: Option<(u64, &[(u64, u64)])>,
) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    for_each_extent(
        file,
        mem,
        saved,
        hotplug,
        |region, _, file_base, (mut a, b)| {
            let mut read = 0;
            while a < b {
                let n = CHUNK.min((b - a) as usize);
                file.read_exact_at(&mut buf[..n], a)
                    .map_err(|e| format!("memory file: read at {a:#x}: {e}"))?;
                let gpa = region.gpa + (a - file_base);
                mem.write_slice(&buf[..n], GuestAddress(gpa))
                    .map_err(|e| format!("writing guest memory at {gpa:#x}: {e}"))?;
                read += n as u64;
                a += n as u64;
            }
            Ok(read)
        },
    )
}

/// Maps the memory file's data into `mem` instead of reading it: each data
/// extent (in the virtio-mem region: of the plugged runs) replaces the
/// guest memory behind it with a private mapping of the file, so pages are
/// read from the file when the guest first touches them and copied on its
/// first write (Firecracker's restore). Only for private anonymous guest
/// memory, before anything (vCPU or device) uses `mem`. Returns the bytes
/// mapped.
pub fn map(
    file: &File,
    mem: &GuestMemoryMmap,
    saved: &[SavedRegion],
    hotplug: Option<(u64, &[(u64, u64)])>,
) -> Result<u64, String> {
    let page = PAGE as u64;
    for_each_extent(
        file,
        mem,
        saved,
        hotplug,
        |region, host_region, file_base, (a, b)| {
            // Whole pages: extents start and end on page boundaries except at
            // a file's end, which is a region's end.
            let (a, b) = (a / page * page, b.div_ceil(page) * page);
            let at = a - file_base;
            let len = (b - a).min(region.size - at);
            let host = host_region
                .get_host_address(vm_memory::MemoryRegionAddress(at))
                .map_err(|e| format!("guest memory at {:#x}: {e}", region.gpa + at))?;
            // SAFETY: `host..host + len` lies inside this region's mapping
            // (`at + len <= region.size`, checked by get_host_address and the
            // min above), which the VM's GuestRam owns and unmaps as a whole
            // when it goes. Nothing uses guest memory yet (no vCPU runs, no
            // device is active), and vm-memory reaches it only through raw
            // pointers, so no reference sees the pages change. MAP_FIXED
            // replaces exactly that range with a private file mapping of the
            // same size and protection.
            let p = unsafe {
                libc::mmap(
                    host.cast(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    file.as_raw_fd(),
                    a as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED || p != host.cast() {
                return Err(format!(
                    "cannot map the memory file at {a:#x}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(len)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 4 << 20),
            (GuestAddress(1 << 30), 8 << 20),
        ])
        .unwrap()
    }

    #[test]
    fn holes_for_zero_pages_and_unplugged_blocks_and_data_comes_back() {
        let m = mem();
        m.write_slice(b"boot", GuestAddress(0x1000)).unwrap();
        m.write_slice(b"end of boot", GuestAddress((4 << 20) - 11))
            .unwrap();
        // The second region is the virtio-mem region: block 1 (2 MiB) is
        // plugged, block 2 is not (its data must not be stored).
        m.write_slice(b"plugged", GuestAddress((1 << 30) + (2 << 20) + 5))
            .unwrap();
        m.write_slice(b"unplugged", GuestAddress((1 << 30) + (4 << 20)))
            .unwrap();
        let runs = [(2u64 << 20, 2u64 << 20)];
        let hot = Some((1u64 << 30, &runs[..]));
        let file = tempfile();
        let written = write(&file, &m, hot).unwrap();
        assert_eq!(written, 3 * PAGE as u64, "three non-zero pages");
        let md = file.metadata().unwrap();
        assert_eq!(md.len(), 12 << 20);
        assert!(
            md.blocks() * 512 <= 64 * 1024,
            "sparse: {} bytes allocated",
            md.blocks() * 512
        );

        let fresh = mem();
        let got = read(&file, &fresh, &regions(&fresh), hot).unwrap();
        assert!(got >= 3 * PAGE as u64);
        let mut b = [0u8; 11];
        fresh.read_slice(&mut b[..4], GuestAddress(0x1000)).unwrap();
        assert_eq!(&b[..4], b"boot");
        fresh
            .read_slice(&mut b, GuestAddress((4 << 20) - 11))
            .unwrap();
        assert_eq!(&b, b"end of boot");
        fresh
            .read_slice(&mut b[..7], GuestAddress((1 << 30) + (2 << 20) + 5))
            .unwrap();
        assert_eq!(&b[..7], b"plugged");
        fresh
            .read_slice(&mut b[..9], GuestAddress((1 << 30) + (4 << 20)))
            .unwrap();
        assert_eq!(&b[..9], &[0u8; 9], "an unplugged block comes back empty");
    }

    #[test]
    fn a_mapped_file_shows_the_same_memory_and_writes_stay_private() {
        let m = mem();
        m.write_slice(b"boot", GuestAddress(0x1000)).unwrap();
        m.write_slice(b"plugged", GuestAddress((1 << 30) + (2 << 20) + 5))
            .unwrap();
        m.write_slice(b"unplugged", GuestAddress((1 << 30) + (4 << 20)))
            .unwrap();
        let runs = [(2u64 << 20, 2u64 << 20)];
        let hot = Some((1u64 << 30, &runs[..]));
        let file = tempfile();
        write(&file, &m, hot).unwrap();
        let fresh = mem();
        let mapped = map(&file, &fresh, &regions(&fresh), hot).unwrap();
        assert_eq!(mapped, 2 * PAGE as u64, "two data pages mapped");
        let mut b = [0u8; 9];
        fresh.read_slice(&mut b[..4], GuestAddress(0x1000)).unwrap();
        assert_eq!(&b[..4], b"boot");
        fresh
            .read_slice(&mut b[..7], GuestAddress((1 << 30) + (2 << 20) + 5))
            .unwrap();
        assert_eq!(&b[..7], b"plugged");
        fresh
            .read_slice(&mut b, GuestAddress((1 << 30) + (4 << 20)))
            .unwrap();
        assert_eq!(b, [0u8; 9], "an unplugged block is not mapped");
        // A guest write changes its copy, not the snapshot.
        fresh.write_slice(b"BOOT", GuestAddress(0x1000)).unwrap();
        let again = mem();
        read(&file, &again, &regions(&again), hot).unwrap();
        again.read_slice(&mut b[..4], GuestAddress(0x1000)).unwrap();
        assert_eq!(&b[..4], b"boot");
    }

    #[test]
    fn other_regions_are_refused() {
        let m = mem();
        let file = tempfile();
        write(&file, &m, None).unwrap();
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let err = read(&file, &small, &regions(&m), None).unwrap_err();
        assert!(err.contains("not this VM's"), "{err}");
    }

    fn tempfile() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "caravel-memfile-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
