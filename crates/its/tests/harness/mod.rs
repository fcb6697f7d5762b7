//! A guest-like driver for the ITS model: allocates tables in guest memory,
//! programs the registers as kvm-unit-tests' library does, writes commands
//! into the queue and checks CREADR catches up after each.

#![allow(dead_code)]

use its::regs::*;
use its::{tables, Command, Its, Lpis};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

pub const MEM_SIZE: usize = 16 << 20;
pub const PROP_TABLE: u64 = 0x10_0000;
pub const PEND_TABLES: u64 = 0x20_0000; // + pe * 64 KiB
pub const DEVICE_TABLE: u64 = 0x40_0000;
pub const COLL_TABLE: u64 = 0x50_0000;
pub const CMD_QUEUE: u64 = 0x60_0000;
pub const ITTS: u64 = 0x70_0000; // + dev * 4 KiB
pub const LPI_PROP_DEFAULT: u8 = 0xa0 | 0x2 | 0x1;

pub struct Machine {
    pub its: Its,
    pub lpis: Lpis,
    pub mem: GuestMemoryMmap,
    pub nr_pes: usize,
}

impl Machine {
    /// `nr_pes` PEs, ITS tables programmed and valid, ITS still disabled.
    pub fn new(nr_pes: usize) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut m = Self {
            its: Its::new(),
            lpis: Lpis::new(nr_pes),
            mem,
            nr_pes,
        };
        m.write64(GITS_BASER, DEVICE_TABLE | BASER_VALID);
        m.write64(GITS_BASER + 8, COLL_TABLE | BASER_VALID);
        m.write64(GITS_CBASER, CMD_QUEUE | CBASER_VALID | 15);
        m.write64(GITS_CWRITER, 0);
        m
    }

    /// As kvm-unit-tests' `its_enable_defaults`: PROPBASER (IDbits = 13: INTIDs up to 16383),
    /// pending tables, EnableLPIs on every PE, then GITS_CTLR.Enabled.
    pub fn enable_defaults(&mut self) {
        self.lpis.write_propbaser(PROP_TABLE | 13);
        for pe in 0..self.nr_pes as u32 {
            self.lpis
                .write_pendbaser(pe, PEND_TABLES + u64::from(pe) * 0x1_0000);
            self.lpis.write_enable_lpis(pe, true, &self.mem);
        }
        self.write32(GITS_CTLR, CTLR_ENABLED);
        assert!(self.its.enabled());
    }

    pub fn read64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.its.mmio_read(off, &mut b);
        u64::from_le_bytes(b)
    }

    pub fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.its.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write64(&mut self, off: u64, v: u64) {
        self.its
            .mmio_write(off, &v.to_le_bytes(), &mut self.lpis, &self.mem);
    }

    pub fn write32(&mut self, off: u64, v: u32) {
        self.its
            .mmio_write(off, &v.to_le_bytes(), &mut self.lpis, &self.mem);
    }

    /// Queues `c` at CWRITER, kicks, and checks the ITS consumed it.
    pub fn cmd(&mut self, c: Command) {
        let w = self.read64(GITS_CWRITER);
        self.mem
            .write_slice(&c.encode(), GuestAddress(CMD_QUEUE + w))
            .unwrap();
        let next = (w + 32) % cbaser_size(self.read64(GITS_CBASER));
        self.write64(GITS_CWRITER, next);
        assert_eq!(
            self.read64(GITS_CREADR),
            next,
            "{c:?} timeout! (CREADR did not catch up)"
        );
    }

    pub fn set_config(&self, lpi: u32, v: u8) {
        self.mem
            .write_obj(v, GuestAddress(PROP_TABLE + u64::from(lpi - LPI_BASE)))
            .unwrap();
    }

    pub fn set_pending_bit(&self, pe: u32, lpi: u32) {
        let a = GuestAddress(PEND_TABLES + u64::from(pe) * 0x1_0000 + u64::from(lpi / 8));
        let b: u8 = self.mem.read_obj(a).unwrap();
        self.mem.write_obj(b | (1 << (lpi % 8)), a).unwrap();
    }

    pub fn itt(dev: u32) -> u64 {
        ITTS + u64::from(dev) * 0x1000
    }

    pub fn delivered(&mut self) -> Vec<(u32, u32)> {
        self.lpis.take_delivered()
    }

    /// kvm-unit-tests' `its_setup1`: devices 2 and 7 with 8 EventID bits,
    /// collection 3 on PE 3 and 2 on PE 2, LPIs 8195 (dev 2 / event 20,
    /// collection 3) and 8196 (dev 7 / event 255, collection 2).
    pub fn setup1(&mut self) {
        self.set_config(8195, LPI_PROP_DEFAULT);
        self.set_config(8196, LPI_PROP_DEFAULT);
        self.cmd(Command::Mapd {
            device: 2,
            size: 7,
            itt: Self::itt(2),
            valid: true,
        });
        self.cmd(Command::Mapd {
            device: 7,
            size: 7,
            itt: Self::itt(7),
            valid: true,
        });
        self.cmd(Command::Mapc {
            icid: 3,
            pe: 3,
            valid: true,
        });
        self.cmd(Command::Mapc {
            icid: 2,
            pe: 2,
            valid: true,
        });
        self.cmd(Command::Invall { icid: 2 });
        self.cmd(Command::Invall { icid: 3 });
        self.cmd(Command::Mapti {
            device: 2,
            event: 20,
            lpi: 8195,
            icid: 3,
        });
        self.cmd(Command::Mapti {
            device: 7,
            event: 255,
            lpi: 8196,
            icid: 2,
        });
    }

    /// Live migration: SAVE_PENDING_TABLES + ITS_SAVE_TABLES + registers, guest
    /// RAM copied, then a fresh machine restored in KVM's documented order:
    /// redistributors (PROPBASER, PENDBASER), ITS registers (CBASER first),
    /// RESTORE_TABLES, GITS_CTLR, and GICR_CTLR.EnableLPIs last.
    pub fn migrate(&self) -> Machine {
        self.lpis.save_pending_tables(&self.mem).unwrap();
        tables::save_tables(&self.its, &self.mem).unwrap();
        let regs = self.its.regs();
        let rds = self.lpis.redistributors();
        let mut ram = vec![0u8; MEM_SIZE];
        self.mem.read_slice(&mut ram, GuestAddress(0)).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        mem.write_slice(&ram, GuestAddress(0)).unwrap();
        let mut dst = Machine {
            its: Its::new(),
            lpis: Lpis::new(self.nr_pes),
            mem,
            nr_pes: self.nr_pes,
        };
        dst.lpis.write_propbaser(self.lpis.propbaser);
        for (pe, rd) in rds.iter().enumerate() {
            dst.lpis.write_pendbaser(pe as u32, rd.pendbaser);
        }
        dst.its.restore_regs(&regs).unwrap();
        tables::restore_tables(&mut dst.its, &mut dst.lpis, &dst.mem).unwrap();
        dst.its.restore_ctlr(regs.ctlr, &mut dst.lpis, &dst.mem);
        for (pe, rd) in rds.iter().enumerate() {
            dst.lpis
                .write_enable_lpis(pe as u32, rd.enable_lpis, &dst.mem);
        }
        dst
    }
}

/// The raw 8-byte entry at `addr`.
pub fn entry(mem: &impl GuestMemory, addr: u64) -> u64 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}
