//! The virtio-mem device core (virtio 1.2 §5.15): configuration, block states,
//! request rules and the KVM slot bookkeeping, without any I/O.
//!
//! A request is first *planned*: the plan holds the response and the effects
//! the VMM must carry out (map or unmap a slot, populate or discard memory).
//! Effects in `before` must succeed before the state changes (otherwise the
//! request is answered BUSY and nothing changes); effects in `after` are
//! best effort once the blocks are unplugged.

use super::bitmap::BlockBitmap;

/// `VIRTIO_MEM_REQ_PLUG`
pub const REQ_PLUG: u16 = 0;
/// `VIRTIO_MEM_REQ_UNPLUG`
pub const REQ_UNPLUG: u16 = 1;
/// `VIRTIO_MEM_REQ_UNPLUG_ALL`
pub const REQ_UNPLUG_ALL: u16 = 2;
/// `VIRTIO_MEM_REQ_STATE`
pub const REQ_STATE: u16 = 3;
/// `VIRTIO_MEM_RESP_ACK`
pub const RESP_ACK: u16 = 0;
/// `VIRTIO_MEM_RESP_NACK`
pub const RESP_NACK: u16 = 1;
/// `VIRTIO_MEM_RESP_BUSY`
pub const RESP_BUSY: u16 = 2;
/// `VIRTIO_MEM_RESP_ERROR`
pub const RESP_ERROR: u16 = 3;
/// `VIRTIO_MEM_STATE_PLUGGED`
pub const STATE_PLUGGED: u16 = 0;
/// `VIRTIO_MEM_STATE_UNPLUGGED`
pub const STATE_UNPLUGGED: u16 = 1;
/// `VIRTIO_MEM_STATE_MIXED`
pub const STATE_MIXED: u16 = 2;
/// Size of `struct virtio_mem_config`.
pub const CONFIG_LEN: usize = 56;
/// Headroom of usable over requested (as QEMU: two Linux memory blocks).
pub const USABLE_HEADROOM: u64 = 256 << 20;

/// Where the region is and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Guest-physical start (aligned to `slot_size`).
    pub addr: u64,
    /// Bytes (a multiple of `slot_size`).
    pub region_size: u64,
    /// Plug granularity (power of two).
    pub block_size: u64,
    /// KVM memslot granularity (a multiple of `block_size`).
    pub slot_size: u64,
    /// ACPI proximity domain (only meaningful with `VIRTIO_MEM_F_ACPI_PXM`).
    pub node_id: u16,
}

impl Geometry {
    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.region_size / self.block_size
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        (self.region_size / self.slot_size) as usize
    }

    fn blocks_per_slot(&self) -> u64 {
        self.slot_size / self.block_size
    }
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Plug `nb_blocks` from `addr`.
    Plug {
        /// Guest-physical address.
        addr: u64,
        /// Block count.
        nb_blocks: u16,
    },
    /// Unplug `nb_blocks` from `addr`.
    Unplug {
        /// Guest-physical address.
        addr: u64,
        /// Block count.
        nb_blocks: u16,
    },
    /// Unplug everything.
    UnplugAll,
    /// State of `nb_blocks` from `addr`.
    State {
        /// Guest-physical address.
        addr: u64,
        /// Block count.
        nb_blocks: u16,
    },
    /// A type this device does not know.
    Unknown(u16),
}

impl Request {
    /// Decodes `struct virtio_mem_req` (24 bytes).
    pub fn parse(b: &[u8; 24]) -> Self {
        let kind = u16::from_le_bytes([b[0], b[1]]);
        let addr = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
        let nb_blocks = u16::from_le_bytes([b[16], b[17]]);
        match kind {
            REQ_PLUG => Self::Plug { addr, nb_blocks },
            REQ_UNPLUG => Self::Unplug { addr, nb_blocks },
            REQ_UNPLUG_ALL => Self::UnplugAll,
            REQ_STATE => Self::State { addr, nb_blocks },
            other => Self::Unknown(other),
        }
    }
}

/// `struct virtio_mem_resp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// ACK, NACK, BUSY or ERROR.
    pub kind: u16,
    /// For STATE + ACK.
    pub state: u16,
}

impl Response {
    fn of(kind: u16) -> Self {
        Self { kind, state: 0 }
    }

    /// The 10 bytes on the wire.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[8..10].copy_from_slice(&self.state.to_le_bytes());
        b
    }
}

