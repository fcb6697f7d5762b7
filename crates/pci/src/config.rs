//! A function's configuration space.

/// Offset of the first BAR.
pub const BAR0: usize = 0x10;
/// Capabilities pointer.
const CAP_POINTER: usize = 0x34;
/// First byte of the capability area.
const CAP_START: usize = 0x40;
/// First extended capability.
const EXT_CAP_START: usize = 0x100;
/// Status register: capabilities list present.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Command register bits a guest may set: I/O, memory, bus master, SERR,
/// parity error response, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Status register bits that are write-1-to-clear (parity, aborts, SERR).
const STATUS_W1C: u16 = 0xf900;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space (takes two BAR slots).
    Mem64,
}

/// One BAR of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR number (0-5).
    pub index: u8,
    /// Decoding.
    pub kind: BarKind,
    /// Size in bytes (power of two).
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Current address.
    pub addr: u64,
}

/// A guest moved a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// BAR number.
    pub index: u8,
    /// Previous address.
    pub old: u64,
    /// New address.
    pub new: u64,
    /// Size.
    pub size: u64,
    /// Decoding.
    pub kind: BarKind,
}

/// Class code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciClass {
    /// Base class.
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
}

/// 4 KiB of configuration space with per-bit write rules.
#[derive(Clone)]
pub struct ConfigSpace {
    data: Box<[u8; 4096]>,
    /// Bits the guest may change.
    wmask: Box<[u8; 4096]>,
    /// Bits the guest clears by writing 1.
    w1c: Box<[u8; 4096]>,
    bars: [Option<Bar>; 6],
    last_cap: Option<usize>,
    next_cap: usize,
    last_ext_cap: Option<usize>,
    next_ext_cap: usize,
    /// Low dwords of 64-bit BARs written since the high dword was.
    pending_low: [bool; 6],
}

/// Saved configuration space: the register bytes and where each BAR is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigSpaceState {
    /// The 4 KiB of registers, trailing zero bytes left out.
    pub data: Vec<u8>,
    /// Address of each implemented BAR, by BAR number.
    pub bars: Vec<(u8, u64)>,
    /// 64-bit BARs whose low dword was written without the high one.
    pub pending_low: [bool; 6],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:04x}", self.read_u16(0)))
            .field("device", &format_args!("{:04x}", self.read_u16(2)))
            .field("bars", &self.bars)
            .finish()
    }
}

impl ConfigSpace {
    /// A type 0 header.
    pub fn new(
        vendor: u16,
        device: u16,
        class: PciClass,
        revision: u8,
        subsystem_vendor: u16,
        subsystem: u16,
    ) -> Self {
        let mut c = Self {
            data: Box::new([0; 4096]),
            wmask: Box::new([0; 4096]),
            w1c: Box::new([0; 4096]),
            bars: [None; 6],
            last_cap: None,
            next_cap: CAP_START,
            last_ext_cap: None,
            next_ext_cap: EXT_CAP_START,
            pending_low: [false; 6],
        };
        c.set_u16(0x00, vendor);
        c.set_u16(0x02, device);
        c.data[0x08] = revision;
        c.data[0x09] = class.prog_if;
        c.data[0x0a] = class.subclass;
        c.data[0x0b] = class.class;
        c.set_u16(0x2c, subsystem_vendor);
        c.set_u16(0x2e, subsystem);
        c.set_wmask_u16(0x04, COMMAND_WRITABLE);
        c.w1c[0x06..0x08].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.data[0x0c] = 0; // cache line size: writable, no effect
        c.wmask[0x0c] = 0xff;
        c.wmask[0x0d] = 0xff; // latency timer
        c.wmask[0x3c] = 0xff; // interrupt line
        c
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, off: usize, v: u32) {
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_wmask_u16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_wmask_u32(&mut self, off: usize, v: u32) {
        self.wmask[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Reads a little-endian u16 (device-side helper).
    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.data[off], self.data[off + 1]])
    }

