//! The ITS as a driver sees it: registers, the device and collection
//! tables, the command queue and the commands.

use crate::gic::Heap;
use crate::hw::{self, read32, read64, write32, write64};
use crate::layout::GIC_ITS_START;

const GITS_CTLR: u64 = 0x0;
const GITS_IIDR: u64 = 0x4;
const GITS_TYPER: u64 = 0x8;
const GITS_CBASER: u64 = 0x80;
const GITS_CWRITER: u64 = 0x88;
const GITS_CREADR: u64 = 0x90;
const GITS_BASER: u64 = 0x100;
/// BASER.Type: device table.
pub const TYPE_DEVICE: u64 = 1;
/// BASER.Type: collection table.
pub const TYPE_COLLECTION: u64 = 4;
const QUEUE_SIZE: u64 = 0x1_0000;
const TABLE_SIZE: u64 = 0x1_0000;
/// Valid, inner-shareable, write-back cacheable (BASERn and CBASER).
const TABLE_ATTRS: u64 = (1 << 63) | (0b111 << 59) | (0b01 << 10);

fn reg(off: u64) -> u64 {
    GIC_ITS_START + off
}

/// GITS_TYPER.
pub fn typer() -> u64 {
    read64(reg(GITS_TYPER))
}

/// GITS_IIDR.
pub fn iidr() -> u32 {
    read32(reg(GITS_IIDR))
}

/// GITS_CTLR.
pub fn ctlr() -> u32 {
    read32(reg(GITS_CTLR))
}

/// GITS_CBASER.
pub fn cbaser() -> u64 {
    read64(reg(GITS_CBASER))
}

/// GITS_BASER`n`.
pub fn baser(n: u64) -> u64 {
    read64(reg(GITS_BASER + 8 * n))
}

/// BASER.Type.
pub fn baser_type(b: u64) -> u64 {
    (b >> 56) & 7
}

/// BASER.Entry_Size in bytes.
pub fn baser_entry_size(b: u64) -> u64 {
    ((b >> 48) & 0x1f) + 1
}

/// An ITS command.
pub enum Cmd {
    /// Map (or with `valid` false, unmap) a device to an ITT of 2^`bits` events.
    Mapd {
        dev: u32,
        itt: u64,
        bits: u32,
        valid: bool,
    },
    /// Map a collection to a redistributor (PE number; GITS_TYPER.PTA = 0).
    Mapc { icid: u16, pe: u64 },
    /// Map an event to an LPI in a collection.
    Mapti {
        dev: u32,
        event: u32,
        lpi: u32,
        icid: u16,
    },
    /// Move an event to another collection.
    Movi { dev: u32, event: u32, icid: u16 },
    /// Make an event's LPI pending.
    Int { dev: u32, event: u32 },
    /// Reload an event's LPI configuration.
    Inv { dev: u32, event: u32 },
    /// Reload the configuration of every LPI in a collection.
    Invall { icid: u16 },
    /// Wait for the effects on a redistributor.
    Sync { pe: u64 },
}

impl Cmd {
    fn encode(&self) -> [u64; 4] {
        let dev = |op: u64, d: u32| op | (u64::from(d) << 32);
        match *self {
            Cmd::Mapd {
                dev: d,
                itt,
                bits,
                valid,
            } => [
                dev(0x08, d),
                u64::from(bits.saturating_sub(1) & 0x1f),
                (itt & 0x000f_ffff_ffff_ff00) | (u64::from(valid) << 63),
                0,
            ],
            Cmd::Mapc { icid, pe } => [0x09, 0, u64::from(icid) | (pe << 16) | (1 << 63), 0],
            Cmd::Mapti {
                dev: d,
                event,
                lpi,
                icid,
            } => [
                dev(0x0a, d),
                u64::from(event) | (u64::from(lpi) << 32),
                u64::from(icid),
                0,
            ],
            Cmd::Movi {
                dev: d,
                event,
                icid,
            } => [dev(0x01, d), u64::from(event), u64::from(icid), 0],
            Cmd::Int { dev: d, event } => [dev(0x03, d), u64::from(event), 0, 0],
            Cmd::Inv { dev: d, event } => [dev(0x0c, d), u64::from(event), 0, 0],
            Cmd::Invall { icid } => [0x0d, 0, u64::from(icid), 0],
            Cmd::Sync { pe } => [0x05, 0, pe << 16, 0],
        }
    }
}

/// The ITS with its tables allocated and its command queue running.
pub struct Its {
    queue: u64,
    cwriter: u64,
}

impl Its {
    /// Gives the device and collection tables one 64 KiB page each, sets
    /// up the command queue and enables the ITS.
    pub fn init(heap: &mut Heap) -> Result<Self, &'static str> {
        for n in 0..8 {
            let b = baser(n);
            let ty = baser_type(b);
            if ty != TYPE_DEVICE && ty != TYPE_COLLECTION {
                continue;
            }
            let table = heap.alloc(TABLE_SIZE, TABLE_SIZE);
            let v = TABLE_ATTRS | (b & (0x1f << 48)) | (ty << 56) | table | (0b10 << 8);
            write64(reg(GITS_BASER + 8 * n), v);
            if (baser(n) >> 8) & 3 != 0b10 {
                return Err("the ITS refused a 64 KiB table page");
            }
        }
        let queue = heap.alloc(QUEUE_SIZE, QUEUE_SIZE);
        write64(
            reg(GITS_CBASER),
            TABLE_ATTRS | queue | (QUEUE_SIZE / 4096 - 1),
        );
        write64(reg(GITS_CWRITER), 0);
        write32(reg(GITS_CTLR), 1);
        Ok(Its { queue, cwriter: 0 })
    }

    /// Queues `cmd` and waits (up to a second) for the ITS to consume it.
    /// False if GITS_CREADR did not catch up.
    pub fn send(&mut self, cmd: Cmd) -> bool {
        let at = self.queue + self.cwriter;
        for (i, dw) in cmd.encode().iter().enumerate() {
            // SAFETY: the 32-byte slot at `cwriter` inside the queue.
            unsafe { core::ptr::write_volatile((at + 8 * i as u64) as *mut u64, *dw) };
        }
        hw::dsb();
        self.cwriter = (self.cwriter + 32) % QUEUE_SIZE;
        write64(reg(GITS_CWRITER), self.cwriter);
        let end = hw::now_us() + 1_000_000;
        while read64(reg(GITS_CREADR)) & 0xf_ffe0 != self.cwriter {
            if hw::now_us() > end {
                return false;
            }
        }
        true
    }
}