/// Something the VMM must do for a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Make slot `n` accessible to the guest (a KVM memslot).
    MapSlot(usize),
    /// Remove slot `n` from the guest.
    UnmapSlot(usize),
    /// Allocate backing for `[offset, offset + len)` of the region (hugetlbfs).
    Populate {
        /// From the region start.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Give `[offset, offset + len)` of the region back to the host.
    Discard {
        /// From the region start.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// What a plan means for device DMA (VFIO passthrough): plugged blocks
/// become reachable by the devices, unplugged ones stop being first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaChange {
    /// Map `[offset, offset + len)` of the region, block by block.
    Map {
        /// From the region start.
        offset: u64,
        /// Bytes (whole blocks).
        len: u64,
    },
    /// Unmap `[offset, offset + len)` before the memory goes.
    Unmap {
        /// From the region start.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Set {
        first: u64,
        count: u64,
        plugged: bool,
    },
    All,
}

/// A planned request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The answer if the `before` effects succeed.
    pub response: Response,
    /// Effects to carry out first; any failure turns the answer into BUSY.
    pub before: Vec<Effect>,
    /// Effects to carry out after the change (failures are logged only).
    pub after: Vec<Effect>,
    change: Option<Change>,
}

impl Plan {
    fn answer(kind: u16) -> Self {
        Self {
            response: Response::of(kind),
            before: vec![],
            after: vec![],
            change: None,
        }
    }
}

/// Device state: what survives a device reset (everything here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemState {
    geometry: Geometry,
    usable_region_size: u64,
    requested_size: u64,
    blocks: BlockBitmap,
    slot_plugged: Vec<u64>,
    mapped: Vec<bool>,
    /// Unplugged memory is removed from the guest (feature negotiated).
    inaccessible: bool,
    /// Allocate backing on plug (hugetlbfs), answering BUSY when the host has none.
    populate: bool,
    generation: u32,
}

