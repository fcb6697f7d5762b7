//! virtio-blk (virtio 1.2 §5.2) backed by a raw image file.

mod io;
mod request;

use std::fs::File;
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemory};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

pub use request::{
    parse, ParseError, Request, Segment, MAX_DESCRIPTORS, SECTOR_SIZE, S_IOERR, S_OK, S_UNSUPP,
    T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
};

use crate::device::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioDeviceCommon, VirtioInterrupt,
};
use crate::queue_util::drain;
use crate::worker::{QueueHandler, Worker};
use crate::{device_type, features};

/// `VIRTIO_BLK_F_SEG_MAX`
pub const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_BLK_SIZE`
pub const F_BLK_SIZE: u64 = 1 << 6;
/// `VIRTIO_BLK_F_FLUSH`
pub const F_FLUSH: u64 = 1 << 9;
/// `VIRTIO_BLK_F_DISCARD`
pub const F_DISCARD: u64 = 1 << 13;
/// `VIRTIO_BLK_F_WRITE_ZEROES`
pub const F_WRITE_ZEROES: u64 = 1 << 14;
/// Length of `VIRTIO_BLK_T_GET_ID`'s answer.
pub const ID_BYTES: usize = 20;
const QUEUE_SIZE: u16 = 256;
const CONFIG_LEN: usize = 60;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`
const WZ_UNMAP: u32 = 1;

/// The disk: an image file and what the guest may do with it.
pub struct Disk {
    file: File,
    capacity_sectors: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// A disk on `file` (opened read-write unless `readonly`), with serial `id`.
    pub fn new(file: File, readonly: bool, id: &str) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            log::warn!("virtio-blk: image size {len} is not a multiple of 512; the last {} bytes are not visible", len % SECTOR_SIZE);
        }
        let mut idb = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            capacity_sectors: len / SECTOR_SIZE,
            readonly,
            id: idb,
        })
    }

    /// Size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity_sectors
    }

    /// Byte range `[sector * 512, + len)` if it lies on the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.capacity_sectors * SECTOR_SIZE).then_some(start)
    }

    fn transfer<M: GuestMemory>(
        &mut self,
        mem: &M,
        segs: &[Segment],
        offset: u64,
        to_guest: bool,
    ) -> bool {
        io::transfer(&self.file, mem, segs, offset, to_guest)
    }

    fn discard_or_zero<M: GuestMemory>(&mut self, mem: &M, req: &Request, zero: bool) -> u8 {
        if self.readonly {
            return S_IOERR;
        }
        // One range per request (max_*_seg = 1): sector, num_sectors, flags.
        if req.readable_len() != 16 {
            return S_IOERR;
        }
        let mut b = [0u8; 16];
        if mem.read_slice(&mut b, req.readable[0].addr).is_err()
            && !read_segments(mem, &req.readable, &mut b)
        {
            return S_IOERR;
        }
        let sector = u64::from_le_bytes(b[0..8].try_into().unwrap_or_default());
        let count = u64::from(u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()));
        let flags = u32::from_le_bytes(b[12..16].try_into().unwrap_or_default());
        if (!zero && flags != 0) || (zero && flags & !WZ_UNMAP != 0) {
            return S_UNSUPP;
        }
        let Some(start) = self.range(sector, count * SECTOR_SIZE) else {
            return S_IOERR;
        };
        let len = count * SECTOR_SIZE;
        if !zero {
            // DISCARD is a hint: a filesystem without hole punching leaves
            // the data, which the spec allows.
            return match fallocate(&self.file, FallocateMode::PunchHole, true, start, len) {
                Ok(()) => S_OK,
                Err(e) if e.errno() == libc::EOPNOTSUPP => S_OK,
                Err(e) => {
                    devices::warn_ratelimited!("virtio-blk: discard failed: {e}");
                    S_IOERR
                }
            };
        }
        match self.write_zeroes(start, len, flags & WZ_UNMAP != 0) {
            Ok(()) => S_OK,
            Err(e) => {
                devices::warn_ratelimited!("virtio-blk: write zeroes failed: {e}");
                S_IOERR
            }
        }
    }

    /// Zeroes `[start, start + len)`: with FALLOC_FL_ZERO_RANGE (or a hole
    /// when `unmap`) where the filesystem has it, else a punched hole (tmpfs
    /// has no ZERO_RANGE), else by writing zeros.
    fn write_zeroes(&self, start: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        for punch in [unmap, !unmap] {
            let mode = if punch {
                FallocateMode::PunchHole
            } else {
                FallocateMode::ZeroRange
            };
            match fallocate(&self.file, mode, true, start, len) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == libc::EOPNOTSUPP || e.errno() == libc::EINVAL => {}
                Err(e) => return Err(std::io::Error::from_raw_os_error(e.errno())),
            }
        }
        let zeros = [0u8; 64 << 10];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(zeros.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], start + off)?;
            off += n as u64;
        }
        Ok(())
    }

    /// Carries out `req`; returns the status and the bytes written to the
    /// driver's buffers before the status byte.
    pub fn execute<M: GuestMemory>(&mut self, mem: &M, req: &Request) -> (u8, u32) {
        match req.kind {
            T_IN => {
                let len = req.writable_len();
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return (S_IOERR, 0);
                }
                match self.range(req.sector, len) {
                    Some(off) if self.transfer(mem, &req.writable, off, true) => (S_OK, len as u32),
                    _ => (S_IOERR, 0),
                }
            }
            T_OUT => {
                let len = req.readable_len();
                if self.readonly || !len.is_multiple_of(SECTOR_SIZE) {
                    return (S_IOERR, 0);
                }
                match self.range(req.sector, len) {
                    Some(off) if self.transfer(mem, &req.readable, off, false) => (S_OK, 0),
                    _ => (S_IOERR, 0),
                }
            }
            T_FLUSH => (
                if self.file.sync_data().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            T_GET_ID => {
                let n = (req.writable_len() as usize).min(ID_BYTES);
                let mut left = n;
                let mut src = 0;
                for s in &req.writable {
                    let k = (s.len as usize).min(left);
                    if k == 0 {
                        break;
                    }
                    if mem.write_slice(&self.id[src..src + k], s.addr).is_err() {
                        return (S_IOERR, 0);
                    }
                    src += k;
                    left -= k;
                }
                (S_OK, n as u32)
            }
            T_DISCARD => (self.discard_or_zero(mem, req, false), 0),
            T_WRITE_ZEROES => (self.discard_or_zero(mem, req, true), 0),
            other => {
                devices::warn_ratelimited!("virtio-blk: unsupported request type {other}");
                (S_UNSUPP, 0)
            }
        }
    }
}

