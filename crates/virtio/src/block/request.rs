//! Parsing a virtio-blk request from a descriptor chain (virtio 1.2 §5.2.6).
//!
//! The device must not assume a particular framing: the 16-byte header is the
//! start of the driver-readable bytes, the status byte is the last
//! device-writable byte, and data is whatever lies between, in any number of
//! descriptors of any size.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// `VIRTIO_BLK_T_IN`
pub const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`
pub const T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`
pub const T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`
pub const T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`
pub const T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`
pub const T_WRITE_ZEROES: u32 = 13;
/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error (also for requests that are malformed or out of range).
pub const S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const S_UNSUPP: u8 = 2;
/// Most descriptors accepted in one chain.
pub const MAX_DESCRIPTORS: usize = 1024;

/// A contiguous piece of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start.
    pub addr: GuestAddress,
    /// Length.
    pub len: u32,
}

/// A request whose framing is sound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `type` from the header.
    pub kind: u32,
    /// `sector` from the header.
    pub sector: u64,
    /// Driver-readable bytes after the header (OUT data, discard ranges).
    pub readable: Vec<Segment>,
    /// Device-writable bytes before the status byte (IN data, GET_ID).
    pub writable: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Total readable data bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total writable data bytes (without the status byte).
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Why a chain is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No device-writable byte: the status cannot even be reported.
    #[error("no writable status byte")]
    NoStatus,
    /// Fewer than 16 driver-readable bytes (with the status address to report IOERR to).
    #[error("header shorter than 16 bytes")]
    ShortHeader(GuestAddress),
    /// A driver-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one")]
    WrongOrder(GuestAddress),
    /// The header could not be read from guest memory.
    #[error("header not in guest memory")]
    BadHeader(GuestAddress),
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    #[error("chain longer than {MAX_DESCRIPTORS} descriptors")]
    TooLong(GuestAddress),
}

impl ParseError {
    /// Where to write an error status, if anywhere.
    pub fn status_addr(&self) -> Option<GuestAddress> {
        match self {
            Self::NoStatus => None,
            Self::ShortHeader(a) | Self::WrongOrder(a) | Self::BadHeader(a) | Self::TooLong(a) => {
                Some(*a)
            }
        }
    }
}

/// Splits `segs` at byte `at`: (first `at` bytes, rest).
fn split(segs: &[Segment], at: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = at;
    for s in segs {
        let len = u64::from(s.len);
        if left >= len {
            head.push(*s);
            left -= len;
        } else if left == 0 {
            tail.push(*s);
        } else {
            head.push(Segment {
                addr: s.addr,
                len: left as u32,
            });
            tail.push(Segment {
                addr: GuestAddress(s.addr.0.wrapping_add(left)),
                len: (len - left) as u32,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// Reads `buf.len()` bytes from the start of `segs`.
fn read_stream<M: GuestMemory>(mem: &M, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        if mem.read_slice(&mut buf[done..done + n], s.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Parses the descriptors of one chain.
pub fn parse<M: GuestMemory>(
    descs: impl IntoIterator<Item = Descriptor>,
    mem: &M,
) -> Result<Request, ParseError> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut misordered = false;
    let mut count = 0;
    for d in descs {
        count += 1;
        if count > MAX_DESCRIPTORS {
            break;
        }
        if d.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(seg);
        } else {
            if !writable.is_empty() {
                misordered = true;
            }
            readable.push(seg);
        }
    }
    // The status byte is the last writable byte.
    let last = writable.pop().ok_or(ParseError::NoStatus)?;
    let status = last
        .addr
        .0
        .checked_add(u64::from(last.len) - 1)
        .map(GuestAddress)
        .ok_or(ParseError::NoStatus)?;
    if last.len > 1 {
        writable.push(Segment {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    if count > MAX_DESCRIPTORS {
        return Err(ParseError::TooLong(status));
    }
    if misordered {
        return Err(ParseError::WrongOrder(status));
    }
    let (header, data) = split(&readable, 16);
    if header.iter().map(|s| u64::from(s.len)).sum::<u64>() < 16 {
        return Err(ParseError::ShortHeader(status));
    }
    let mut h = [0u8; 16];
    if !read_stream(mem, &header, &mut h) {
        return Err(ParseError::BadHeader(status));
    }
    Ok(Request {
        kind: u32::from_le_bytes(h[0..4].try_into().unwrap_or_default()),
        sector: u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()),
        readable: data,
        writable,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = 2; // VRING_DESC_F_WRITE

    fn mem_with_header(kind: u32, sector: u64) -> GuestMemoryMmap {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        m.write_obj(kind, GuestAddress(0x100)).unwrap();
        m.write_obj(sector, GuestAddress(0x108)).unwrap();
        m
    }

    fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn linux_framing() {
        let m = mem_with_header(T_IN, 7);
        let r = parse([d(0x100, 16, 0), d(0x1000, 4096, W), d(0x2000, 1, W)], &m).unwrap();
        assert_eq!((r.kind, r.sector), (T_IN, 7));
        assert_eq!(
            r.writable,
            vec![Segment {
                addr: GuestAddress(0x1000),
                len: 4096
            }]
        );
        assert_eq!(r.status, GuestAddress(0x2000));
        assert!(r.readable.is_empty());
    }

    #[test]
    fn any_framing_is_accepted() {
        // Header split over two descriptors with OUT data in the second;
        // the status shares the last writable descriptor (none here: 1 byte).
        let m = mem_with_header(T_OUT, 3);
        let r = parse([d(0x100, 10, 0), d(0x10a, 6 + 512, 0), d(0x3000, 1, W)], &m).unwrap();
        assert_eq!((r.kind, r.sector), (T_OUT, 3));
        assert_eq!(
            r.readable,
            vec![Segment {
                addr: GuestAddress(0x110),
                len: 512
            }]
        );
        // IN data and status in one descriptor.
        let m = mem_with_header(T_IN, 0);
        let r = parse([d(0x100, 16, 0), d(0x4000, 513, W)], &m).unwrap();
        assert_eq!(
            r.writable,
            vec![Segment {
                addr: GuestAddress(0x4000),
                len: 512
            }]
        );
        assert_eq!(r.status, GuestAddress(0x4200));
    }

    #[test]
    fn malformed_chains_get_the_right_answer() {
        let m = mem_with_header(T_IN, 0);
        assert_eq!(parse([d(0x100, 16, 0)], &m), Err(ParseError::NoStatus));
        assert_eq!(
            parse([d(0x100, 8, 0), d(0x2000, 1, W)], &m),
            Err(ParseError::ShortHeader(GuestAddress(0x2000)))
        );
        assert_eq!(
            parse(
                [
                    d(0x100, 16, 0),
                    d(0x2000, 1, W),
                    d(0x3000, 8, 0),
                    d(0x2001, 1, W)
                ],
                &m
            ),
            Err(ParseError::WrongOrder(GuestAddress(0x2001)))
        );
        assert_eq!(
            parse([d(0xffff_0000, 16, 0), d(0x2000, 1, W)], &m),
            Err(ParseError::BadHeader(GuestAddress(0x2000)))
        );
        let long: Vec<Descriptor> = (0..MAX_DESCRIPTORS + 5)
            .map(|i| d(0x100 + i as u64, 1, W))
            .collect();
        assert!(matches!(parse(long, &m), Err(ParseError::TooLong(_))));
        assert_eq!(
            parse([d(0x100, 16, 0), d(u64::MAX, 1, W)], &m)
                .unwrap()
                .status,
            GuestAddress(u64::MAX)
        );
        assert_eq!(
            parse([d(0x100, 16, 0), d(0x2000, 0, W)], &m),
            Err(ParseError::NoStatus),
            "zero-length descriptors are skipped"
        );
    }
}
