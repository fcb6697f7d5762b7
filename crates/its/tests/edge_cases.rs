//! What kvm-unit-tests cannot observe: why commands are dropped, queue
//! mechanics, register rules, table bounds and the saved byte layout.

mod harness;

use harness::*;
use its::regs::*;
use its::tables::{self, TableError};
use its::{Command, DropReason, Its, ItsRegs, Lpis};
use vm_memory::{Bytes, GuestAddress};

fn ready() -> Machine {
    let mut m = Machine::new(4);
    m.enable_defaults();
    m.setup1();
    m.its.clear_dropped();
    m
}

fn last_reason(m: &Machine) -> Option<DropReason> {
    m.its.dropped().last().map(|d| d.reason)
}

#[test]
fn every_invalid_command_class_is_ignored_with_its_reason_and_creadr_advances() {
    let mut m = ready();
    let itt = Machine::itt(9);
    let cases: Vec<(Command, DropReason)> = vec![
        (
            Command::Int {
                device: 99,
                event: 0,
            },
            DropReason::UnmappedDevice(99),
        ),
        (
            Command::Int {
                device: 2,
                event: 21,
            },
            DropReason::UnmappedEvent {
                device: 2,
                event: 21,
            },
        ),
        (
            Command::Mapd {
                device: 8192,
                size: 3,
                itt,
                valid: true,
            },
            DropReason::DeviceOutOfRange(8192),
        ),
        (
            Command::Mapd {
                device: 9,
                size: 16,
                itt,
                valid: true,
            },
            DropReason::IttSizeTooLarge(16),
        ),
        (
            Command::Mapd {
                device: 9,
                size: 3,
                itt: 0x40_0000_0000,
                valid: true,
            },
            DropReason::IttOutsideMemory {
                device: 9,
                itt: 0x40_0000_0000,
            },
        ),
        // 64 entries (512 bytes) starting 256 bytes before the end of memory.
        (
            Command::Mapd {
                device: 9,
                size: 5,
                itt: MEM_SIZE as u64 - 256,
                valid: true,
            },
            DropReason::IttOutsideMemory {
                device: 9,
                itt: MEM_SIZE as u64 - 256,
            },
        ),
        (
            Command::Mapti {
                device: 2,
                event: 256,
                lpi: 8200,
                icid: 3,
            },
            DropReason::EventOutOfRange {
                device: 2,
                event: 256,
            },
        ),
        (
            Command::Mapti {
                device: 2,
                event: 1,
                lpi: 8191,
                icid: 3,
            },
            DropReason::LpiOutOfRange(8191),
        ),
        (
            Command::Mapti {
                device: 2,
                event: 1,
                lpi: 16384,
                icid: 3,
            },
            DropReason::LpiOutOfRange(16384),
        ),
        (
            Command::Mapti {
                device: 2,
                event: 1,
                lpi: 8200,
                icid: 8192,
            },
            DropReason::CollectionOutOfRange(8192),
        ),
        (
            Command::Mapc {
                icid: 5,
                pe: 4,
                valid: true,
            },
            DropReason::PeOutOfRange(4),
        ),
        (
            Command::Invall { icid: 77 },
            DropReason::UnmappedCollection(77),
        ),
        (
            Command::Movi {
                device: 2,
                event: 20,
                icid: 77,
            },
            DropReason::UnmappedCollection(77),
        ),
        (
            Command::Movall { from: 0, to: 9 },
            DropReason::PeOutOfRange(9),
        ),
        (
            Command::Clear {
                device: 7,
                event: 3,
            },
            DropReason::UnmappedEvent {
                device: 7,
                event: 3,
            },
        ),
        (
            Command::Discard {
                device: 99,
                event: 1,
            },
            DropReason::UnmappedDevice(99),
        ),
        (
            Command::Inv {
                device: 7,
                event: 0,
            },
            DropReason::UnmappedEvent {
                device: 7,
                event: 0,
            },
        ),
        (Command::Virtual(0x2a), DropReason::VirtualCommand(0x2a)),
        (Command::Unknown(0x42), DropReason::UnknownCommand(0x42)),
    ];
    for (c, why) in cases {
        m.cmd(c); // asserts CREADR advanced
        assert_eq!(last_reason(&m), Some(why), "{c:?}");
    }
    assert_eq!(m.its.dropped().count(), 19);
    // The state is untouched: the good mappings still deliver.
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(m.delivered(), vec![(3, 8195)]);
}