fn read_segments<M: GuestMemory>(mem: &M, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        let n = (s.len as usize).min(buf.len() - done);
        if n == 0 || mem.read_slice(&mut buf[done..done + n], s.addr).is_err() {
            return done == buf.len();
        }
        done += n;
    }
    done == buf.len()
}

/// Handles one chain completely: parse, execute, write the status. Returns the
/// used length (bytes written to the driver's buffers, status included).
pub fn handle_chain<M: GuestMemory>(disk: &mut Disk, chain: DescriptorChain<&M>, mem: &M) -> u32 {
    let (status, written, status_addr) = match parse(chain, mem) {
        Ok(req) => {
            let (s, w) = disk.execute(mem, &req);
            (s, w, req.status)
        }
        Err(e) => {
            devices::warn_ratelimited!("virtio-blk: malformed request: {e}");
            match e.status_addr() {
                Some(a) => (S_IOERR, 0, a),
                None => return 0,
            }
        }
    };
    if mem.write_obj(status, status_addr).is_err() {
        devices::warn_ratelimited!(
            "virtio-blk: status byte at {:#x} not writable",
            status_addr.0
        );
        return written;
    }
    written + 1
}

struct BlockHandler {
    disk: Disk,
}

impl QueueHandler for BlockHandler {
    fn process_queue<M: GuestMemory>(
        &mut self,
        _index: u16,
        queues: &mut [ActiveQueue],
        mem: &M,
    ) -> bool {
        let disk = &mut self.disk;
        match queues.first_mut() {
            Some(q) => drain(q, mem, |chain| handle_chain(disk, chain, mem)),
            None => false,
        }
    }
}

/// The block device.
pub struct Block {
    disk: Option<Disk>,
    worker: Option<Worker<BlockHandler>>,
    features: u64,
    config: [u8; CONFIG_LEN],
}

