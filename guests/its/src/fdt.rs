//! Just enough of the flattened device tree to read `/chosen/bootargs`.

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
/// The boot protocol's limit on the DTB size.
const MAX_SIZE: usize = 2 << 20;

fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn cstr(b: &[u8], off: usize) -> Option<&[u8]> {
    let s = b.get(off..)?;
    Some(&s[..s.iter().position(|&c| c == 0)?])
}

/// The bytes of `/chosen/bootargs` (without the NUL), if the tree has them.
pub fn bootargs(dtb: u64) -> Option<&'static [u8]> {
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return None;
    }
    // SAFETY: the boot protocol puts a DTB (at most 2 MiB) at x0, in RAM;
    // only its header is read before its own size bounds the slice.
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) };
    if be32(header, 0)? != MAGIC {
        return None;
    }
    let total = (be32(header, 4)? as usize).min(MAX_SIZE);
    // SAFETY: as above, `total` bytes from the header's own size field.
    let b: &'static [u8] = unsafe { core::slice::from_raw_parts(dtb as *const u8, total) };
    let structs = be32(b, 8)? as usize;
    let strings = be32(b, 12)? as usize;
    let (mut pos, mut depth, mut in_chosen) = (structs, 0u32, false);
    while pos + 4 <= total {
        let token = be32(b, pos)?;
        pos += 4;
        match token {
            BEGIN_NODE => {
                let name = cstr(b, pos)?;
                depth += 1;
                in_chosen = depth == 2 && name == b"chosen";
                pos += (name.len() + 4) & !3;
            }
            END_NODE => {
                in_chosen = false;
                depth = depth.checked_sub(1)?;
            }
            PROP => {
                let len = be32(b, pos)? as usize;
                let name = cstr(b, strings + be32(b, pos + 4)? as usize)?;
                pos += 8;
                if in_chosen && name == b"bootargs" {
                    let v = b.get(pos..pos + len)?;
                    return Some(v.strip_suffix(&[0]).unwrap_or(v));
                }
                pos += (len + 3) & !3;
            }
            NOP => {}
            END => return None,
            _ => return None,
        }
    }
    None
}
