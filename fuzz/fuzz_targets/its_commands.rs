//! Fuzzes the ITS with arbitrary command streams and register writes, then
//! checks that a save and restore into a fresh instance reproduces the
//! translation state exactly, unless the guest made its ITTs overlap each
//! other, the ITS tables or the command queue (then the save clobbers
//! itself or reads stale commands back, as on KVM, and
//! only a clean refusal is required).
#![no_main]

use its::regs::*;
use its::{tables, Its, Lpis};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE: u64 = 0x1_0000;
const DT: u64 = 0x2_0000;
const CT: u64 = 0x3_0000;
const PROP: u64 = 0x4_0000;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
    let mut its = Its::new();
    let mut lpis = Lpis::new(4);
    lpis.write_propbaser(PROP | 13);
    for pe in 0..4 {
        lpis.write_pendbaser(pe, 0x10_0000 + u64::from(pe) * 0x1_0000);
        lpis.write_enable_lpis(pe, true, &mem);
    }
    let w = |its: &mut Its, lpis: &mut Lpis, off: u64, v: u64| {
        its.mmio_write(off, &v.to_le_bytes(), lpis, &mem)
    };
    w(&mut its, &mut lpis, GITS_BASER, DT | BASER_VALID);
    w(&mut its, &mut lpis, GITS_BASER + 8, CT | BASER_VALID);
    w(&mut its, &mut lpis, GITS_CBASER, QUEUE | CBASER_VALID | 15);
    its.mmio_write(GITS_CTLR, &1u32.to_le_bytes(), &mut lpis, &mem);
    let mut cwriter = 0u64;
    for chunk in data.chunks(33) {
        if chunk.len() < 33 {
            break;
        }
        if chunk[0] & 0xf0 == 0xf0 {
            // A raw register write of 4 or 8 bytes somewhere in the frame (not CTLR).
            let off = u64::from(u16::from_le_bytes([chunk[1], chunk[2]])) & 0xfff8;
            let len = if chunk[0] & 1 == 0 { 4 } else { 8 };
            if off != GITS_CTLR {
                its.mmio_write(off, &chunk[3..3 + len], &mut lpis, &mem);
            }
            continue;
        }
        // A command: 32 bytes into the queue at CWRITER, then a kick.
        let _ = mem.write_slice(&chunk[1..33], GuestAddress(QUEUE + cwriter));
        cwriter = (cwriter + 32) % (64 << 10);
        its.mmio_write(GITS_CWRITER, &cwriter.to_le_bytes(), &mut lpis, &mem);
        let _ = its.translate(u32::from(chunk[0] & 7), u32::from(chunk[1]), &mut lpis);
        let mut b = [0u8; 8];
        its.mmio_read(GITS_CREADR, &mut b);
    }
    let saved = tables::save_tables(&its, &mem).is_ok();
    if saved && !overlapping(&its) {
        let mut copy = Its::new();
        let mut copy_lpis = Lpis::new(4);
        copy_lpis.write_propbaser(lpis.propbaser);
        let mut regs = its.regs();
        regs.ctlr = 0;
        if copy.restore_regs(&regs).is_ok() {
            tables::restore_tables(&mut copy, &mut copy_lpis, &mem).expect("saved tables restore");
            assert_eq!(copy.devices(), its.devices());
            assert_eq!(copy.collections(), its.collections());
        }
    }
});

/// Whether any two of the regions a save writes or a restore reads overlap:
/// the ITTs, the device and collection tables, the LPI tables, and the
/// command queue (stale commands in an ITT read back as entries).
fn overlapping(its: &Its) -> bool {
    let mut ranges: Vec<(u64, u64)> = vec![
        (QUEUE, QUEUE + 0x1_0000),
        (DT, DT + 0x1_0000),
        (CT, CT + 0x1_0000),
        (PROP, PROP + 0x1_0000),
    ];
    ranges.extend((0..4).map(|pe| (0x10_0000 + pe * 0x1_0000, 0x11_0000 + pe * 0x1_0000)));
    ranges.extend(
        its.devices()
            .values()
            .map(|d| (d.itt, d.itt + d.nr_events() * 8)),
    );
    ranges.sort_unstable();
    ranges.windows(2).any(|w| w[1].0 < w[0].1)
}