/// What a snapshot keeps of a virtio-mem device: the sizes the driver
/// sees and which blocks are plugged (as byte runs from the region start).
/// Mappings are not saved: the restoring VMM maps the slots again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemSavedState {
    /// Region start, checked against the restoring device.
    pub addr: u64,
    /// Region size, checked.
    pub region_size: u64,
    /// Block size, checked.
    pub block_size: u64,
    /// `usable_region_size`.
    pub usable_region_size: u64,
    /// `requested_size`.
    pub requested_size: u64,
    /// Plugged `(offset, len)` runs, in order, whole blocks.
    pub plugged: Vec<(u64, u64)>,
    /// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE` was negotiated.
    pub inaccessible: bool,
    /// Configuration generation.
    pub generation: u32,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl MemState {
    /// Fresh state (system reset): nothing plugged, nothing mapped.
    pub fn new(geometry: Geometry, requested_size: u64, populate: bool) -> Self {
        let mut s = Self {
            geometry,
            usable_region_size: 0,
            requested_size: 0,
            blocks: BlockBitmap::new(geometry.blocks()),
            slot_plugged: vec![0; geometry.slots()],
            mapped: vec![false; geometry.slots()],
            inaccessible: true,
            populate,
            generation: 0,
        };
        s.set_requested(requested_size);
        s
    }

    /// The state a snapshot keeps.
    pub fn saved(&self) -> MemSavedState {
        let g = &self.geometry;
        MemSavedState {
            addr: g.addr,
            region_size: g.region_size,
            block_size: g.block_size,
            usable_region_size: self.usable_region_size,
            requested_size: self.requested_size,
            plugged: self.plugged_runs(0, g.region_size),
            inaccessible: self.inaccessible,
            generation: self.generation,
        }
    }

    /// A device state from a snapshot, for a device of `geometry`: the
    /// geometry must match, sizes be whole blocks inside the region, runs
    /// ordered, block-aligned and inside the usable region. No slot is
    /// mapped yet: activation maps what the plugged blocks need.
    pub fn from_saved(
        geometry: Geometry,
        populate: bool,
        st: &MemSavedState,
    ) -> Result<Self, String> {
        let g = geometry;
        if (st.addr, st.region_size, st.block_size) != (g.addr, g.region_size, g.block_size) {
            return Err(format!(
                "virtio-mem: the snapshot's region ({:#x} bytes at {:#x}, {:#x}-byte blocks) is not this VM's ({:#x} at {:#x}, {:#x})",
                st.region_size, st.addr, st.block_size, g.region_size, g.addr, g.block_size
            ));
        }
        let whole = |v: u64| v.is_multiple_of(g.block_size) && v <= g.region_size;
        if !whole(st.usable_region_size) || !whole(st.requested_size) {
            return Err(
                "virtio-mem: requested or usable size is not whole blocks inside the region".into(),
            );
        }
        let mut s = Self::new(geometry, 0, populate);
        s.usable_region_size = st.usable_region_size;
        s.requested_size = st.requested_size;
        s.inaccessible = st.inaccessible;
        s.generation = st.generation;
        let mut end = 0;
        for &(offset, len) in &st.plugged {
            let Some(run_end) = offset.checked_add(len) else {
                return Err("virtio-mem: a plugged run overflows".into());
            };
            if offset < end
                || len == 0
                || !whole(offset)
                || !whole(len)
                || run_end > st.usable_region_size
            {
                return Err(format!(
                    "virtio-mem: plugged run {len:#x} bytes at {offset:#x} is not whole blocks, in order, inside the usable region"
                ));
            }
            end = run_end;
            s.blocks
                .set_range(offset / g.block_size, len / g.block_size, true);
        }
        let bps = g.blocks_per_slot();
        for (n, p) in s.slot_plugged.iter_mut().enumerate() {
            *p = s.blocks.count_range(n as u64 * bps, bps);
        }
        Ok(s)
    }

    /// Whether plugs allocate their backing first (hugetlbfs).
    pub fn populate(&self) -> bool {
        self.populate
    }

    /// Geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Bytes plugged.
    pub fn plugged_size(&self) -> u64 {
        self.blocks.count() * self.geometry.block_size
    }

    /// The plugged parts of `[offset, offset + len)` of the region, as
    /// `(offset, len)` runs of whole blocks, in order.
    pub fn plugged_runs(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let bs = self.geometry.block_size;
        let first = offset / bs;
        let end = offset
            .saturating_add(len)
            .div_ceil(bs)
            .min(self.blocks.len());
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for b in first..end {
            if !self.blocks.get(b) {
                continue;
            }
            match runs.last_mut() {
                Some((o, l)) if *o + *l == b * bs => *l += bs,
                _ => runs.push((b * bs, bs)),
            }
        }
        runs
    }

    /// Bytes requested by the host.
    pub fn requested_size(&self) -> u64 {
        self.requested_size
    }

    /// Bytes the guest may plug in.
    pub fn usable_region_size(&self) -> u64 {
        self.usable_region_size
    }

    /// Whether slot `n` is mapped into the guest.
    pub fn slot_mapped(&self, n: usize) -> bool {
        self.mapped.get(n).copied().unwrap_or(false)
    }

    /// Changes whenever requested or usable size change.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn usable_for(&self, requested: u64) -> u64 {
        if requested == 0 {
            return 0;
        }
        align_up(
            requested.saturating_add(USABLE_HEADROOM),
            self.geometry.block_size,
        )
        .min(self.geometry.region_size)
    }

    /// Sets `requested_size` (block-aligned, at most the region size; the
    /// caller validates). Returns true when the configuration changed and
    /// the driver must get a configuration-change interrupt.
    pub fn set_requested(&mut self, size: u64) -> bool {
        let size = size.min(self.geometry.region_size) / self.geometry.block_size
            * self.geometry.block_size;
        let usable = self.usable_region_size.max(self.usable_for(size));
        let changed = size != self.requested_size || usable != self.usable_region_size;
        self.requested_size = size;
        self.usable_region_size = usable;
        if changed {
            self.generation = self.generation.wrapping_add(1);
        }
        changed
    }

    /// `struct virtio_mem_config`.
    pub fn config(&self) -> [u8; CONFIG_LEN] {
        let g = &self.geometry;
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&g.block_size.to_le_bytes());
        c[8..10].copy_from_slice(&g.node_id.to_le_bytes());
        c[16..24].copy_from_slice(&g.addr.to_le_bytes());
        c[24..32].copy_from_slice(&g.region_size.to_le_bytes());
        c[32..40].copy_from_slice(&self.usable_region_size.to_le_bytes());
        c[40..48].copy_from_slice(&self.plugged_size().to_le_bytes());
        c[48..56].copy_from_slice(&self.requested_size.to_le_bytes());
        c
    }

    /// The driver set DRIVER_OK with `inaccessible` negotiated or not: the
    /// slots to map so the guest sees what it may access.
    pub fn activate(&mut self, inaccessible: bool) -> Vec<Effect> {
        self.inaccessible = inaccessible;
        (0..self.geometry.slots())
            .filter(|&n| !self.mapped[n] && (!inaccessible || self.slot_plugged[n] > 0))
            .map(Effect::MapSlot)
            .collect()
    }

    /// Records that slot effects succeeded (called by the VMM per effect).
    pub fn slot_done(&mut self, e: Effect) {
        match e {
            Effect::MapSlot(n) if n < self.mapped.len() => self.mapped[n] = true,
            Effect::UnmapSlot(n) if n < self.mapped.len() => self.mapped[n] = false,
            _ => {}
        }
    }

    /// Block index range of a request, if valid: block-aligned, at least one
    /// block, inside the usable region.
    fn range(&self, addr: u64, nb_blocks: u16) -> Option<(u64, u64)> {
        let g = &self.geometry;
        if nb_blocks == 0 || addr < g.addr || !(addr - g.addr).is_multiple_of(g.block_size) {
            return None;
        }
        let off = addr - g.addr;
        let len = u64::from(nb_blocks).checked_mul(g.block_size)?;
        (off.checked_add(len)? <= self.usable_region_size)
            .then(|| (off / g.block_size, u64::from(nb_blocks)))
    }

    fn slots_of(&self, first: u64, count: u64) -> std::ops::Range<usize> {
        let bps = self.geometry.blocks_per_slot();
        (first / bps) as usize..(first + count).div_ceil(bps) as usize
    }

    /// Plans `req`.
    pub fn plan(&self, req: Request) -> Plan {
        let bs = self.geometry.block_size;
        match req {
            Request::Plug { addr, nb_blocks } => {
                let Some((first, count)) = self.range(addr, nb_blocks) else {
                    return Plan::answer(RESP_ERROR);
                };
                if self.plugged_size() + count * bs > self.requested_size {
                    return Plan::answer(RESP_NACK);
                }
                if self.blocks.count_range(first, count) != 0 {
                    return Plan::answer(RESP_ERROR);
                }
                let mut before: Vec<Effect> = self
                    .slots_of(first, count)
                    .filter(|&n| !self.mapped[n])
                    .map(Effect::MapSlot)
                    .collect();
                if self.populate {
                    before.push(Effect::Populate {
                        offset: first * bs,
                        len: count * bs,
                    });
                }
                Plan {
                    response: Response::of(RESP_ACK),
                    before,
                    after: vec![],
                    change: Some(Change::Set {
                        first,
                        count,
                        plugged: true,
                    }),
                }
            }
            Request::Unplug { addr, nb_blocks } => {
                let Some((first, count)) = self.range(addr, nb_blocks) else {
                    return Plan::answer(RESP_ERROR);
                };
                if self.blocks.count_range(first, count) != count {
                    return Plan::answer(RESP_ERROR);
                }
                let bps = self.geometry.blocks_per_slot();
                let before = if self.inaccessible {
                    self.slots_of(first, count)
                        .filter(|&n| {
                            let slot_first = n as u64 * bps;
                            let lo = first.max(slot_first);
                            let hi = (first + count).min(slot_first + bps);
                            self.mapped[n] && self.slot_plugged[n] == hi - lo
                        })
                        .map(Effect::UnmapSlot)
                        .collect()
                } else {
                    vec![]
                };
                Plan {
                    response: Response::of(RESP_ACK),
                    before,
                    after: vec![Effect::Discard {
                        offset: first * bs,
                        len: count * bs,
                    }],
                    change: Some(Change::Set {
                        first,
                        count,
                        plugged: false,
                    }),
                }
            }
            Request::UnplugAll => {
                let before = if self.inaccessible {
                    (0..self.geometry.slots())
                        .filter(|&n| self.mapped[n])
                        .map(Effect::UnmapSlot)
                        .collect()
                } else {
                    vec![]
                };
                Plan {
                    response: Response::of(RESP_ACK),
                    before,
                    after: vec![Effect::Discard {
                        offset: 0,
                        len: self.geometry.region_size,
                    }],
                    change: Some(Change::All),
                }
            }
            Request::State { addr, nb_blocks } => {
                let Some((first, count)) = self.range(addr, nb_blocks) else {
                    return Plan::answer(RESP_ERROR);
                };
                let plugged = self.blocks.count_range(first, count);
                let state = if plugged == count {
                    STATE_PLUGGED
                } else if plugged == 0 {
                    STATE_UNPLUGGED
                } else {
                    STATE_MIXED
                };
                Plan {
                    response: Response {
                        kind: RESP_ACK,
                        state,
                    },
                    before: vec![],
                    after: vec![],
                    change: None,
                }
            }
            Request::Unknown(_) => Plan::answer(RESP_ERROR),
        }
    }

    /// The DMA bookkeeping `plan` implies.
    pub fn dma_change(&self, plan: &Plan) -> Option<DmaChange> {
        let bs = self.geometry.block_size;
        match plan.change? {
            Change::Set {
                first,
                count,
                plugged: true,
            } => Some(DmaChange::Map {
                offset: first * bs,
                len: count * bs,
            }),
            Change::Set {
                first,
                count,
                plugged: false,
            } => Some(DmaChange::Unmap {
                offset: first * bs,
                len: count * bs,
            }),
            Change::All => Some(DmaChange::Unmap {
                offset: 0,
                len: self.geometry.region_size,
            }),
        }
    }

    /// Applies a plan whose `before` effects all succeeded (slot effects
    /// must already be recorded with [`MemState::slot_done`]).
    pub fn commit(&mut self, plan: &Plan) {
        let bps = self.geometry.blocks_per_slot();
        match plan.change {
            Some(Change::Set {
                first,
                count,
                plugged,
            }) => {
                self.blocks.set_range(first, count, plugged);
                for n in self.slots_of(first, count) {
                    let slot_first = n as u64 * bps;
                    self.slot_plugged[n] = self.blocks.count_range(slot_first, bps);
                }
            }
            Some(Change::All) => {
                self.blocks.clear();
                self.slot_plugged.fill(0);
                // The only moment usable_region_size may shrink.
                self.usable_region_size = self.usable_for(self.requested_size);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const BASE: u64 = 68 << 30;

    fn geom() -> Geometry {
        Geometry {
            addr: BASE,
            region_size: 1024 * MIB,
            block_size: 2 * MIB,
            slot_size: 128 * MIB,
            node_id: 0,
        }
    }

    fn state(requested: u64) -> MemState {
        let mut s = MemState::new(geom(), requested, false);
        for e in s.activate(true) {
            s.slot_done(e);
        }
        s
    }

    /// Plans, applies the slot effects, commits; returns the response.
    fn run(s: &mut MemState, req: Request) -> Response {
        let p = s.plan(req);
        for e in &p.before {
            s.slot_done(*e);
        }
        s.commit(&p);
        p.response
    }

    fn plug(addr: u64, n: u16) -> Request {
        Request::Plug { addr, nb_blocks: n }
    }

    fn unplug(addr: u64, n: u16) -> Request {
        Request::Unplug { addr, nb_blocks: n }
    }

    fn u64_at(c: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(c[o..o + 8].try_into().unwrap())
    }

    // --- snapshots ---

    /// Plugged blocks and sizes survive save -> restore, and the restored
    /// state answers the next requests as the original would: the plugged
    /// blocks unplug, a plugged block cannot be plugged again, and
    /// activation maps exactly the slots holding plugged blocks.
    #[test]
    fn a_restored_state_answers_as_the_saved_one() {
        let mut s = state(512 * MIB);
        assert_eq!(run(&mut s, plug(BASE, 10)).kind, RESP_ACK);
        assert_eq!(run(&mut s, plug(BASE + 300 * MIB, 4)).kind, RESP_ACK);
        let saved = s.saved();
        assert_eq!(saved.plugged, vec![(0, 20 * MIB), (300 * MIB, 8 * MIB)]);
        let mut r = MemState::from_saved(geom(), false, &saved).unwrap();
        assert_eq!(r.config(), s.config(), "the driver sees the same device");
        let maps = r.activate(true);
        assert_eq!(maps, vec![Effect::MapSlot(0), Effect::MapSlot(2)]);
        for e in maps {
            r.slot_done(e);
        }
        assert_eq!(
            run(&mut r, plug(BASE, 1)).kind,
            RESP_ERROR,
            "already plugged"
        );
        assert_eq!(run(&mut r, unplug(BASE + 300 * MIB, 4)).kind, RESP_ACK);
        assert_eq!(r.plugged_size(), 20 * MIB);
    }

    #[test]
    fn a_saved_state_that_does_not_fit_is_refused() {
        let mut s = state(512 * MIB);
        run(&mut s, plug(BASE, 10));
        let saved = s.saved();
        let other = Geometry {
            region_size: 2048 * MIB,
            ..geom()
        };
        assert!(MemState::from_saved(other, false, &saved)
            .unwrap_err()
            .contains("not this VM's"));
        for (bad, why) in [
            (vec![(MIB, 2 * MIB)], "not whole blocks"),
            (vec![(100 * MIB, 2 * MIB), (0, 2 * MIB)], "in order"),
            (vec![(1000 * MIB, 2 * MIB)], "inside the usable region"),
            (vec![(0, 0)], "not whole blocks"),
            (vec![(u64::MAX - 1, 4 * MIB)], "overflows"),
        ] {
            let st = MemSavedState {
                plugged: bad.clone(),
                ..saved.clone()
            };
            let err = MemState::from_saved(geom(), false, &st).unwrap_err();
            assert!(
                err.contains(why) || err.contains("whole blocks"),
                "{bad:?}: {err}"
            );
        }
        let st = MemSavedState {
            requested_size: 3 * MIB,
            ..saved
        };
        assert!(MemState::from_saved(geom(), false, &st).is_err());
    }

    // --- configuration rules ---

    #[test]
    fn device_must_not_change_block_size_node_addr_region_size() {
        let mut s = state(512 * MIB);
        let before = s.config();
        run(&mut s, plug(BASE, 10));
        s.set_requested(0);
        run(&mut s, Request::UnplugAll);
        let after = s.config();
        assert_eq!(
            before[0..32],
            after[0..32],
            "block_size, node_id, addr, region_size unchanged"
        );
        assert_eq!(
            (u64_at(&after, 0), u64_at(&after, 16), u64_at(&after, 24)),
            (2 * MIB, BASE, 1024 * MIB)
        );
    }

    #[test]
    fn device_must_reflect_plugged_blocks_in_plugged_size() {
        let mut s = state(512 * MIB);
        assert_eq!(u64_at(&s.config(), 40), 0);
        run(&mut s, plug(BASE + 4 * MIB, 3));
        assert_eq!(u64_at(&s.config(), 40), 6 * MIB);
        run(&mut s, unplug(BASE + 6 * MIB, 1));
        assert_eq!(u64_at(&s.config(), 40), 4 * MIB);
    }

    #[test]
    fn usable_region_size_must_not_be_below_requested_size() {
        let mut s = state(0);
        for r in [0, 2, 300, 768, 1024, 64, 0] {
            s.set_requested(r * MIB);
            assert!(
                s.usable_region_size() >= s.requested_size(),
                "requested {r} MiB"
            );
            assert!(s.usable_region_size() <= 1024 * MIB);
        }
    }

    #[test]
    fn sizes_must_be_multiples_of_block_size() {
        let mut s = state(0);
        s.set_requested(5 * MIB + 123);
        assert_eq!(s.requested_size() % (2 * MIB), 0);
        let c = s.config();
        for off in [16, 24, 32, 40, 48] {
            assert_eq!(u64_at(&c, off) % (2 * MIB), 0, "field at {off}");
        }
    }

    #[test]
    fn usable_region_size_must_not_shrink_except_on_unplug_all() {
        let mut s = state(768 * MIB);
        let grown = s.usable_region_size();
        assert_eq!(grown, 1024 * MIB);
        s.set_requested(0);
        assert_eq!(
            s.usable_region_size(),
            grown,
            "lowering requested does not shrink usable"
        );
        assert_eq!(
            run(&mut s, unplug(BASE, 1)).kind,
            RESP_ERROR,
            "nothing plugged"
        );
        assert_eq!(s.usable_region_size(), grown);
        assert_eq!(
            run(&mut s, Request::UnplugAll),
            Response {
                kind: RESP_ACK,
                state: 0
            }
        );
        assert_eq!(s.usable_region_size(), 0, "UNPLUG_ALL may shrink it");
    }

    #[test]
    fn config_change_is_signalled_when_requested_or_usable_size_change() {
        let mut s = state(0);
        let g0 = s.generation();
        assert!(s.set_requested(512 * MIB));
        assert_ne!(s.generation(), g0);
        let g1 = s.generation();
        assert!(
            !s.set_requested(512 * MIB),
            "no change, no notification needed"
        );
        assert_eq!(s.generation(), g1);
        run(&mut s, plug(BASE, 4));
        assert_eq!(s.generation(), g1, "plugged_size changes are not notified");
    }

    // --- PLUG ---

    #[test]
    fn plug_with_misaligned_address_is_error() {
        let mut s = state(512 * MIB);
        assert_eq!(run(&mut s, plug(BASE + 4096, 1)).kind, RESP_ERROR);
        assert_eq!(run(&mut s, plug(BASE - 2 * MIB, 1)).kind, RESP_ERROR);
    }

    #[test]
    fn plug_of_zero_blocks_is_error() {
        let mut s = state(512 * MIB);
        assert_eq!(run(&mut s, plug(BASE, 0)).kind, RESP_ERROR);
    }

    #[test]
    fn plug_outside_the_usable_region_is_error() {
        let mut s = state(128 * MIB); // usable = 384 MiB
        assert_eq!(s.usable_region_size(), 384 * MIB);
        assert_eq!(run(&mut s, plug(BASE + 384 * MIB, 1)).kind, RESP_ERROR);
        assert_eq!(
            run(&mut s, plug(BASE + 382 * MIB, 2)).kind,
            RESP_ERROR,
            "crosses the end"
        );
        assert_eq!(
            run(&mut s, plug(u64::MAX - MIB + 1, u16::MAX)).kind,
            RESP_ERROR,
            "no overflow"
        );
        assert_eq!(run(&mut s, plug(BASE + 382 * MIB, 1)).kind, RESP_ACK);
    }

    #[test]
    fn plug_of_a_plugged_block_is_error() {
        let mut s = state(512 * MIB);
        assert_eq!(run(&mut s, plug(BASE + 2 * MIB, 2)).kind, RESP_ACK);
        assert_eq!(
            run(&mut s, plug(BASE, 2)).kind,
            RESP_ERROR,
            "second block already plugged"
        );
        assert_eq!(s.plugged_size(), 4 * MIB, "nothing changed");
    }

    #[test]
    fn plug_beyond_requested_size_is_nack() {
        let mut s = state(8 * MIB);
        assert_eq!(run(&mut s, plug(BASE, 3)).kind, RESP_ACK);
        assert_eq!(run(&mut s, plug(BASE + 6 * MIB, 2)).kind, RESP_NACK);
        assert_eq!(run(&mut s, plug(BASE + 6 * MIB, 1)).kind, RESP_ACK);
        assert_eq!(s.plugged_size(), 8 * MIB);
    }

    // --- UNPLUG / UNPLUG_ALL / STATE ---

    #[test]
    fn unplug_with_bad_range_is_error() {
        let mut s = state(512 * MIB);
        run(&mut s, plug(BASE, 4));
        assert_eq!(run(&mut s, unplug(BASE + 1, 1)).kind, RESP_ERROR);
        assert_eq!(run(&mut s, unplug(BASE, 0)).kind, RESP_ERROR);
        assert_eq!(run(&mut s, unplug(BASE + 1024 * MIB, 1)).kind, RESP_ERROR);
    }

    #[test]
    fn unplug_of_an_unplugged_block_is_error() {
        let mut s = state(512 * MIB);
        run(&mut s, plug(BASE, 2));
        assert_eq!(run(&mut s, unplug(BASE, 3)).kind, RESP_ERROR);
        assert_eq!(s.plugged_size(), 4 * MIB);
    }

    #[test]
    fn unplug_ack_discards_the_blocks() {
        let mut s = state(512 * MIB);
        run(&mut s, plug(BASE, 4));
        let p = s.plan(unplug(BASE + 2 * MIB, 2));
        assert_eq!(p.response.kind, RESP_ACK);
        assert_eq!(
            p.after,
            vec![Effect::Discard {
                offset: 2 * MIB,
                len: 4 * MIB
            }]
        );
    }

    #[test]
    fn unplug_all_acks_with_plugged_size_zero() {
        let mut s = state(1024 * MIB);
        run(&mut s, plug(BASE, 100));
        run(&mut s, plug(BASE + 600 * MIB, 50));
        assert_eq!(run(&mut s, Request::UnplugAll).kind, RESP_ACK);
        assert_eq!(s.plugged_size(), 0);
        assert_eq!(u64_at(&s.config(), 40), 0);
    }

    #[test]
    fn state_reports_plugged_unplugged_and_mixed() {
        let mut s = state(512 * MIB);
        run(&mut s, plug(BASE + 2 * MIB, 2));
        let st = |s: &mut MemState, a, n| {
            run(
                s,
                Request::State {
                    addr: a,
                    nb_blocks: n,
                },
            )
        };
        assert_eq!(
            st(&mut s, BASE + 2 * MIB, 2),
            Response {
                kind: RESP_ACK,
                state: STATE_PLUGGED
            }
        );
        assert_eq!(
            st(&mut s, BASE + 8 * MIB, 5),
            Response {
                kind: RESP_ACK,
                state: STATE_UNPLUGGED
            }
        );
        assert_eq!(
            st(&mut s, BASE, 2),
            Response {
                kind: RESP_ACK,
                state: STATE_MIXED
            }
        );
        assert_eq!(st(&mut s, BASE + 1, 2).kind, RESP_ERROR);
        assert_eq!(st(&mut s, BASE, 0).kind, RESP_ERROR);
    }

    #[test]
    fn unknown_request_type_is_error() {
        let mut s = state(512 * MIB);
        assert_eq!(run(&mut s, Request::Unknown(7)).kind, RESP_ERROR);
        let mut raw = [0u8; 24];
        raw[0] = 9;
        assert_eq!(Request::parse(&raw), Request::Unknown(9));
    }

    #[test]
    fn request_and_response_layouts() {
        let mut raw = [0u8; 24];
        raw[0..2].copy_from_slice(&REQ_STATE.to_le_bytes());
        raw[8..16].copy_from_slice(&0x1234_0000u64.to_le_bytes());
        raw[16..18].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(
            Request::parse(&raw),
            Request::State {
                addr: 0x1234_0000,
                nb_blocks: 7
            }
        );
        let b = Response {
            kind: RESP_ACK,
            state: STATE_MIXED,
        }
        .to_bytes();
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
    }

    // --- resets ---

    #[test]
    fn device_reset_keeps_block_states() {
        let mut s = state(512 * MIB);
        run(&mut s, plug(BASE, 8));
        // A device reset stops the queue; re-activation maps what is plugged.
        let effects = s.activate(true);
        assert!(effects.is_empty(), "slot 0 is still mapped");
        assert_eq!(s.plugged_size(), 16 * MIB);
    }

    #[test]
    fn system_reset_starts_with_nothing_plugged() {
        let s = MemState::new(geom(), 512 * MIB, false);
        assert_eq!((s.plugged_size(), s.requested_size()), (0, 512 * MIB));
        assert!((0..8).all(|n| !s.slot_mapped(n)));
    }

    // --- slots ---

    #[test]
    fn first_plug_in_a_slot_maps_it_and_last_unplug_unmaps_it() {
        let mut s = state(1024 * MIB);
        let p = s.plan(plug(BASE + 126 * MIB, 2)); // blocks 63 (slot 0) and 64 (slot 1)
        assert_eq!(p.before, vec![Effect::MapSlot(0), Effect::MapSlot(1)]);
        for e in &p.before {
            s.slot_done(*e);
        }
        s.commit(&p);
        let p = s.plan(plug(BASE, 1));
        assert!(p.before.is_empty(), "slot 0 already mapped");
        run(&mut s, plug(BASE, 1));
        let p = s.plan(unplug(BASE + 128 * MIB, 1));
        assert_eq!(p.before, vec![Effect::UnmapSlot(1)], "slot 1 becomes empty");
        run(&mut s, unplug(BASE + 128 * MIB, 1));
        let p = s.plan(unplug(BASE + 126 * MIB, 1));
        assert!(p.before.is_empty(), "slot 0 still has block 0");
        run(&mut s, unplug(BASE + 126 * MIB, 1));
        assert!(s.slot_mapped(0) && !s.slot_mapped(1));
        let p = s.plan(Request::UnplugAll);
        assert_eq!(p.before, vec![Effect::UnmapSlot(0)]);
    }

    #[test]
    fn without_unplugged_inaccessible_every_slot_is_mapped_at_activation() {
        let mut s = MemState::new(geom(), 512 * MIB, false);
        let effects = s.activate(false);
        assert_eq!(effects.len(), 8);
        for e in effects {
            s.slot_done(e);
        }
        let p = s.plan(plug(BASE, 1));
        assert!(p.before.is_empty());
        run(&mut s, plug(BASE, 1));
        assert!(
            s.plan(unplug(BASE, 1)).before.is_empty(),
            "slots stay mapped"
        );
    }

    #[test]
    fn populate_is_planned_for_hugetlbfs_backing() {
        let mut s = MemState::new(geom(), 512 * MIB, true);
        for e in s.activate(true) {
            s.slot_done(e);
        }
        let p = s.plan(plug(BASE + 4 * MIB, 2));
        assert!(p.before.contains(&Effect::Populate {
            offset: 4 * MIB,
            len: 4 * MIB
        }));
    }

    #[test]
    fn a_failed_before_effect_leaves_no_trace() {
        let s = state(512 * MIB);
        let p = s.plan(plug(BASE, 4));
        // The VMM failed to map: no slot_done, no commit.
        drop(p);
        assert_eq!(s.plugged_size(), 0);
        assert!(!s.slot_mapped(0));
    }
}