#[test]
fn an_int_to_a_pe_without_lpis_is_refused() {
    let mut m = Machine::new(2);
    m.lpis.write_propbaser(PROP_TABLE | 13);
    m.write32(GITS_CTLR, CTLR_ENABLED);
    m.set_config(8300, LPI_PROP_DEFAULT);
    m.cmd(Command::Mapd {
        device: 1,
        size: 1,
        itt: Machine::itt(1),
        valid: true,
    });
    m.cmd(Command::Mapc {
        icid: 0,
        pe: 1,
        valid: true,
    });
    m.cmd(Command::Mapti {
        device: 1,
        event: 0,
        lpi: 8300,
        icid: 0,
    });
    m.cmd(Command::Int {
        device: 1,
        event: 0,
    });
    assert_eq!(last_reason(&m), Some(DropReason::LpisDisabled(1)));
    assert!(
        !m.its.translate(1, 0, &mut m.lpis),
        "an MSI is refused the same way"
    );
}

#[test]
fn mapti_on_a_mapped_event_keeps_the_first_mapping() {
    let mut m = ready();
    m.cmd(Command::Mapti {
        device: 2,
        event: 20,
        lpi: 8300,
        icid: 2,
    });
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(
        m.delivered(),
        vec![(3, 8195)],
        "UNPREDICTABLE; KVM keeps the existing mapping"
    );
}

#[test]
fn the_queue_wraps_around() {
    let mut m = Machine::new(4);
    // A 4 KiB queue: 128 commands; run 300 so it wraps twice.
    m.write64(GITS_CBASER, CMD_QUEUE | CBASER_VALID);
    m.enable_defaults();
    m.setup1();
    for i in 0..300 {
        m.cmd(Command::Int {
            device: if i % 2 == 0 { 2 } else { 7 },
            event: if i % 2 == 0 { 20 } else { 255 },
        });
    }
    let got = m.delivered();
    assert_eq!(got.len(), 300);
    assert!(m.read64(GITS_CREADR) < 4096);
    // Several commands in one kick, crossing the end of the queue.
    let w = m.read64(GITS_CWRITER);
    let mut off = w;
    for _ in 0..5 {
        m.mem
            .write_slice(
                &Command::Int {
                    device: 2,
                    event: 20,
                }
                .encode(),
                GuestAddress(CMD_QUEUE + off),
            )
            .unwrap();
        off = (off + 32) % 4096;
    }
    m.write64(GITS_CWRITER, off);
    assert_eq!(m.read64(GITS_CREADR), off);
    assert_eq!(m.delivered().len(), 5);
}

#[test]
fn a_cbaser_write_resets_creadr_and_is_refused_while_enabled() {
    let mut m = Machine::new(1);
    m.write64(GITS_CWRITER, 0x40); // commands only run once enabled
    assert_eq!(m.read64(GITS_CWRITER), 0x40);
    m.write64(GITS_CBASER, CMD_QUEUE | CBASER_VALID | 3);
    assert_eq!(
        (m.read64(GITS_CREADR), m.read64(GITS_CWRITER)),
        (0, 0),
        "CBASER write empties the queue"
    );
    m.enable_defaults();
    let cbaser = m.read64(GITS_CBASER);
    m.write64(GITS_CBASER, (CMD_QUEUE + 0x10_0000) | CBASER_VALID);
    assert_eq!(m.read64(GITS_CBASER), cbaser, "read-only while enabled");
    let baser0 = m.read64(GITS_BASER);
    m.write64(GITS_BASER, 0);
    m.write32(GITS_BASER + 4, 0);
    assert_eq!(
        m.read64(GITS_BASER),
        baser0,
        "BASERs read-only while enabled"
    );
}

