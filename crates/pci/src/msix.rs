//! MSI-X: the capability, the vector table and the pending-bit array.
//!
//! Interrupt delivery is the VMM's business (routes and irqfds); this model
//! decides whether a vector may fire now, records it as pending when it may
//! not, and reports every change that affects delivery as an [`MsixEvent`].

use crate::caps::CAP_ID_MSIX;

/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

/// Where the MSI-X capability sits and what it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    /// Offset in configuration space.
    pub offset: usize,
}

impl MsixCap {
    /// Capability body and write mask for `vectors` entries, table at
    /// `table_offset` in BAR `table_bar`, PBA at `pba_offset` in BAR `pba_bar`.
    pub fn body(
        vectors: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut b = vec![0u8; 12];
        b[0] = CAP_ID_MSIX;
        b[2..4].copy_from_slice(&(vectors - 1).to_le_bytes());
        b[4..8].copy_from_slice(&(table_offset | u32::from(table_bar & 7)).to_le_bytes());
        b[8..12].copy_from_slice(&(pba_offset | u32::from(pba_bar & 7)).to_le_bytes());
        let mut w = vec![0u8; 12];
        w[3] = 0xc0; // enable, function mask
        (b, w)
    }

    /// Whether a config write at `off` of `len` bytes touched message control.
    pub fn control_written(&self, off: u16, len: usize) -> bool {
        let start = usize::from(off);
        start < self.offset + 4 && start + len > self.offset + 2
    }
}

/// Where a function's MSI-X vectors go: the VMM implements it with GSI routes
/// and irqfds.
pub trait MsixSink: Send + Sync {
    /// `vector` now delivers `message` (address, data), or nothing when `None`
    /// (masked or disabled).
    fn update_route(&self, vector: u16, message: Option<(u64, u32)>);
    /// Inject `vector` now; its route is installed.
    fn deliver(&self, vector: u16);
}

/// Applies `events` of `table` to `sink`: routes first, then pending deliveries.
pub fn apply_events(table: &MsixTable, events: &[MsixEvent], sink: &dyn MsixSink) {
    let route =
        |v: u16| sink.update_route(v, (!table.masked(v)).then(|| table.message(v)).flatten());
    for e in events {
        match *e {
            MsixEvent::VectorChanged(v) => route(v),
            MsixEvent::AllChanged => (0..table.len()).for_each(route),
            MsixEvent::DeliverPending(_) => {}
        }
    }
    for e in events {
        if let MsixEvent::DeliverPending(v) = *e {
            sink.deliver(v);
        }
    }
}

/// What changed for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixEvent {
    /// A vector's message or mask changed: recompute its route.
    VectorChanged(u16),
    /// The function's enable or mask changed: recompute every route.
    AllChanged,
    /// A pending vector became deliverable: inject it now (its pending bit is cleared).
    DeliverPending(u16),
}

/// What [`MsixTable::trigger`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Deliver this message now.
    Deliver {
        /// Message address.
        addr: u64,
        /// Message data.
        data: u32,
    },
    /// Masked: recorded in the pending-bit array.
    Pending,
    /// No such vector (or MSI-X is disabled): dropped.
    Dropped,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

/// The table, the PBA and the function-level state.
#[derive(Debug, Clone)]
pub struct MsixTable {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

/// Saved MSI-X state: each entry as (address low, address high, data,
/// vector control), the pending bits and the function-level bits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    /// Table entries.
    pub entries: Vec<[u32; 4]>,
    /// Pending-bit array.
    pub pba: Vec<u64>,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
}

