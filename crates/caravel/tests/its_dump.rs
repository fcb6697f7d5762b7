//! `caravel-its dump` on a memory image holding tables saved by the ITS
//! model: the map it prints, the issues it finds, its exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};

use its::regs::*;
use its::{tables, Command, Its, Lpis};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RAM: u64 = 0x4000_0000;
const RAM_SIZE: usize = 4 << 20;
const QUEUE: u64 = RAM + 0x1_0000;
const DT: u64 = RAM + 0x2_0000;
const CT: u64 = RAM + 0x3_0000;
const PROP: u64 = RAM + 0x4_0000;
const ITT: u64 = RAM + 0x5_0000;

/// Two PEs; device 2 with events 20 -> LPI 8195 on collection 3 (PE 1) and
/// 21 -> LPI 8196 on collection 4 (not mapped); tables saved.
fn saved_machine() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM), RAM_SIZE)]).unwrap();
    let mut its = Its::new();
    let mut lpis = Lpis::new(2);
    lpis.write_propbaser(PROP | 15);
    let w = |its: &mut Its, lpis: &mut Lpis, off: u64, v: u64| {
        its.mmio_write(off, &v.to_le_bytes(), lpis, &mem)
    };
    w(&mut its, &mut lpis, GITS_BASER, DT | BASER_VALID);
    w(&mut its, &mut lpis, GITS_BASER + 8, CT | BASER_VALID);
    w(&mut its, &mut lpis, GITS_CBASER, QUEUE | CBASER_VALID);
    its.mmio_write(GITS_CTLR, &1u32.to_le_bytes(), &mut lpis, &mem);
    let cmds = [
        Command::Mapd {
            device: 2,
            size: 7,
            itt: ITT,
            valid: true,
        },
        Command::Mapc {
            icid: 3,
            pe: 1,
            valid: true,
        },
        Command::Mapti {
            device: 2,
            event: 20,
            lpi: 8195,
            icid: 3,
        },
        Command::Mapc {
            icid: 4,
            pe: 0,
            valid: true,
        },
        Command::Mapti {
            device: 2,
            event: 21,
            lpi: 8196,
            icid: 4,
        },
        Command::Mapc {
            icid: 4,
            pe: 0,
            valid: false,
        },
    ];
    for (i, c) in cmds.iter().enumerate() {
        let at = 32 * i as u64;
        mem.write_slice(&c.encode(), GuestAddress(QUEUE + at))
            .unwrap();
        w(&mut its, &mut lpis, GITS_CWRITER, at + 32);
    }
    assert_eq!(
        its.dropped().count(),
        0,
        "{:?}",
        its.dropped().collect::<Vec<_>>()
    );
    tables::save_tables(&its, &mem).unwrap();
    mem
}

fn image(mem: &GuestMemoryMmap, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("caravel-its-{}-{name}.img", std::process::id()));
    let mut bytes = vec![0u8; RAM_SIZE];
    mem.read_slice(&mut bytes, GuestAddress(RAM)).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_caravel-its"))
        .args(args)
        .output()
        .unwrap()
}

fn dump(img: &Path) -> Output {
    let memory = format!("{}@{RAM:#x}", img.display());
    let baser0 = format!("{:#x}", DT | BASER_VALID);
    let baser1 = format!("{:#x}", CT | BASER_VALID);
    run(&[
        "dump", "--memory", &memory, "--baser0", &baser0, "--baser1", &baser1, "--cpus", "2",
    ])
}

#[test]
fn dumps_the_saved_map() {
    let img = image(&saved_machine(), "good");
    let out = dump(&img);
    std::fs::remove_file(&img).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ICID 3 -> PE 1\n  ICID 4 -> not mapped"),
        "{text}"
    );
    assert!(
        text.contains("device 2: ITT 0x40050000, 8 EventID bits, 2 of 256 events mapped"),
        "{text}"
    );
    assert!(
        text.contains("event 20 -> LPI 8195 -> ICID 3 -> PE 1"),
        "{text}"
    );
    assert!(
        text.contains("event 21 -> LPI 8196 -> ICID 4 -> not mapped"),
        "{text}"
    );
    assert!(text.contains("issues (0):"), "{text}");
}

#[test]
fn reports_inconsistencies_with_exit_1() {
    let mem = saved_machine();
    // Event 20's ITE now names LPI 7, and the device table gains a device 3
    // whose ITT lies outside the image.
    let ite: u64 = mem.read_obj(GuestAddress(ITT + 20 * 8)).unwrap();
    let lpi7 = (ite & !(0xffff_ffff << 16)) | (7 << 16);
    mem.write_obj(lpi7, GuestAddress(ITT + 20 * 8)).unwrap();
    let dte2: u64 = mem.read_obj(GuestAddress(DT + 2 * 8)).unwrap();
    mem.write_obj(dte2 | (1 << 49), GuestAddress(DT + 2 * 8))
        .unwrap(); // next = 1
    let dte3 = (1u64 << 63) | ((0x8000_0000u64 >> 8) << 5);
    mem.write_obj(dte3, GuestAddress(DT + 3 * 8)).unwrap();
    let img = image(&mem, "bad");
    let out = dump(&img);
    std::fs::remove_file(&img).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("issues (2):"), "{text}");
    assert!(
        text.contains("device 2 event 20: LPI 7 outside 8192..65536"),
        "{text}"
    );
    assert!(
        text.contains("device 3: ITT entry 0 at 0x80000000 is outside guest memory"),
        "{text}"
    );
}

#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    let base = ["--baser0", "0", "--baser1", "0", "--cpus", "1"];
    let out = run(&[&["dump", "--memory", "/nonexistent.img"], &base[..]].concat());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--memory /nonexistent.img: No such file"),
        "{err}"
    );
    let out = run(&[
        "dump", "--memory", "x", "--baser0", "zz", "--baser1", "0", "--cpus", "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("`zz` is not a number"), "{err}");
}