#[test]
fn cwriter_beyond_the_queue_and_disabled_its_do_nothing() {
    let mut m = Machine::new(1);
    m.write64(GITS_CWRITER, 64 << 10); // queue is 64 KiB: offset out of range
    assert_eq!(m.read64(GITS_CWRITER), 0);
    m.mem
        .write_slice(&Command::Unknown(0x42).encode(), GuestAddress(CMD_QUEUE))
        .unwrap();
    m.write64(GITS_CWRITER, 32);
    assert_eq!(m.read64(GITS_CREADR), 0, "nothing runs while disabled");
    assert_eq!(m.read32(GITS_CTLR) & CTLR_QUIESCENT, 0);
    m.write32(GITS_CTLR, CTLR_ENABLED);
    assert_eq!(m.read64(GITS_CREADR), 32, "enabling runs what is queued");
    assert_ne!(m.read32(GITS_CTLR) & CTLR_QUIESCENT, 0);
}

#[test]
fn enabling_without_valid_tables_is_ignored() {
    let mut m = Machine::new(1);
    m.write64(GITS_BASER + 8, COLL_TABLE); // Valid cleared
    m.write32(GITS_CTLR, CTLR_ENABLED);
    assert!(!m.its.enabled());
    assert_eq!(
        m.read64(GITS_BASER + 8) & BASER_INDIRECT,
        0,
        "collection table is flat only"
    );
    m.write64(GITS_BASER + 8, COLL_TABLE | BASER_VALID | BASER_INDIRECT);
    assert_eq!(m.read64(GITS_BASER + 8) & BASER_INDIRECT, 0);
    m.write32(GITS_CTLR, CTLR_ENABLED);
    assert!(m.its.enabled());
}

#[test]
fn registers_take_32_and_64_bit_accesses() {
    let mut m = Machine::new(1);
    m.write32(GITS_CBASER, (CMD_QUEUE as u32) | 1);
    m.write32(GITS_CBASER + 4, (CBASER_VALID >> 32) as u32);
    assert_eq!(m.read64(GITS_CBASER), CMD_QUEUE | CBASER_VALID | 1);
    assert_eq!(m.read32(GITS_CBASER + 4), (CBASER_VALID >> 32) as u32);
    assert_eq!(
        u64::from(m.read32(GITS_TYPER)) | (u64::from(m.read32(GITS_TYPER + 4)) << 32),
        TYPER
    );
    let mut odd = [0u8; 2];
    m.its.mmio_read(GITS_TYPER, &mut odd);
    assert_eq!(odd, [0, 0], "16-bit accesses read as zero");
    assert_eq!(m.read32(GITS_PIDR2) >> 4, 3, "GICv3 architecture revision");
    assert_eq!(m.read32(0x3000), 0, "reserved reads as zero");
}

#[test]
fn mapd_sizes_bound_event_ids() {
    let mut m = ready();
    m.set_config(8200, LPI_PROP_DEFAULT);
    m.cmd(Command::Mapd {
        device: 3,
        size: 0,
        itt: Machine::itt(3),
        valid: true,
    }); // 1 bit: events 0 and 1
    m.cmd(Command::Mapti {
        device: 3,
        event: 1,
        lpi: 8200,
        icid: 2,
    });
    m.cmd(Command::Mapti {
        device: 3,
        event: 2,
        lpi: 8201,
        icid: 2,
    });
    assert_eq!(
        last_reason(&m),
        Some(DropReason::EventOutOfRange {
            device: 3,
            event: 2
        })
    );
    m.cmd(Command::Mapd {
        device: 3,
        size: 15,
        itt: Machine::itt(3),
        valid: true,
    }); // 16 bits, remap frees events
    assert!(m.its.devices()[&3].events.is_empty());
    m.cmd(Command::Mapti {
        device: 3,
        event: 65535,
        lpi: 8200,
        icid: 2,
    });
    m.cmd(Command::Int {
        device: 3,
        event: 65535,
    });
    assert_eq!(m.delivered(), vec![(2, 8200)]);
}