    /// Reads a little-endian u32 (device-side helper).
    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().unwrap_or([0; 4]))
    }

    /// Device-side write, bypassing the guest's write rules.
    pub fn set_bytes(&mut self, off: usize, bytes: &[u8]) {
        if let Some(dst) = self.data.get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }

    /// Makes `bits` of the byte at `off` guest-writable.
    pub fn set_writable(&mut self, off: usize, bytes: &[u8]) {
        if let Some(dst) = self.wmask.get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }

    /// Interrupt pin (1 = INTA#, 0 = none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.data[0x3d] = pin;
    }

    /// Marks the function as part of a multi-function device (header type bit 7).
    pub fn set_multifunction(&mut self, on: bool) {
        if on {
            self.data[0x0e] |= 0x80;
        } else {
            self.data[0x0e] &= !0x80;
        }
    }

    /// Declares BAR `index` at `addr`. Sizes are powers of two (at least 16
    /// bytes of memory or 4 of I/O); 64-bit BARs take `index` and `index + 1`.
    pub fn add_bar(&mut self, index: u8, kind: BarKind, size: u64, prefetchable: bool, addr: u64) {
        let i = usize::from(index);
        assert!(
            i < 6 && (kind != BarKind::Mem64 || i < 5),
            "BAR index out of range"
        );
        assert!(
            size.is_power_of_two() && size >= if kind == BarKind::Io { 4 } else { 16 },
            "bad BAR size"
        );
        assert!(addr.is_multiple_of(size), "BAR not aligned to its size");
        let off = BAR0 + 4 * i;
        let flags: u32 = match kind {
            BarKind::Io => 0x1,
            BarKind::Mem32 => u32::from(prefetchable) << 3,
            BarKind::Mem64 => 0x4 | (u32::from(prefetchable) << 3),
        };
        let low_mask = if kind == BarKind::Io {
            !0x3u32
        } else {
            !0xfu32
        };
        self.set_u32(off, (addr as u32 & low_mask) | flags);
        self.set_wmask_u32(off, !(size as u32).wrapping_sub(1) & low_mask);
        if kind == BarKind::Mem64 {
            self.set_u32(off + 4, (addr >> 32) as u32);
            self.set_wmask_u32(off + 4, (!(size - 1) >> 32) as u32);
        }
        self.bars[i] = Some(Bar {
            index,
            kind,
            size,
            prefetchable,
            addr,
        });
    }

    /// The declared BARs.
    pub fn bars(&self) -> impl Iterator<Item = &Bar> {
        self.bars.iter().flatten()
    }

    /// BAR `index`, if declared.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.get(usize::from(index)).and_then(|b| b.as_ref())
    }

    /// Adds a standard capability. `body` starts with the capability ID byte
    /// (its next pointer is filled in); `wmask` gives the guest-writable bits of
    /// each byte (same length as `body`, or empty for read-only). Returns the
    /// offset, or `None` if the 192-byte area is full.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Option<usize> {
        let off = self.next_cap.next_multiple_of(4);
        if body.len() < 2 || off + body.len() > EXT_CAP_START {
            return None;
        }
        self.data[off..off + body.len()].copy_from_slice(body);
        self.data[off + 1] = 0;
        if !wmask.is_empty() {
            self.wmask[off..off + body.len()].copy_from_slice(&wmask[..body.len()]);
        }
        match self.last_cap {
            Some(prev) => self.data[prev + 1] = off as u8,
            None => self.data[CAP_POINTER] = off as u8,
        }
        let status = self.read_u16(0x06) | STATUS_CAP_LIST;
        self.set_u16(0x06, status);
        self.last_cap = Some(off);
        self.next_cap = off + body.len();
        Some(off)
    }

    /// Adds a PCIe extended capability (ID, version, body after the 4-byte
    /// header) to the list at 0x100. Returns its offset.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Option<usize> {
        let off = self.next_ext_cap.next_multiple_of(4);
        if off + 4 + body.len() > 4096 {
            return None;
        }
        self.set_u32(off, u32::from(id) | (u32::from(version & 0xf) << 16));
        self.data[off + 4..off + 4 + body.len()].copy_from_slice(body);
        if !wmask.is_empty() {
            self.wmask[off + 4..off + 4 + body.len()].copy_from_slice(&wmask[..body.len()]);
        }
        if let Some(prev) = self.last_ext_cap {
            let h = self.read_u32(prev) & 0x000f_ffff;
            self.set_u32(prev, h | ((off as u32) << 20));
        }
        self.last_ext_cap = Some(off);
        self.next_ext_cap = off + 4 + body.len();
        Some(off)
    }

    /// Offsets of the standard capabilities with `id`, following the list.
    pub fn find_capability(&self, id: u8) -> Option<usize> {
        let mut off = usize::from(self.data[CAP_POINTER]);
        for _ in 0..48 {
            if off < CAP_START {
                return None;
            }
            if self.data[off] == id {
                return Some(off);
            }
            off = usize::from(self.data[off + 1]);
        }
        None
    }

    /// The registers and BAR addresses, for a snapshot.
    pub fn state(&self) -> ConfigSpaceState {
        let used = self.data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        ConfigSpaceState {
            data: self.data[..used].to_vec(),
            bars: self
                .bars
                .iter()
                .flatten()
                .map(|b| (b.index, b.addr))
                .collect(),
            pending_low: self.pending_low,
        }
    }

    /// Restores saved registers into a function built the same way (same
    /// identity, capabilities and BARs: every read-only bit must match) and
    /// returns the BARs that moved, for the caller to map at their saved
    /// addresses.
    pub fn restore(&mut self, st: &ConfigSpaceState) -> Result<Vec<BarMove>, String> {
        if st.data.len() > self.data.len() {
            return Err(format!("{} bytes of configuration space", st.data.len()));
        }
        let mut data = [0u8; 4096];
        data[..st.data.len()].copy_from_slice(&st.data);
        // Read-only bits are this function's identity and layout; BAR
        // registers are checked through `bars` below.
        for (o, (&saved, &now)) in data.iter().zip(self.data.iter()).enumerate() {
            let fixed = !(self.wmask[o] | self.w1c[o]);
            let in_bars = (BAR0..BAR0 + 24).contains(&o);
            if !in_bars && saved & fixed != now & fixed {
                return Err(format!(
                    "configuration byte {o:#x} is {saved:#04x}, this device has {now:#04x}: not the same device"
                ));
            }
        }
        let mut moves = Vec::new();
        let mut bars = self.bars;
        for &(index, addr) in &st.bars {
            let Some(bar) = bars.get_mut(usize::from(index)).and_then(|b| b.as_mut()) else {
                return Err(format!("BAR{index} is not implemented by this device"));
            };
            if !addr.is_multiple_of(bar.size) {
                return Err(format!(
                    "BAR{index} at {addr:#x} is not aligned to its size {:#x}",
                    bar.size
                ));
            }
            if addr != bar.addr {
                moves.push(BarMove {
                    index,
                    old: bar.addr,
                    new: addr,
                    size: bar.size,
                    kind: bar.kind,
                });
                bar.addr = addr;
            }
        }
        self.data.copy_from_slice(&data);
        self.bars = bars;
        self.pending_low = st.pending_low;
        Ok(moves)
    }

    /// Guest read. Accesses are 1, 2 or 4 bytes within one dword; anything
    /// else reads all ones.
    pub fn read(&self, off: u16, data: &mut [u8]) {
        let off = usize::from(off);
        if !valid_access(off, data.len()) {
            data.fill(0xff);
            return;
        }
        data.copy_from_slice(&self.data[off..off + data.len()]);
    }

    /// Guest write under the write masks. Returns the BARs this write moved.
    pub fn write(&mut self, off: u16, data: &[u8]) -> Vec<BarMove> {
        let off = usize::from(off);
        if !valid_access(off, data.len()) {
            return Vec::new();
        }
        for (i, &v) in data.iter().enumerate() {
            let o = off + i;
            let old = self.data[o];
            let mut new = (old & !self.wmask[o]) | (v & self.wmask[o]);
            new &= !(v & self.w1c[o]);
            self.data[o] = new;
        }
        if off + data.len() <= BAR0 || off >= BAR0 + 24 {
            return Vec::new();
        }
        self.update_bars(off, data.len())
    }

    fn bar_register_value(&self, i: usize) -> u64 {
        let low = u64::from(self.read_u32(BAR0 + 4 * i));
        match self.bars[i] {
            Some(Bar {
                kind: BarKind::Io, ..
            }) => low & !0x3,
            Some(Bar {
                kind: BarKind::Mem64,
                ..
            }) => (low & !0xf) | (u64::from(self.read_u32(BAR0 + 4 * i + 4)) << 32),
            _ => low & !0xf,
        }
    }

    fn update_bars(&mut self, off: usize, len: usize) -> Vec<BarMove> {
        let mut moves = Vec::new();
        for i in 0..6 {
            let Some(bar) = self.bars[i] else { continue };
            let reg_low = BAR0 + 4 * i;
            let reg_end = reg_low + if bar.kind == BarKind::Mem64 { 8 } else { 4 };
            if off + len <= reg_low || off >= reg_end {
                continue;
            }
            let wrote_low = off < reg_low + 4;
            if bar.kind == BarKind::Mem64 && wrote_low && off + len <= reg_low + 4 {
                // Linux writes the low dword, then the high one: act on the high.
                self.pending_low[i] = true;
                continue;
            }
            self.pending_low[i] = false;
            let value = self.bar_register_value(i);
            // All writable bits set is the sizing probe, not an address.
            let mask = !(bar.size - 1)
                & if bar.kind == BarKind::Mem64 {
                    u64::MAX
                } else {
                    0xffff_ffff
                };
            let probe = mask & if bar.kind == BarKind::Io { !0x3 } else { !0xf };
            if value == probe || (bar.kind == BarKind::Mem64 && (value as u32 | 0xf) == u32::MAX) {
                continue;
            }
            if value != bar.addr {
                moves.push(BarMove {
                    index: bar.index,
                    old: bar.addr,
                    new: value,
                    size: bar.size,
                    kind: bar.kind,
                });
                if let Some(b) = self.bars[i].as_mut() {
                    b.addr = value;
                }
            }
        }
        moves
    }
}

