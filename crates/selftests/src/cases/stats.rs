//! `stats`: KVM_GET_STATS_FD (kvm_binary_stats_test): the header, the id
//! string, every descriptor and the data block are well formed, for a VM
//! and for a vCPU; and the vCPU's `exits` counter moves when the guest exits.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW10, KVM_STATS_BASE_POW2, KVM_STATS_TYPE_LINEAR_HIST,
    KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_MAX, KVM_STATS_UNIT_BOOLEAN, KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_MAX, KVM_STATS_UNIT_SECONDS,
};

use super::{Case, Diag};
use crate::check::{CaseResult, Failure};
use crate::harness::raw::stats_fd;
use crate::harness::ucall::run_to_sync;
use crate::harness::{TestVm, CODE_GPA};
use crate::{check, check_eq, require};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case {
        name: "stats.vm_fd",
        about: "the VM's binary stats: header, id, descriptors and data are well formed",
        run: vm_fd,
    },
    Case {
        name: "stats.vcpu_fd",
        about: "the vCPU's binary stats are well formed and `exits` counts guest exits",
        run: vcpu_fd,
    },
];

const HEADER_SIZE: usize = 24;
const DESC_FIXED: usize = 16;

/// One statistic.
struct Stat {
    name: String,
    values: Vec<u64>,
}

fn read_at(f: &File, len: usize, off: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off)
        .map_err(|e| Failure::Fail(format!("reading {what} ({len} bytes at {off}): {e}")))?;
    Ok(buf)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Reads and checks a whole stats fd, as kvm_binary_stats_test does.
fn parse(f: &File, kind: &str) -> Result<Vec<Stat>, Failure> {
    let h = read_at(f, HEADER_SIZE, 0, "the header")?;
    let [flags, name_size, num_desc, id_offset, desc_offset, data_offset] =
        [0, 4, 8, 12, 16, 20].map(|o| u32_at(&h, o));
    check_eq!(flags, 0u32, "{kind} stats header flags");
    check!(
        name_size > 0 && num_desc > 0,
        "{kind} stats: name_size {name_size}, num_desc {num_desc}"
    );
    check!(
        desc_offset as usize >= HEADER_SIZE && data_offset as usize >= HEADER_SIZE,
        "{kind} stats: offsets inside the header (desc {desc_offset}, data {data_offset})"
    );
    let desc_size = DESC_FIXED + name_size as usize;
    let desc_end = desc_offset as u64 + (desc_size * num_desc as usize) as u64;
    check!(
        desc_offset > data_offset || desc_end <= u64::from(data_offset),
        "{kind} stats: descriptors [{desc_offset}, {desc_end}) overlap the data at {data_offset}"
    );
    let id = read_at(f, name_size as usize, u64::from(id_offset), "the id string")?;
    let id_len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    check!(
        id_len < id.len(),
        "{kind} stats id is not NUL-terminated within name_size"
    );
    let id = String::from_utf8_lossy(&id[..id_len]).into_owned();
    check!(
        id.starts_with("kvm-"),
        "{kind} stats id {id:?} does not start with \"kvm-\""
    );
    let descs = read_at(
        f,
        desc_size * num_desc as usize,
        u64::from(desc_offset),
        "the descriptors",
    )?;
    let mut stats = Vec::new();
    let mut names = BTreeSet::new();
    let mut size_data = 0u64;
    for i in 0..num_desc as usize {
        let d = &descs[i * desc_size..(i + 1) * desc_size];
        let flags = u32_at(d, 0);
        let exponent = i16::from_le_bytes([d[4], d[5]]);
        let size = u16::from_le_bytes([d[6], d[7]]);
        let offset = u32_at(d, 8);
        let bucket = u32_at(d, 12);
        let raw_name = &d[DESC_FIXED..];
        let len = raw_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw_name.len());
        check!(
            len < raw_name.len(),
            "{kind} stat {i}: name not NUL-terminated within name_size"
        );
        let name = String::from_utf8_lossy(&raw_name[..len]).into_owned();
        check!(!name.is_empty(), "{kind} stat {i}: empty name");
        check!(
            names.insert(name.clone()),
            "{kind} stat {name}: duplicate name"
        );
        let (ty, unit, base) = (
            flags & KVM_STATS_TYPE_MASK,
            flags & KVM_STATS_UNIT_MASK,
            flags & KVM_STATS_BASE_MASK,
        );
        check!(
            ty <= KVM_STATS_TYPE_MAX,
            "{kind} stat {name}: type {ty} beyond KVM_STATS_TYPE_MAX"
        );
        check!(
            unit <= KVM_STATS_UNIT_MAX,
            "{kind} stat {name}: unit {unit:#x} beyond KVM_STATS_UNIT_MAX"
        );
        check!(
            base == KVM_STATS_BASE_POW10 || base == KVM_STATS_BASE_POW2,
            "{kind} stat {name}: base {base:#x}"
        );
        match unit {
            KVM_STATS_UNIT_SECONDS => check!(
                exponent <= 0,
                "{kind} stat {name}: seconds with exponent {exponent}"
            ),
            KVM_STATS_UNIT_BOOLEAN => check!(
                exponent == 0,
                "{kind} stat {name}: boolean with exponent {exponent}"
            ),
            _ => check!(
                exponent >= 0,
                "{kind} stat {name}: exponent {exponent} for a count"
            ),
        }
        check!(size > 0, "{kind} stat {name}: size 0");
        if ty == KVM_STATS_TYPE_LINEAR_HIST {
            check!(
                bucket > 0,
                "{kind} stat {name}: linear histogram with bucket size 0"
            );
        } else {
            check_eq!(bucket, 0u32, "{kind} stat {name}: bucket_size");
        }
        let values = read_at(
            f,
            8 * size as usize,
            u64::from(data_offset) + u64::from(offset),
            &format!("stat {name}"),
        )?
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect::<Vec<u64>>();
        if unit == KVM_STATS_UNIT_BOOLEAN {
            check!(
                values.iter().all(|&v| v <= 1),
                "{kind} stat {name}: boolean values {values:?}"
            );
        }
        size_data += 8 * u64::from(size);
        stats.push(Stat { name, values });
    }
    check!(
        data_offset >= desc_offset || u64::from(data_offset) + size_data <= u64::from(desc_offset),
        "{kind} stats: data block overlaps the descriptors"
    );
    let bulk = read_at(
        f,
        size_data as usize,
        u64::from(data_offset),
        "the data block in one read",
    )?;
    check_eq!(
        bulk.len() as u64,
        size_data,
        "{kind} stats: bytes of the bulk data read"
    );
    Ok(stats)
}