impl Block {
    /// A block device on `disk`.
    pub fn new(disk: Disk) -> Self {
        let mut features = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH;
        if disk.readonly {
            features |= F_RO;
        } else {
            features |= F_DISCARD | F_WRITE_ZEROES;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        config[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        let max_sectors = (u32::MAX >> 9).to_le_bytes();
        config[36..40].copy_from_slice(&max_sectors); // max_discard_sectors
        config[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        config[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        config[48..52].copy_from_slice(&max_sectors); // max_write_zeroes_sectors
        config[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        Self {
            disk: Some(disk),
            worker: None,
            features,
            config,
        }
    }
}

impl VirtioDeviceCommon for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config, offset, data);
    }

    fn pause(&mut self) -> Vec<ActiveQueue> {
        match self.worker.take().and_then(Worker::stop) {
            Some(stopped) => {
                self.disk = Some(stopped.handler.disk);
                stopped.queues
            }
            None => Vec::new(),
        }
    }

    fn reset(&mut self) {
        drop(self.pause());
    }
}

impl<A: GuestAddressSpace + Send + 'static> VirtioDevice<A> for Block {
    fn activate(
        &mut self,
        mem: A,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
        _features: u64,
    ) -> Result<(), ActivateError> {
        if queues.is_empty() {
            return Err(ActivateError::BadQueue(0));
        }
        let disk = self
            .disk
            .take()
            .ok_or_else(|| ActivateError::Start("disk already in use".into()))?;
        match Worker::spawn("virtio-blk", BlockHandler { disk }, queues, mem, interrupt) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => Err(ActivateError::Start(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{chain_of, mem};
    use std::io::{Read, Seek, SeekFrom, Write};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestAddress;
    #[allow(unused_imports)]
    use vm_memory::GuestMemoryMmap;

    const W: u16 = 2;

    fn image(sectors: u64) -> File {
        let path = std::env::temp_dir().join(format!(
            "caravel-blk-{}-{sectors}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let data: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8).collect();
        f.write_all(&data).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(0x100)).unwrap();
        m.write_obj(0u32, GuestAddress(0x104)).unwrap();
        m.write_obj(sector, GuestAddress(0x108)).unwrap();
    }

    fn run(disk: &mut Disk, m: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        handle_chain(disk, chain_of(m, &raw), m)
    }

    fn status(m: &GuestMemoryMmap, at: u64) -> u8 {
        m.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn reads_and_writes_sectors() {
        let m = mem();
        let mut disk = Disk::new(image(8), false, "disk0").unwrap();
        header(&m, T_IN, 3);
        let used = run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x1000, 1024, W, 0),
                Descriptor::new(0x3000, 1, W, 0),
            ],
        );
        assert_eq!(used, 1025);
        assert_eq!(status(&m, 0x3000), S_OK);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 3);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000 + 512)).unwrap(), 4);