#[test]
fn device_ids_beyond_the_device_table() {
    let mut m = ready();
    // One 64 KiB page of 8-byte entries: DeviceIDs 0..8191.
    m.cmd(Command::Mapd {
        device: 8191,
        size: 0,
        itt: Machine::itt(1),
        valid: true,
    });
    assert!(m.its.devices().contains_key(&8191));
    m.cmd(Command::Mapd {
        device: 8192,
        size: 0,
        itt: Machine::itt(1),
        valid: true,
    });
    assert_eq!(last_reason(&m), Some(DropReason::DeviceOutOfRange(8192)));
}

#[test]
fn indirect_device_table_needs_a_valid_level_2_page() {
    let mut m = Machine::new(1);
    // Level 1 at DEVICE_TABLE: entry 1 (DeviceIDs 8192..16383) -> a level-2 page.
    let l2 = 0x80_0000u64;
    m.mem
        .write_obj(l2 | (1 << 63), GuestAddress(DEVICE_TABLE + 8))
        .unwrap();
    m.write64(GITS_BASER, DEVICE_TABLE | BASER_VALID | BASER_INDIRECT);
    m.enable_defaults();
    m.cmd(Command::Mapd {
        device: 9000,
        size: 1,
        itt: Machine::itt(2),
        valid: true,
    });
    assert!(m.its.devices().contains_key(&9000), "level-2 page present");
    m.cmd(Command::Mapd {
        device: 5,
        size: 1,
        itt: Machine::itt(2),
        valid: true,
    });
    assert_eq!(
        last_reason(&m),
        Some(DropReason::DeviceOutOfRange(5)),
        "level-1 entry 0 invalid"
    );
    // Save and restore through the indirect table.
    m.mem
        .write_obj(0u64, GuestAddress(l2 + (9000 - 8192) * 8))
        .unwrap();
    tables::save_tables(&m.its, &m.mem).unwrap();
    let dte = entry(&m.mem, l2 + (9000 - 8192) * 8);
    assert_eq!(dte >> 63, 1, "DTE written in the level-2 page");
    let mut its = Its::new();
    let mut lpis = Lpis::new(1);
    lpis.write_propbaser(PROP_TABLE | 13);
    its.restore_regs(&m.its.regs()).unwrap();
    tables::restore_tables(&mut its, &mut lpis, &m.mem).unwrap();
    assert!(its.devices().contains_key(&9000));
}

#[test]
fn saved_tables_are_byte_exact_abi_rev0() {
    let mut m = ready();
    // A collection that exists only through MAPTI (not mapped) and a sparse device.
    m.set_config(8197, LPI_PROP_DEFAULT);
    m.cmd(Command::Mapti {
        device: 7,
        event: 3,
        lpi: 8197,
        icid: 9,
    });
    tables::save_tables(&m.its, &m.mem).unwrap();
    // DTE of device 2: V, next = 5 (to device 7), ITT address >> 8, size 7.
    let itt2 = Machine::itt(2);
    assert_eq!(
        entry(&m.mem, DEVICE_TABLE + 2 * 8),
        (1 << 63) | (5 << 49) | ((itt2 >> 8) << 5) | 7
    );
    // DTE of device 7: last (next = 0).
    assert_eq!(entry(&m.mem, DEVICE_TABLE + 7 * 8) >> 49 & 0x3fff, 0);
    // ITEs of device 7: event 3 -> 8197 in collection 9, next = 252 (to event 255).
    let itt7 = Machine::itt(7);
    assert_eq!(entry(&m.mem, itt7 + 3 * 8), (252 << 48) | (8197 << 16) | 9);
    assert_eq!(
        entry(&m.mem, itt7 + 255 * 8),
        (8196 << 16) | 2,
        "last ITE: next = 0"
    );
    // Collection table: packed, sorted by ICID here, unmapped = 0xffffffff, then a terminator.
    let ctes: Vec<u64> = (0..4).map(|i| entry(&m.mem, COLL_TABLE + i * 8)).collect();
    assert_eq!(
        ctes,
        vec![
            (1 << 63) | (2 << 16) | 2,
            (1 << 63) | (3 << 16) | 3,
            (1 << 63) | (0xffff_ffff << 16) | 9,
            0
        ]
    );
}

