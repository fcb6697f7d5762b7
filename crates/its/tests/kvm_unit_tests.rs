//! The project's `-g its`: kvm-unit-tests' five ITS cases (arm/gic.c)
//! re-expressed against the model, each of their checks as asserts on what
//! every PE received. Written from the documented behaviour, not their code.

mod harness;

use harness::*;
use its::regs::*;
use its::Command;

#[test]
fn its_introspection() {
    let mut m = Machine::new(4);
    // (1) GITS_IIDR is read-only.
    let iidr = m.read32(GITS_IIDR);
    m.write32(GITS_IIDR, !iidr);
    assert_eq!(m.read32(GITS_IIDR), iidr, "GITS_IIDR is read-only");
    // (2) GITS_TYPER is read-only.
    let typer = m.read64(GITS_TYPER);
    m.write64(GITS_TYPER, !typer);
    assert_eq!(m.read64(GITS_TYPER), typer, "GITS_TYPER is read-only");
    // (3) Physical LPIs supported.
    assert_eq!(typer & 1, 1, "ITS supports physical LPIs");
    // (4) ID spaces: EventID, DeviceID and collection ID bits non-zero (CIL = 0 -> 16).
    let event_bits = ((typer >> 8) & 0x1f) + 1;
    let device_bits = ((typer >> 13) & 0x1f) + 1;
    let coll_bits = if (typer >> 36) & 1 == 1 {
        ((typer >> 32) & 0xf) + 1
    } else {
        16
    };
    assert!(event_bits > 0 && device_bits > 0 && coll_bits > 0);
    assert_eq!((event_bits, device_bits, coll_bits), (16, 16, 16));
    assert_eq!(((typer >> 4) & 0xf) + 1, 8, "ITT entry size");
    assert_eq!(
        (typer >> 19) & 1,
        0,
        "PTA = 0: collections target PE numbers"
    );
    // (5) Device and collection BASERs found, with 64 KiB pages.
    let types: Vec<(u64, u64, u64)> = (0..8)
        .map(|n| {
            let b = m.read64(GITS_BASER + 8 * n);
            ((b >> 56) & 7, ((b >> 48) & 0x1f) + 1, (b >> 8) & 3)
        })
        .collect();
    assert!(
        types.contains(&(1, 8, 2)),
        "device BASER: type 1, 8-byte entries, 64K pages"
    );
    assert!(
        types.contains(&(4, 8, 2)),
        "collection BASER: type 4, 8-byte entries, 64K pages"
    );
    assert_eq!(types[2..], [(0, 1, 0); 6], "BASER2-7 unimplemented (RAZ)");
}

#[test]
fn its_trigger() {
    let mut m = Machine::new(4);
    m.enable_defaults();
    m.setup1();
    assert!(m.delivered().is_empty(), "nothing fires during setup");
    // int: (1) dev 2 / event 20 -> exactly PE 3 gets LPI 8195.
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(m.delivered(), vec![(3, 8195)]);
    // (2) dev 7 / event 255 -> exactly PE 2 gets LPI 8196.
    m.cmd(Command::Int {
        device: 7,
        event: 255,
    });
    assert_eq!(m.delivered(), vec![(2, 8196)]);
    // inv/invall: (3) LPI 8195 disabled and made visible with INV: INT raises nothing.
    m.set_config(8195, LPI_PROP_DEFAULT & !1);
    m.cmd(Command::Inv {
        device: 2,
        event: 20,
    });
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert!(m.delivered().is_empty(), "a disabled LPI is not delivered");
    // (4) Re-enabled, INT, then INVALL: PE 3 gets the pending LPI, once.
    m.set_config(8195, LPI_PROP_DEFAULT);
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    m.cmd(Command::Invall { icid: 3 });
    assert_eq!(
        m.delivered(),
        vec![(3, 8195)],
        "the pending LPI is received after INVALL"
    );
    // (5) And once more after another INT.
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(m.delivered(), vec![(3, 8195)]);
    // mapd valid=false: (6) dev 2 unmapped, INT raises nothing (silently ignored).
    m.cmd(Command::Mapd {
        device: 2,
        size: 0,
        itt: 0,
        valid: false,
    });
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert!(m.delivered().is_empty(), "no LPI after device unmap");
    // The model says why (the tester-friendliness the real ITS lacks).
    let last = m.its.dropped().last().copied().unwrap();
    assert_eq!(last.reason, its::DropReason::UnmappedDevice(2));
}