fn vm_fd(diag: &mut Diag) -> CaseResult {
    let vm = TestVm::new(&[])?;
    require!(
        vm.kvm
            .check_extension_raw(u64::from(kvm_bindings::KVM_CAP_BINARY_STATS_FD) as _)
            > 0,
        "KVM_CAP_BINARY_STATS_FD is not supported"
    );
    let stats = parse(&stats_fd(&vm.vm)?, "VM")?;
    diag.note(format!("VM stats: {} descriptors", stats.len()));
    Ok(())
}

guest_asm::guest_code!(
    three_exits,
    ".code64",
    "mov edi, 1",
    "mov dx, 0x1000",
    "in al, dx",
    "in al, dx",
    "in al, dx",
    "2: jmp 2b",
);

fn exits(stats: &[Stat]) -> Option<u64> {
    stats
        .iter()
        .find(|s| s.name == "exits")
        .map(|s| s.values[0])
}

fn vcpu_fd(diag: &mut Diag) -> CaseResult {
    let vm = TestVm::new(three_exits::code())?;
    require!(
        vm.kvm
            .check_extension_raw(u64::from(kvm_bindings::KVM_CAP_BINARY_STATS_FD) as _)
            > 0,
        "KVM_CAP_BINARY_STATS_FD is not supported"
    );
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    let fd = stats_fd(&vcpu)?;
    let before = parse(&fd, "vCPU")?;
    let Some(b) = exits(&before) else {
        return Err(Failure::Fail("the vCPU has no `exits` statistic".into()));
    };
    for _ in 0..3 {
        run_to_sync(&mut vcpu, &vm.mem)?;
    }
    let after = parse(&fd, "vCPU")?;
    let a = exits(&after).unwrap_or(0);
    check!(
        a >= b + 3,
        "vCPU `exits` went from {b} to {a} across 3 userspace exits"
    );
    diag.note(format!(
        "vCPU stats: {} descriptors; exits {b} -> {a}",
        after.len()
    ));
    Ok(())
}