fn fresh_restore(m: &Machine) -> Result<Its, TableError> {
    let mut its = Its::new();
    let mut lpis = Lpis::new(m.nr_pes);
    lpis.write_propbaser(PROP_TABLE | 13);
    its.restore_regs(&m.its.regs()).unwrap();
    tables::restore_tables(&mut its, &mut lpis, &m.mem).map(|()| its)
}

#[test]
fn inconsistent_tables_are_refused_all_or_nothing() {
    let m = ready();
    tables::save_tables(&m.its, &m.mem).unwrap();
    assert!(fresh_restore(&m).is_ok());
    let itt2 = Machine::itt(2);
    let good = entry(&m.mem, itt2 + 20 * 8);
    // An ITE naming a collection that is not in the collection table.
    m.mem
        .write_obj((good & !0xffff) | 55, GuestAddress(itt2 + 20 * 8))
        .unwrap();
    let e = fresh_restore(&m).unwrap_err();
    assert!(
        e.to_string()
            .contains("collection 55 is not in the collection table"),
        "{e}"
    );
    // An LPI out of range.
    m.mem
        .write_obj(
            (good & !(0xffff_ffff << 16)) | (7 << 16),
            GuestAddress(itt2 + 20 * 8),
        )
        .unwrap();
    assert!(fresh_restore(&m)
        .unwrap_err()
        .to_string()
        .contains("LPI 7 outside"));
    m.mem.write_obj(good, GuestAddress(itt2 + 20 * 8)).unwrap();
    // A collection on a PE that does not exist.
    let cte = entry(&m.mem, COLL_TABLE);
    m.mem
        .write_obj(
            (cte & !(0xf_ffff_ffff << 16)) | (9 << 16),
            GuestAddress(COLL_TABLE),
        )
        .unwrap();
    assert!(fresh_restore(&m)
        .unwrap_err()
        .to_string()
        .contains("targets PE 9"));
    m.mem.write_obj(cte, GuestAddress(COLL_TABLE)).unwrap();
    // A duplicate collection.
    let second = entry(&m.mem, COLL_TABLE + 8);
    m.mem.write_obj(cte, GuestAddress(COLL_TABLE + 8)).unwrap();
    assert!(fresh_restore(&m)
        .unwrap_err()
        .to_string()
        .contains("appears twice"));
    m.mem
        .write_obj(second, GuestAddress(COLL_TABLE + 8))
        .unwrap();
    // An ITT outside guest memory.
    let dte = entry(&m.mem, DEVICE_TABLE + 2 * 8);
    m.mem
        .write_obj(
            (dte & !(((1 << 44) - 1) << 5)) | ((0x40_0000_0000 >> 8) << 5),
            GuestAddress(DEVICE_TABLE + 2 * 8),
        )
        .unwrap();
    assert!(fresh_restore(&m)
        .unwrap_err()
        .to_string()
        .contains("outside guest memory"));
    m.mem
        .write_obj(dte, GuestAddress(DEVICE_TABLE + 2 * 8))
        .unwrap();
    assert!(fresh_restore(&m).is_ok(), "repaired tables restore again");
}

#[test]
fn register_restore_rules() {
    let m = ready();
    let mut regs = m.its.regs();
    let mut its = Its::new();
    regs.iidr |= 1 << 12;
    assert!(its
        .restore_regs(&regs)
        .unwrap_err()
        .to_string()
        .contains("revision 1"));
    regs.iidr = IIDR;
    regs.creadr = 64 << 10;
    assert!(its.restore_regs(&regs).is_err(), "CREADR beyond the queue");
    regs.creadr = 0;
    its.restore_regs(&regs).unwrap();
    let mut enabled = ready().its;
    assert_eq!(
        enabled.restore_regs(&ItsRegs {
            iidr: IIDR,
            ..Default::default()
        }),
        Err(its::RegsError::Enabled)
    );
}

#[test]
fn reset_is_kvms_ctrl_reset() {
    let mut m = ready();
    m.its.reset();
    let r = m.its.regs();
    assert!(!m.its.enabled());
    assert_eq!((r.cbaser, r.creadr, r.cwriter), (0, 0, 0));
    assert!(r.baser.iter().all(|b| b & BASER_VALID == 0));
    assert_eq!(r.iidr, IIDR, "ABI revision kept");
    assert!(m.its.devices().is_empty() && m.its.collections().is_empty());
}