#[test]
fn its_migration() {
    let mut m = Machine::new(4);
    m.enable_defaults();
    m.setup1();
    let mut dst = m.migrate();
    // After migration: (1) PE 3 gets 8195, (2) PE 2 gets 8196.
    dst.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(dst.delivered(), vec![(3, 8195)]);
    dst.cmd(Command::Int {
        device: 7,
        event: 255,
    });
    assert_eq!(dst.delivered(), vec![(2, 8196)]);
    assert_eq!(
        dst.its.devices(),
        m.its.devices(),
        "device table and ITTs survive"
    );
    assert_eq!(
        dst.its.collections(),
        m.its.collections(),
        "collection table survives"
    );
}

#[test]
fn its_pending_migration() {
    let mut m = Machine::new(4);
    let (pe0, pe1) = (3u32, 2u32);
    // The PEs take no interrupts until after migration.
    m.lpis.set_masked(pe0, true);
    m.lpis.set_masked(pe1, true);
    m.lpis.write_propbaser(PROP_TABLE | 13);
    for pe in 0..4 {
        m.lpis
            .write_pendbaser(pe, (PEND_TABLES + u64::from(pe) * 0x1_0000) | PENDBASER_PTZ);
    }
    m.write32(GITS_CTLR, CTLR_ENABLED);
    m.cmd(Command::Mapd {
        device: 2,
        size: 7,
        itt: Machine::itt(2),
        valid: true,
    });
    m.cmd(Command::Mapc {
        icid: pe0 as u16,
        pe: u64::from(pe0),
        valid: true,
    });
    m.cmd(Command::Mapc {
        icid: pe1 as u16,
        pe: u64::from(pe1),
        valid: true,
    });
    // EnableLPIs = 0 on both target PEs; 256 LPIs, interleaved, pending by hand.
    for i in 0..256u32 {
        let (pe, icid) = if i % 2 == 0 {
            (pe0, pe0 as u16)
        } else {
            (pe1, pe1 as u16)
        };
        m.set_config(8192 + i, LPI_PROP_DEFAULT);
        m.cmd(Command::Mapti {
            device: 2,
            event: i,
            lpi: 8192 + i,
            icid,
        });
        m.set_pending_bit(pe, 8192 + i);
    }
    m.cmd(Command::Invall { icid: pe0 as u16 });
    m.cmd(Command::Invall { icid: pe1 as u16 });
    // Clear PTZ, then enable LPIs: the pending tables are read.
    for pe in [pe0, pe1] {
        m.lpis
            .write_pendbaser(pe, PEND_TABLES + u64::from(pe) * 0x1_0000);
        m.lpis.write_enable_lpis(pe, true, &m.mem);
    }
    assert!(m.delivered().is_empty(), "masked PEs take nothing yet");
    let mut dst = m.migrate();
    dst.lpis.set_masked(pe0, false);
    dst.lpis.set_masked(pe1, false);
    let got = dst.delivered();
    let on = |pe: u32| got.iter().filter(|(p, _)| *p == pe).count();
    assert_eq!(
        (on(pe0), on(pe1)),
        (128, 128),
        "128 LPIs on both PE0 and PE1 after migration"
    );
    assert_eq!(got.len(), 256, "and none anywhere else");
    let mut lpis: Vec<u32> = got.iter().map(|(_, l)| *l).collect();
    lpis.sort_unstable();
    assert_eq!(lpis, (8192..8448).collect::<Vec<_>>());
}

#[test]
fn its_migrate_unmapped_collection() {
    let mut m = Machine::new(4);
    m.enable_defaults();
    m.setup1();
    // Collection for PE 0 exists only through MAPTI: not mapped.
    let (pe0, icid) = (0u32, 0u16);
    m.set_config(8192, LPI_PROP_DEFAULT);
    m.cmd(Command::Mapti {
        device: 2,
        event: 0,
        lpi: 8192,
        icid,
    });
    assert_eq!(
        m.its.collections().get(&icid),
        Some(&None),
        "collection exists, unmapped"
    );
    let mut dst = m.migrate();
    dst.cmd(Command::Mapc {
        icid,
        pe: u64::from(pe0),
        valid: true,
    });
    dst.cmd(Command::Invall { icid });
    // (1) The mapped parts still work.
    dst.cmd(Command::Int {
        device: 7,
        event: 255,
    });
    assert_eq!(dst.delivered(), vec![(2, 8196)]);
    // (2) The configuration byte was migrated with guest RAM.
    let cfg: u8 =
        vm_memory::Bytes::read_obj(&dst.mem, vm_memory::GuestAddress(PROP_TABLE)).unwrap();
    assert_eq!(cfg, LPI_PROP_DEFAULT, "LPI 8192 config properly migrated");
    // (3) The event on the once-unmapped collection reaches PE 0.
    dst.cmd(Command::Int {
        device: 2,
        event: 0,
    });
    assert_eq!(dst.delivered(), vec![(pe0, 8192)]);
}