        m.write_slice(&[0xab; 512], GuestAddress(0x5000)).unwrap();
        header(&m, T_OUT, 7);
        let used = run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x5000, 512, 0, 0),
                Descriptor::new(0x3000, 1, W, 0),
            ],
        );
        assert_eq!((used, status(&m, 0x3000)), (1, S_OK));
        let mut back = vec![0u8; 512];
        disk.file.seek(SeekFrom::Start(7 * 512)).unwrap();
        disk.file.read_exact(&mut back).unwrap();
        assert!(
            back.iter().all(|&b| b == 0xab),
            "the host sees the guest's write"
        );
    }

    #[test]
    fn scatter_gather_across_regions_and_pages() {
        // Two adjacent regions: one segment crosses the boundary at 0x8000.
        let m: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x8000),
            (GuestAddress(0x8000), 0x8000),
        ])
        .unwrap();
        let mut disk = Disk::new(image(16), false, "sg").unwrap();
        let segs = [
            Segment {
                addr: GuestAddress(0x7e00),
                len: 1024,
            }, // crosses the regions
            Segment {
                addr: GuestAddress(0x1000),
                len: 512,
            },
            Segment {
                addr: GuestAddress(0x3000),
                len: 2048,
            },
        ];
        let req = Request {
            kind: T_IN,
            sector: 2,
            readable: vec![],
            writable: segs.to_vec(),
            status: GuestAddress(0x10),
        };
        assert_eq!(disk.execute(&m, &req), (S_OK, 3584));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x7e00)).unwrap(), 2);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x8100)).unwrap(),
            3,
            "second sector, in the other region"
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 4);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3000 + 1536)).unwrap(),
            8,
            "sectors 5-8 in the third segment"
        );
        // And back out to sectors 0..7 in the same shape.
        let req = Request {
            kind: T_OUT,
            sector: 0,
            readable: segs.to_vec(),
            writable: vec![],
            status: GuestAddress(0x10),
        };
        assert_eq!(disk.execute(&m, &req), (S_OK, 0));
        let mut back = vec![0u8; 7 * 512];
        disk.file.seek(SeekFrom::Start(0)).unwrap();
        disk.file.read_exact(&mut back).unwrap();
        assert_eq!(
            (back[0], back[512], back[1024], back[1536], back[3072]),
            (2, 3, 4, 5, 8)
        );
    }

    #[test]
    fn out_of_range_and_partial_sectors_are_io_errors() {
        let m = mem();
        let mut disk = Disk::new(image(8), false, "d").unwrap();
        for (kind, sector, len, flags) in [
            (T_IN, 8, 512, W),
            (T_IN, 7, 1024, W),
            (T_IN, u64::MAX / 256, 512, W),
            (T_IN, 0, 100, W),
            (T_OUT, 8, 512, 0),
        ] {
            header(&m, kind, sector);
            run(
                &mut disk,
                &m,
                &[
                    Descriptor::new(0x100, 16, 0, 0),
                    Descriptor::new(0x1000, len, flags, 0),
                    Descriptor::new(0x3000, 1, W, 0),
                ],
            );
            assert_eq!(
                status(&m, 0x3000),
                S_IOERR,
                "type {kind} sector {sector} len {len}"
            );
        }
    }

    #[test]
    fn read_only_refuses_writes_and_discards() {
        let m = mem();
        let mut disk = Disk::new(image(8), true, "ro").unwrap();
        for kind in [T_OUT, T_DISCARD, T_WRITE_ZEROES] {
            header(&m, kind, 0);
            run(
                &mut disk,
                &m,
                &[
                    Descriptor::new(0x100, 16, 0, 0),
                    Descriptor::new(0x5000, 512, 0, 0),
                    Descriptor::new(0x3000, 1, W, 0),
                ],
            );
            assert_eq!(status(&m, 0x3000), S_IOERR, "type {kind}");
        }
        assert_ne!(
            Block::new(Disk::new(image(1), true, "ro").unwrap()).features() & F_RO,
            0
        );
    }

    #[test]
    fn get_id_flush_and_unknown_types() {
        let m = mem();
        let mut disk = Disk::new(image(1), false, "caravel-disk0").unwrap();
        header(&m, T_GET_ID, 0);
        let used = run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x6000, 20, W, 0),
                Descriptor::new(0x3000, 1, W, 0),
            ],
        );
        assert_eq!(used, 21);
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x6000)).unwrap();
        assert_eq!(&id[..13], b"caravel-disk0");
        header(&m, T_FLUSH, 0);
        run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x3000, 1, W, 0),
            ],
        );
        assert_eq!(status(&m, 0x3000), S_OK);
        header(&m, 99, 0);
        run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x3000, 1, W, 0),
            ],
        );
        assert_eq!(status(&m, 0x3000), S_UNSUPP);
    }

    #[test]
    fn discard_and_write_zeroes() {
        let m = mem();
        let mut disk = Disk::new(image(8), false, "d").unwrap();
        for (kind, flags, want) in [
            (T_WRITE_ZEROES, 0u32, S_OK),
            (T_DISCARD, 0, S_OK),
            (T_DISCARD, 1, S_UNSUPP),
            (T_WRITE_ZEROES, 2, S_UNSUPP),
        ] {
            header(&m, kind, 0);
            m.write_obj(2u64, GuestAddress(0x5000)).unwrap();
            m.write_obj(1u32, GuestAddress(0x5008)).unwrap();
            m.write_obj(flags, GuestAddress(0x500c)).unwrap();
            run(
                &mut disk,
                &m,
                &[
                    Descriptor::new(0x100, 16, 0, 0),
                    Descriptor::new(0x5000, 16, 0, 0),
                    Descriptor::new(0x3000, 1, W, 0),
                ],
            );
            assert_eq!(status(&m, 0x3000), want, "type {kind} flags {flags}");
        }
        let mut back = vec![0xffu8; 512];
        disk.file.seek(SeekFrom::Start(2 * 512)).unwrap();
        disk.file.read_exact(&mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0), "sector 2 reads zero");
    }

    #[test]
    fn hostile_chains_never_panic() {
        let m = mem();
        let mut disk = Disk::new(image(8), false, "d").unwrap();
        header(&m, T_IN, 0);
        // No status byte: nothing can be reported, used length 0.
        assert_eq!(run(&mut disk, &m, &[Descriptor::new(0x100, 16, 0, 0)]), 0);
        // Data buffer outside guest memory.
        run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0xdead_0000_0000, 512, W, 0),
                Descriptor::new(0x3000, 1, W, 0),
            ],
        );
        assert_eq!(status(&m, 0x3000), S_IOERR);
        // Status outside memory: request is dropped with what was written.
        run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0xdead_0000_0000, 1, W, 0),
            ],
        );
        // Wrong direction: data readable for an IN is a framing error.
        run(
            &mut disk,
            &m,
            &[
                Descriptor::new(0x100, 16, 0, 0),
                Descriptor::new(0x3000, 1, W, 0),
                Descriptor::new(0x1000, 512, 0, 0),
                Descriptor::new(0x3001, 1, W, 0),
            ],
        );
        assert_eq!(status(&m, 0x3001), S_IOERR);
    }

    #[test]
    fn config_space_reports_capacity_and_limits() {
        let b = Block::new(Disk::new(image(8), false, "d").unwrap());
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), 254);
        let mut far = [0xffu8; 4];
        b.read_config(58, &mut far);
        assert_eq!(far, [0; 4], "reads past the end return zeros");
        assert_ne!(b.features() & F_DISCARD, 0);
    }
}