#[test]
fn translater_msis_and_movi_movall_clear_discard() {
    let mut m = ready();
    assert!(m.its.translate(2, 20, &mut m.lpis));
    assert_eq!(m.delivered(), vec![(3, 8195)]);
    // MOVI: event 20 of dev 2 moves to collection 2 (PE 2).
    m.cmd(Command::Movi {
        device: 2,
        event: 20,
        icid: 2,
    });
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(m.delivered(), vec![(2, 8195)]);
    // MOVALL PE 2 -> PE 1: both LPIs now land on PE 1.
    m.cmd(Command::Movall { from: 2, to: 1 });
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    m.cmd(Command::Int {
        device: 7,
        event: 255,
    });
    assert_eq!(m.delivered(), vec![(1, 8195), (1, 8196)]);
    // CLEAR drops a pending (disabled) LPI; DISCARD removes the mapping.
    m.set_config(8196, 0);
    m.cmd(Command::Inv {
        device: 7,
        event: 255,
    });
    m.cmd(Command::Int {
        device: 7,
        event: 255,
    });
    m.cmd(Command::Clear {
        device: 7,
        event: 255,
    });
    m.set_config(8196, LPI_PROP_DEFAULT);
    m.cmd(Command::Inv {
        device: 7,
        event: 255,
    });
    assert!(
        m.delivered().is_empty(),
        "cleared before it could be delivered"
    );
    m.cmd(Command::Discard {
        device: 7,
        event: 255,
    });
    assert!(
        m.lpis.lpi(8196).is_none(),
        "the LPI's state goes with its last mapping"
    );
    m.cmd(Command::Int {
        device: 7,
        event: 255,
    });
    assert_eq!(
        last_reason(&m),
        Some(DropReason::UnmappedEvent {
            device: 7,
            event: 255
        })
    );
    assert!(!m.its.translate(7, 255, &mut m.lpis));
}

#[test]
fn mapc_unmap_keeps_events_but_stops_delivery() {
    let mut m = ready();
    m.cmd(Command::Mapc {
        icid: 3,
        pe: 0,
        valid: false,
    });
    assert_eq!(
        m.its.collections().get(&3),
        Some(&None),
        "still named by an event: kept, unmapped"
    );
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(last_reason(&m), Some(DropReason::UnmappedCollection(3)));
    m.cmd(Command::Mapc {
        icid: 3,
        pe: 1,
        valid: true,
    });
    m.cmd(Command::Int {
        device: 2,
        event: 20,
    });
    assert_eq!(m.delivered(), vec![(1, 8195)]);
    m.cmd(Command::Mapc {
        icid: 40,
        pe: 1,
        valid: true,
    });
    m.cmd(Command::Mapc {
        icid: 40,
        pe: 1,
        valid: false,
    });
    assert!(
        !m.its.collections().contains_key(&40),
        "an unreferenced collection disappears"
    );
}

#[test]
fn an_unreadable_command_is_skipped() {
    let mut m = Machine::new(1);
    // A 128 KiB queue in the last 64 KiB of guest memory: its second half is outside.
    let q = MEM_SIZE as u64 - 0x1_0000;
    m.write64(GITS_CBASER, q | CBASER_VALID | 31);
    m.enable_defaults();
    m.write64(GITS_CWRITER, 0x1_0000 + 64);
    assert_eq!(
        m.read64(GITS_CREADR),
        0x1_0000 + 64,
        "CREADR advanced past the unreadable commands"
    );
    assert!(m
        .its
        .dropped()
        .any(|d| matches!(d.reason, DropReason::Unreadable(_))));
}

#[test]
fn the_drop_log_is_bounded() {
    let mut m = ready();
    for _ in 0..its::DROP_LOG_LEN + 10 {
        m.cmd(Command::Unknown(0x42));
    }
    assert_eq!(m.its.dropped().count(), its::DROP_LOG_LEN);
}
