//! The migration stream: frames over one connection.
//!
//! Every frame is a 16-byte header and a payload:
//!
//! ```text
//! magic  "CRVM"   4 bytes
//! kind            1 byte   (Kind)
//! reserved        3 bytes  (zero)
//! length          4 bytes  little-endian, payload bytes (at most MAX_PAYLOAD)
//! crc32           4 bytes  little-endian, CRC-32 (IEEE) of the payload
//! ```
//!
//! The source opens with [`Kind::Hello`] (a JSON [`Hello`]: format, version,
//! architecture, page size); the destination answers every request frame
//! with [`Kind::Reply`] (JSON [`Reply`]). Memory frames are not answered:
//! each is a guest address (8 bytes, little-endian) and the page data.
//! A reader refuses a bad magic, an unknown kind, an oversized length or a
//! checksum mismatch before it uses the payload, so a damaged or foreign
//! stream ends the migration with a message instead of corrupting a guest.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"CRVM";
/// The stream's format name in [`Hello`].
pub const FORMAT: &str = "caravel-migration";
/// Version of the stream format (and of the state it carries).
pub const VERSION: u32 = 1;
/// Largest payload accepted: a memory frame of 4 MiB of pages plus its
/// address, or a state document.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Largest run of guest memory in one memory frame.
pub const MAX_MEMORY_RUN: u64 = 4 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Source -> destination, first: a JSON [`Hello`]. Answered.
    Hello = 1,
    /// The VM's shape and devices (JSON `SavedConfig`); the destination
    /// maps guest memory. Answered.
    Config = 2,
    /// Guest address (u64 LE) + page data. Not answered.
    Memory = 3,
    /// End of a pass over memory. Answered (so the source knows the
    /// destination has stored everything sent so far).
    MemoryDone = 4,
    /// The paused VM's state (JSON `VmState`): the destination builds the
    /// VM, restores and starts it. Answered.
    State = 5,
    /// The source gives up; the destination discards what it received.
    Abandon = 6,
    /// Destination -> source: a JSON [`Reply`].
    Reply = 7,
    /// Local migration: the guest memory files (their fds travel with this
    /// frame as `SCM_RIGHTS`), JSON list of sizes. Answered.
    MemoryFds = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Hello,
            2 => Self::Config,
            3 => Self::Memory,
            4 => Self::MemoryDone,
            5 => Self::State,
            6 => Self::Abandon,
            7 => Self::Reply,
            8 => Self::MemoryFds,
            _ => return None,
        })
    }
}

/// The source's opening frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// `std::env::consts::ARCH` of the source.
    pub arch: String,
    /// Host page size of the source (the dirty-page granule).
    pub page_size: u64,
    /// Local migration: memory is handed over as file descriptors.
    pub local: bool,
}

impl Hello {
    /// This Caravel's hello.
    pub fn ours(local: bool) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            arch: crate::snapshot::ARCH.into(),
            page_size: super::page_size(),
            local,
        }
    }

    /// Why this Caravel cannot take a stream that opens with `self`, if so.
    pub fn refusal(&self) -> Option<String> {
        if self.format != FORMAT {
            return Some(format!("format {:?} is not {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return Some(format!(
                "stream version {} is not the {VERSION} this Caravel reads",
                self.version
            ));
        }
        if self.arch != crate::snapshot::ARCH {
            return Some(format!(
                "the source runs {}; this is {}",
                self.arch,
                crate::snapshot::ARCH
            ));
        }
        if self.page_size != super::page_size() {
            return Some(format!(
                "the source's page size is {}; this host's is {}",
                self.page_size,
                super::page_size()
            ));
        }
        None
    }
}

/// The destination's answer to a request frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// Why the request failed; none when it succeeded.
    pub error: Option<String>,
}

/// A frame read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Its payload, checked against the header's checksum.
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended (mid-frame: the stream is truncated).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The header is not a migration frame's.
    #[error("not a Caravel migration stream (magic {0:02x?})")]
    Magic([u8; 4]),
    /// The kind byte is unknown.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The length is beyond [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is larger than the {MAX_PAYLOAD} allowed")]
    Length(u32),
    /// The payload does not match its checksum.
    #[error("checksum mismatch in a {0:?} frame: the stream is damaged")]
    Checksum(Kind),
}