fn valid_access(off: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && off.is_multiple_of(len) && off + len <= 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> ConfigSpace {
        ConfigSpace::new(
            0x1af4,
            0x1042,
            PciClass {
                class: 1,
                subclass: 0x80,
                prog_if: 0,
            },
            1,
            0x1af4,
            0x40,
        )
    }

    fn r32(c: &ConfigSpace, off: u16) -> u32 {
        let mut d = [0u8; 4];
        c.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w32(c: &mut ConfigSpace, off: u16, v: u32) -> Vec<BarMove> {
        c.write(off, &v.to_le_bytes())
    }

    #[test]
    fn header_is_read_only_except_writable_fields() {
        let mut c = dev();
        w32(&mut c, 0, 0xdead_beef);
        assert_eq!(r32(&c, 0), 0x1042_1af4, "IDs are read-only");
        w32(&mut c, 8, 0xffff_ffff);
        assert_eq!(r32(&c, 8), 0x0180_0001, "class and revision are read-only");
        c.write(0x3c, &[0x0b]);
        let mut b = [0u8; 1];
        c.read(0x3c, &mut b);
        assert_eq!(b[0], 0x0b, "interrupt line is writable");
        c.write(0x04, &0xffffu16.to_le_bytes());
        let mut w = [0u8; 2];
        c.read(0x04, &mut w);
        assert_eq!(
            u16::from_le_bytes(w),
            COMMAND_WRITABLE,
            "only defined command bits stick"
        );
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = dev();
        c.set_bytes(0x06, &0xf910u16.to_le_bytes());
        c.write(0x06, &0x8000u16.to_le_bytes());
        let mut w = [0u8; 2];
        c.read(0x06, &mut w);
        assert_eq!(
            u16::from_le_bytes(w),
            0x7910,
            "bit 15 cleared, capability bit kept"
        );
        c.write(0x06, &0u16.to_le_bytes());
        c.read(0x06, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x7910, "writing 0 clears nothing");
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = dev();
        c.add_bar(0, BarKind::Mem32, 0x1000, false, 0xc000_0000);
        c.add_bar(1, BarKind::Io, 0x20, false, 0x1000);
        c.add_bar(2, BarKind::Mem64, 0x8_0000, true, 0x1_0000_0000);
        assert!(w32(&mut c, 0x10, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x10), 0xffff_f000);
        assert!(w32(&mut c, 0x14, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x14), 0xffff_ffe1);
        assert!(w32(&mut c, 0x18, 0xffff_ffff).is_empty());
        assert!(w32(&mut c, 0x1c, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x18), 0xfff8_000c, "64-bit prefetchable flags kept");
        assert_eq!(r32(&c, 0x1c), 0xffff_ffff);
        // Restoring the original addresses moves nothing.
        assert!(w32(&mut c, 0x10, 0xc000_0000).is_empty());
        assert!(w32(&mut c, 0x18, 0).is_empty());
        assert!(w32(&mut c, 0x1c, 1).is_empty());
        assert_eq!(c.bar(2).unwrap().addr, 0x1_0000_0000);
        // Unused BARs read zero and ignore writes.
        assert!(w32(&mut c, 0x24, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x24), 0);
    }

    #[test]
    fn reprogramming_reports_moves() {
        let mut c = dev();
        c.add_bar(0, BarKind::Mem32, 0x1000, false, 0xc000_0000);
        c.add_bar(2, BarKind::Mem64, 0x8_0000, false, 0x1_0000_0000);
        let m = w32(&mut c, 0x10, 0xc010_0000);
        assert_eq!(
            m,
            vec![BarMove {
                index: 0,
                old: 0xc000_0000,
                new: 0xc010_0000,
                size: 0x1000,
                kind: BarKind::Mem32
            }]
        );
        assert!(
            w32(&mut c, 0x18, 0x0008_0000).is_empty(),
            "low half alone does not move a 64-bit BAR"
        );
        let m = w32(&mut c, 0x1c, 2);
        assert_eq!(m[0].new, 0x2_0008_0000);
        assert_eq!(c.bar(2).unwrap().addr, 0x2_0008_0000);
        // Low bits below the size are not writable.
        let m = w32(&mut c, 0x10, 0xc020_0abc);
        assert_eq!(m[0].new, 0xc020_0000);
    }

    #[test]
    fn capability_list_links_and_masks() {
        let mut c = dev();
        let a = c.add_capability(&[0x09, 0, 8, 1, 0, 0, 0, 0], &[]).unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0x03, 0x00], &[0, 0, 0, 0xc0])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        let mut d = [0u8; 1];
        c.read(0x34, &mut d);
        assert_eq!(d[0], 0x40);
        c.read(0x41, &mut d);
        assert_eq!(d[0], 0x48);
        c.read(0x49, &mut d);
        assert_eq!(d[0], 0, "end of list");
        assert_ne!(c.read_u16(6) & STATUS_CAP_LIST, 0);
        c.write(0x4b, &[0xff]);
        assert_eq!(
            c.read_u16(0x4a),
            0xc003,
            "masked bits change, the read-only size stays"
        );
        assert_eq!(c.find_capability(0x11), Some(0x48));
        assert_eq!(c.find_capability(0x10), None);
    }

    #[test]
    fn extended_capabilities_chain_from_0x100() {
        let mut c = dev();
        let a = c.add_ext_capability(0x0010, 1, &[0; 0x3c], &[]).unwrap();
        let b = c.add_ext_capability(0x000e, 1, &[0; 4], &[]).unwrap();
        assert_eq!(a, 0x100);
        assert_eq!(r32(&c, 0x100), 0x0010 | (1 << 16) | ((b as u32) << 20));
        assert_eq!(r32(&c, b as u16) >> 20, 0, "last entry ends the chain");
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut c = dev();
        let mut d3 = [0u8; 3];
        c.read(0, &mut d3);
        assert_eq!(d3, [0xff; 3]);
        let mut d = [0u8; 4];
        c.read(2, &mut d);
        assert_eq!(d, [0xff; 4], "misaligned");
        c.read(4094, &mut d);
        assert!(c.write(4095, &[1, 2]).is_empty());
        assert!(c.write(4096, &[1]).is_empty());
        assert!(
            c.write(0x10, &[0u8; 8]).is_empty(),
            "8-byte config writes are not a thing"
        );
    }
}