impl MsixTable {
    /// The table's state.
    pub fn state(&self) -> MsixState {
        MsixState {
            entries: self
                .entries
                .iter()
                .map(|e| [e.addr_lo, e.addr_hi, e.data, e.control])
                .collect(),
            pba: self.pba.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Restores a saved state into a table of the same size. The caller
    /// re-installs every route ([`MsixEvent::AllChanged`]) afterwards.
    pub fn restore(&mut self, st: &MsixState) -> Result<(), String> {
        if st.entries.len() != self.entries.len() || st.pba.len() != self.pba.len() {
            return Err(format!(
                "MSI-X: {} vectors saved, the device has {}",
                st.entries.len(),
                self.entries.len()
            ));
        }
        for (e, s) in self.entries.iter_mut().zip(&st.entries) {
            *e = Entry {
                addr_lo: s[0],
                addr_hi: s[1],
                data: s[2],
                control: s[3] & VECTOR_MASKED,
            };
        }
        self.pba.copy_from_slice(&st.pba);
        // Bits beyond the last vector stay clear.
        let n = self.entries.len();
        if !n.is_multiple_of(64) {
            if let Some(last) = self.pba.last_mut() {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
        self.enabled = st.enabled;
        self.function_masked = st.function_masked;
        Ok(())
    }

    /// `vectors` entries (1 to 2048), all masked, MSI-X disabled: the reset state.
    pub fn new(vectors: u16) -> Self {
        let n = vectors.clamp(1, MSIX_MAX_VECTORS);
        Self {
            entries: vec![
                Entry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                usize::from(n)
            ],
            pba: vec![0; usize::from(n).div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Back to the reset state (function-level reset, device reset).
    pub fn reset(&mut self) {
        *self = Self::new(self.entries.len() as u16);
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Never: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Table size in bytes.
    pub fn table_bytes(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// PBA size in bytes.
    pub fn pba_bytes(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// MSI-X enabled in message control.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `vector` cannot fire now (disabled, function-masked or masked).
    pub fn masked(&self, vector: u16) -> bool {
        match self.entries.get(usize::from(vector)) {
            Some(e) => !self.enabled || self.function_masked || e.control & VECTOR_MASKED != 0,
            None => true,
        }
    }

    /// The message of `vector`.
    pub fn message(&self, vector: u16) -> Option<(u64, u32)> {
        self.entries
            .get(usize::from(vector))
            .map(|e| ((u64::from(e.addr_hi) << 32) | u64::from(e.addr_lo), e.data))
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = usize::from(vector);
        if let Some(w) = self.pba.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// The device wants to signal `vector`.
    pub fn trigger(&mut self, vector: u16) -> Trigger {
        if usize::from(vector) >= self.entries.len() || !self.enabled {
            return Trigger::Dropped;
        }
        if self.masked(vector) {
            self.set_pending(vector, true);
            return Trigger::Pending;
        }
        let (addr, data) = self.message(vector).unwrap_or_default();
        Trigger::Deliver { addr, data }
    }

    /// Pending vectors that may now fire: clears their bits.
    fn drain_deliverable(&mut self, events: &mut Vec<MsixEvent>) {
        for v in 0..self.len() {
            if self.pending(v) && !self.masked(v) {
                self.set_pending(v, false);
                events.push(MsixEvent::DeliverPending(v));
            }
        }
    }

    /// The guest wrote message control (from the capability).
    pub fn write_control(&mut self, control: u16) -> Vec<MsixEvent> {
        let enabled = control & CTRL_ENABLE != 0;
        let masked = control & CTRL_FUNCTION_MASK != 0;
        let mut events = Vec::new();
        if enabled != self.enabled || masked != self.function_masked {
            self.enabled = enabled;
            self.function_masked = masked;
            events.push(MsixEvent::AllChanged);
            self.drain_deliverable(&mut events);
        }
        events
    }

    /// Guest read in the table (dword or aligned qword; anything else reads 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(e) = self.entries.get((offset / MSIX_ENTRY_SIZE) as usize) else {
            return;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        let field = ((offset % MSIX_ENTRY_SIZE) / 4) as usize;
        match (data.len(), offset % 4) {
            (4, 0) => data.copy_from_slice(&words[field].to_le_bytes()),
            (8, 0) if field.is_multiple_of(2) => {
                data[..4].copy_from_slice(&words[field].to_le_bytes());
                data[4..].copy_from_slice(&words[field + 1].to_le_bytes());
            }
            _ => devices::warn_ratelimited!(
                "msix: {}-byte table read at {offset:#x} ignored",
                data.len()
            ),
        }
    }

    /// Guest write in the table.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<MsixEvent> {
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        if index >= self.entries.len() {
            return Vec::new();
        }
        let field = ((offset % MSIX_ENTRY_SIZE) / 4) as usize;
        let mut words = Vec::new();
        match (data.len(), offset % 4) {
            (4, 0) => words.push((
                field,
                u32::from_le_bytes(data.try_into().unwrap_or_default()),
            )),
            (8, 0) if field.is_multiple_of(2) => {
                words.push((
                    field,
                    u32::from_le_bytes(data[..4].try_into().unwrap_or_default()),
                ));
                words.push((
                    field + 1,
                    u32::from_le_bytes(data[4..].try_into().unwrap_or_default()),
                ));
            }
            _ => {
                devices::warn_ratelimited!(
                    "msix: {}-byte table write at {offset:#x} ignored",
                    data.len()
                );
                return Vec::new();
            }
        }
        let before = self.entries[index];
        for (f, v) in words {
            let e = &mut self.entries[index];
            match f {
                0 => e.addr_lo = v & !0x3,
                1 => e.addr_hi = v,
                2 => e.data = v,
                _ => e.control = v & VECTOR_MASKED,
            }
        }
        let mut events = Vec::new();
        if self.entries[index] != before {
            events.push(MsixEvent::VectorChanged(index as u16));
            self.drain_deliverable(&mut events);
        }
        events
    }

    /// Guest read in the PBA (read-only; writes are ignored).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut bytes = Vec::with_capacity(self.pba.len() * 8);
        for w in &self.pba {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        let start = offset as usize;
        if let Some(src) = bytes.get(start..start.saturating_add(data.len())) {
            data.copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(t: &mut MsixTable, off: u64, v: u32) -> Vec<MsixEvent> {
        t.write_table(off, &v.to_le_bytes())
    }

    fn program(t: &mut MsixTable, v: u16, addr: u64, data: u32) {
        let base = u64::from(v) * 16;
        w32(t, base, addr as u32);
        w32(t, base + 4, (addr >> 32) as u32);
        w32(t, base + 8, data);
    }

    #[test]
    fn reset_state_is_masked_and_disabled() {
        let mut t = MsixTable::new(3);
        assert!(!t.enabled());
        for v in 0..3 {
            assert!(t.masked(v));
            let mut d = [0u8; 4];
            t.read_table(u64::from(v) * 16 + 12, &mut d);
            assert_eq!(u32::from_le_bytes(d), 1, "vector control: masked");
        }
        assert_eq!(
            t.trigger(0),
            Trigger::Dropped,
            "disabled: nothing fires, nothing pends"
        );
        assert!(!t.pending(0));
    }

    #[test]
    fn masked_vector_pends_and_fires_on_unmask() {
        let mut t = MsixTable::new(4);
        program(&mut t, 2, 0xfee0_0000, 0x41);
        assert_eq!(t.write_control(CTRL_ENABLE), vec![MsixEvent::AllChanged]);
        assert_eq!(t.trigger(2), Trigger::Pending);
        assert!(t.pending(2));
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1 << 2);
        let ev = w32(&mut t, 2 * 16 + 12, 0);
        assert_eq!(
            ev,
            vec![MsixEvent::VectorChanged(2), MsixEvent::DeliverPending(2)]
        );
        assert!(!t.pending(2), "delivery clears the pending bit");
        assert_eq!(
            t.trigger(2),
            Trigger::Deliver {
                addr: 0xfee0_0000,
                data: 0x41
            }
        );
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let mut t = MsixTable::new(2);
        program(&mut t, 0, 0xfee0_1000, 7);
        w32(&mut t, 12, 0);
        t.write_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(t.masked(0));
        assert_eq!(t.trigger(0), Trigger::Pending);
        let ev = t.write_control(CTRL_ENABLE);
        assert_eq!(
            ev,
            vec![MsixEvent::AllChanged, MsixEvent::DeliverPending(0)]
        );
        assert_eq!(t.write_control(CTRL_ENABLE), vec![], "no change, no event");
    }

    #[test]
    fn qword_access_and_odd_sizes() {
        let mut t = MsixTable::new(1);
        t.write_table(0, &0x0000_0001_fee0_0004u64.to_le_bytes());
        assert_eq!(t.message(0), Some((0x1_fee0_0004, 0)));
        let mut q = [0u8; 8];
        t.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x0000_0001_fee0_0004);
        assert!(t.write_table(1, &[1]).is_empty(), "byte writes are ignored");
        assert!(
            t.write_table(4, &[0; 8]).is_empty(),
            "misaligned qword ignored"
        );
        let mut b = [0xaa; 2];
        t.read_table(0, &mut b);
        assert_eq!(b, [0, 0]);
        assert!(
            t.write_table(16 * 5, &[0; 4]).is_empty(),
            "beyond the table"
        );
        assert_eq!(t.trigger(9), Trigger::Dropped);
    }

    #[test]
    fn reserved_control_bits_read_zero() {
        let mut t = MsixTable::new(1);
        w32(&mut t, 12, 0xffff_fffe);
        let mut d = [0u8; 4];
        t.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
    }

    #[test]
    fn capability_body_and_control_detection() {
        let (b, w) = MsixCap::body(5, 0, 0x8000, 0, 0x48000);
        assert_eq!(b[0], CAP_ID_MSIX);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 4, "table size - 1");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 0x8000);
        assert_eq!(w[3], 0xc0);
        let cap = MsixCap { offset: 0x50 };
        assert!(cap.control_written(0x52, 2));
        assert!(cap.control_written(0x50, 4));
        assert!(!cap.control_written(0x54, 4));
        assert!(!cap.control_written(0x4c, 4));
    }
}