/// Writes one frame of `parts` concatenated (so a memory frame's address
/// and pages need not be copied into one buffer).
pub fn write_frame(w: &mut impl Write, kind: Kind, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or_else(|| std::io::Error::other(format!("frame of {len} bytes is too large")))?;
    let mut crc = crc32fast::Hasher::new();
    parts.iter().for_each(|p| crc.update(p));
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = kind as u8;
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
    w.write_all(&header)?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Writes a frame whose payload is `value` as JSON.
pub fn write_json<T: Serialize>(w: &mut impl Write, kind: Kind, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_frame(w, kind, &[&body])
}

/// Reads one frame, checking magic, kind, length and checksum.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, FrameError> {
    let mut header = [0u8; 16];
    r.read_exact(&mut header)?;
    let magic: [u8; 4] = header[..4].try_into().unwrap_or_default();
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    let kind = Kind::from_u8(header[4]).ok_or(FrameError::Kind(header[4]))?;
    let len = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    if len > MAX_PAYLOAD {
        return Err(FrameError::Length(len));
    }
    let crc = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Err(FrameError::Checksum(kind));
    }
    Ok(Frame { kind, payload })
}

impl Frame {
    /// The payload as JSON of `T`; the message names the frame.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.payload).map_err(|e| format!("bad {:?} frame: {e}", self.kind))
    }

    /// A memory frame's guest address and pages.
    pub fn memory(&self) -> Result<(u64, &[u8]), String> {
        if self.payload.len() < 8 {
            return Err(format!(
                "memory frame of {} bytes has no address",
                self.payload.len()
            ));
        }
        let (addr, data) = self.payload.split_at(8);
        Ok((
            u64::from_le_bytes(addr.try_into().unwrap_or_default()),
            data,
        ))
    }

    /// Refuses a frame that is not of kind `want` (`doing` says what the
    /// reader expected it for).
    pub fn expect(self, want: Kind, doing: &str) -> Result<Self, String> {
        if self.kind == want {
            Ok(self)
        } else {
            Err(format!(
                "expected a {want:?} frame {doing}, got {:?}: the stream is out of order",
                self.kind
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, kind, &[payload]).unwrap();
        v
    }

    #[test]
    fn frames_round_trip_and_split_parts_are_one_payload() {
        let mut v = Vec::new();
        write_frame(
            &mut v,
            Kind::Memory,
            &[&0x1000u64.to_le_bytes(), &[7u8; 4096]],
        )
        .unwrap();
        write_json(&mut v, Kind::Reply, &Reply { error: None }).unwrap();
        let mut r = &v[..];
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f.memory().unwrap(), (0x1000, &[7u8; 4096][..]));
        let reply: Reply = read_frame(&mut r).unwrap().json().unwrap();
        assert_eq!(reply, Reply { error: None });
        assert!(matches!(read_frame(&mut r), Err(FrameError::Io(_))));
    }

    #[test]
    fn damaged_streams_are_refused_with_their_reason() {
        let good = frame_bytes(Kind::State, b"{\"x\":1}");
        // Truncated: in the header, and in the payload.
        for cut in [5, good.len() - 1] {
            let e = read_frame(&mut &good[..cut]).unwrap_err();
            assert!(matches!(e, FrameError::Io(_)), "{e}");
        }
        // A flipped payload bit.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        let e = read_frame(&mut &bad[..]).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch in a State frame"), "{e}");
        // Another protocol.
        let e = read_frame(&mut &b"GET / HTTP/1.1\r\n\r\n"[..])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("not a Caravel migration stream"), "{e}");
        // Unknown kind, oversized length (refused before allocating).
        let mut k = good.clone();
        k[4] = 99;
        assert!(matches!(read_frame(&mut &k[..]), Err(FrameError::Kind(99))));
        let mut l = good.clone();
        l[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &l[..]),
            Err(FrameError::Length(_))
        ));
        // Out of order: a State where a Hello must come first.
        let f = read_frame(&mut &good[..]).unwrap();
        let e = f.expect(Kind::Hello, "to open the stream").unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        // A memory frame without an address.
        let f = read_frame(&mut &frame_bytes(Kind::Memory, b"1234")[..]).unwrap();
        assert!(f.memory().unwrap_err().contains("no address"));
    }

    #[test]
    fn hellos_of_other_versions_and_architectures_are_refused() {
        assert_eq!(Hello::ours(false).refusal(), None);
        let v2 = Hello {
            version: 2,
            ..Hello::ours(false)
        };
        assert!(v2
            .refusal()
            .unwrap()
            .contains("stream version 2 is not the 1"));
        let other = Hello {
            arch: "riscv64".into(),
            ..Hello::ours(false)
        };
        assert!(other.refusal().unwrap().contains("the source runs riscv64"));
        let fmt = Hello {
            format: "qemu".into(),
            ..Hello::ours(false)
        };
        assert!(fmt.refusal().is_some());
    }
}
