//! `memslots`: the kernel's set_memory_region_test and dirty_log_test ideas,
//! made deterministic with the walker guest (reads and writes a list of
//! addresses and reports each): no slots, all slots, overlaps, bad regions,
//! moving and deleting a slot in use, read-only slots, dirty logging by
//! bitmap and by ring.

use std::collections::BTreeSet;

use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_DIRTY_LOG_RING, KVM_DIRTY_LOG_PAGE_OFFSET,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
};
use kvm_ioctls::{Cap, VcpuExit};

use super::{Case, Diag};
use crate::check::{expect_errno, CaseResult, Failure, IoctlContext};
use crate::harness::raw::{reset_dirty_rings, set_nr_mmu_pages, VcpuMapping};
use crate::harness::vm::open_kvm;
use crate::harness::walker::{self, step, Access, Event, MMIO_FILL};
use crate::harness::{HostMem, TestVm, CODE_GPA};
use crate::{check, check_eq, require};

/// The cases of this group.
pub const CASES: &[Case] = &[
    Case { name: "memslots.zero_slots", about: "KVM_RUN with no memory slots ends in KVM_EXIT_INTERNAL_ERROR", run: zero_slots },
    Case { name: "memslots.max_slots", about: "KVM_CAP_NR_MEMSLOTS slots can be added, one more is EINVAL", run: max_slots },
    Case { name: "memslots.overlap_rejected", about: "creating or moving a slot onto another is EEXIST; adjacent is fine", run: overlap_rejected },
    Case { name: "memslots.invalid_regions", about: "unknown flags, unaligned address or size are EINVAL", run: invalid_regions },
    Case { name: "memslots.move_in_use", about: "after moving a slot the old address is MMIO, the new one has the data", run: move_in_use },
    Case { name: "memslots.delete_in_use", about: "after deleting a slot its range is MMIO; re-adding restores the data", run: delete_in_use },
    Case { name: "memslots.readonly", about: "a KVM_MEM_READONLY slot reads normally; writes exit as MMIO and change nothing", run: readonly },
    Case { name: "memslots.dirty_log_bitmap", about: "KVM_GET_DIRTY_LOG reports exactly the pages the guest wrote, then clears", run: dirty_log_bitmap },
    Case { name: "memslots.dirty_log_ring", about: "the dirty ring reports exactly the pages the guest wrote; KVM_RESET_DIRTY_RINGS recycles them", run: dirty_log_ring },
];

const SLOT_GPA: u64 = 0x4000_0000;
const MOVED_GPA: u64 = 0x5000_0000;
const SLOT_SIZE: usize = 2 << 20;
const PAGE: u64 = 4096;
const VALUE: u64 = 0x1122_3344_5566_7788;

fn walker_vm() -> Result<TestVm, Failure> {
    TestVm::new(walker::code())
}

fn expect_events(got: Vec<Event>, want: &[Event], what: &str) -> CaseResult {
    check!(got == want, "{what}: got {got:x?}, expected {want:x?}");
    Ok(())
}

fn zero_slots(_: &mut Diag) -> CaseResult {
    let (_kvm, vm) = TestVm::barebones()?;
    let mut vcpu = vm.create_vcpu(0).ctx("KVM_CREATE_VCPU")?;
    set_nr_mmu_pages(&vm, 64)?;
    match vcpu.run().ctx("KVM_RUN")? {
        VcpuExit::InternalError => Ok(()),
        other => Err(Failure::Fail(format!(
            "KVM_RUN without memory slots: got {}, expected KVM_EXIT_INTERNAL_ERROR",
            crate::harness::ucall::describe(&other)
        ))),
    }
}

fn max_slots(diag: &mut Diag) -> CaseResult {
    let kvm = open_kvm()?;
    let max = kvm.get_nr_memslots();
    require!(max > 0, "KVM_CAP_NR_MEMSLOTS is 0");
    // Declared before the VM, so dropped after it.
    let mem = HostMem::new(max * PAGE as usize)?;
    let vm = kvm.create_vm().ctx("KVM_CREATE_VM")?;
    let start = std::time::Instant::now();
    for slot in 0..max as u32 {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: u64::from(slot) * PAGE,
            memory_size: PAGE,
            userspace_addr: mem.host_addr() + u64::from(slot) * PAGE,
        };
        // SAFETY: every slot lies inside `mem`, which outlives `vm`.
        unsafe { vm.set_user_memory_region(region) }
            .ctx(&format!("adding slot {slot} of {max}"))?;
    }
    diag.note(format!(
        "{max} slots added in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    ));
    let region = kvm_userspace_memory_region {
        slot: max as u32,
        flags: 0,
        guest_phys_addr: max as u64 * PAGE,
        memory_size: PAGE,
        userspace_addr: mem.host_addr(),
    };
    // SAFETY: as above; the call is expected to fail.
    let r = unsafe { vm.set_user_memory_region(region) };
    expect_errno(
        r,
        libc::EINVAL,
        &format!("adding slot {max} (one beyond KVM_CAP_NR_MEMSLOTS)"),
    )
}

fn overlap_rejected(_: &mut Diag) -> CaseResult {
    let mut vm = walker_vm()?;
    vm.add_slot(SLOT_GPA, SLOT_SIZE, 0)?;
    let other = HostMem::new(SLOT_SIZE)?;
    let half = SLOT_SIZE as u64 / 2;
    for gpa in [SLOT_GPA + half, SLOT_GPA - half, SLOT_GPA] {
        let region = kvm_userspace_memory_region {
            slot: 2,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: SLOT_SIZE as u64,
            userspace_addr: other.host_addr(),
        };
        // SAFETY: expected to fail; `other` outlives the call either way.
        let r = unsafe { vm.vm.set_user_memory_region(region) };
        expect_errno(
            r,
            libc::EEXIST,
            &format!("a slot at {gpa:#x} over the slot at {SLOT_GPA:#x}"),
        )?;
    }
    // Adjacent is fine; moving it onto slot 1 is EEXIST.
    let (slot, _) = vm.add_slot(SLOT_GPA + SLOT_SIZE as u64, SLOT_SIZE, 0)?;
    let mem = vm.slot_mem(slot);
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: SLOT_GPA + half,
        memory_size: SLOT_SIZE as u64,
        userspace_addr: mem.host_addr(),
    };
    // SAFETY: expected to fail; the memory belongs to the VM.
    let r = unsafe { vm.vm.set_user_memory_region(region) };
    expect_errno(r, libc::EEXIST, "moving slot 2 over slot 1")
}

fn invalid_regions(_: &mut Diag) -> CaseResult {
    let kvm = open_kvm()?;
    let mem = HostMem::new(SLOT_SIZE)?;
    let vm = kvm.create_vm().ctx("KVM_CREATE_VM")?;
    let good = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: SLOT_GPA,
        memory_size: SLOT_SIZE as u64,
        userspace_addr: mem.host_addr(),
    };
    let cases = [
        (
            "flag bit 31",
            kvm_userspace_memory_region {
                flags: 1 << 31,
                ..good
            },
        ),
        (
            "flag bit 3",
            kvm_userspace_memory_region {
                flags: 1 << 3,
                ..good
            },
        ),
        (
            "an unaligned guest address",
            kvm_userspace_memory_region {
                guest_phys_addr: SLOT_GPA + 8,
                ..good
            },
        ),
        (
            "an unaligned size",
            kvm_userspace_memory_region {
                memory_size: SLOT_SIZE as u64 - 8,
                ..good
            },
        ),
        (
            "an unaligned host address",
            kvm_userspace_memory_region {
                userspace_addr: mem.host_addr() + 8,
                ..good
            },
        ),
    ];
    for (what, region) in cases {
        // SAFETY: expected to fail; `mem` outlives the VM's use of it.
        let r = unsafe { vm.set_user_memory_region(region) };
        expect_errno(
            r,
            libc::EINVAL,
            &format!("KVM_SET_USER_MEMORY_REGION with {what}"),
        )?;
    }
    // SAFETY: `mem` is declared before `vm`, so it outlives the slot.
    unsafe { vm.set_user_memory_region(good) }.ctx("the valid region")?;
    Ok(())
}

fn move_in_use(_: &mut Diag) -> CaseResult {
    let mut vm = walker_vm()?;
    let (slot, mem) = vm.add_slot(SLOT_GPA, SLOT_SIZE, 0)?;
    mem.write_u64(0x1000, VALUE);
    let (old, new) = (SLOT_GPA + 0x1000, MOVED_GPA + 0x1000);
    walker::set_list(
        &vm,
        &[Access::Read(old), Access::Read(old), Access::Read(new)],
    );
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::Sync(old, VALUE)],
        "read before the move",
    )?;
    vm.set_slot(slot, MOVED_GPA, vm.slot_mem(slot), 0)?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::MmioRead(old), Event::Sync(old, MMIO_FILL)],
        "read of the old address",
    )?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::Sync(new, VALUE)],
        "read of the new address",
    )?;
    expect_events(step(&mut vcpu, &vm)?, &[Event::Done], "end")
}

fn delete_in_use(_: &mut Diag) -> CaseResult {
    let mut vm = walker_vm()?;
    let (slot, mem) = vm.add_slot(SLOT_GPA, SLOT_SIZE, 0)?;
    mem.write_u64(0x1000, VALUE);
    let a = SLOT_GPA + 0x1000;
    walker::set_list(&vm, &[Access::Read(a), Access::Read(a), Access::Read(a)]);
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::Sync(a, VALUE)],
        "read before the delete",
    )?;
    vm.delete_slot(slot)?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::MmioRead(a), Event::Sync(a, MMIO_FILL)],
        "read after the delete",
    )?;
    vm.set_slot(slot, SLOT_GPA, vm.slot_mem(slot), 0)?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::Sync(a, VALUE)],
        "read after re-adding",
    )?;
    expect_events(step(&mut vcpu, &vm)?, &[Event::Done], "end")
}

fn readonly(_: &mut Diag) -> CaseResult {
    let mut vm = walker_vm()?;
    require!(
        vm.kvm.check_extension(Cap::ReadonlyMem),
        "KVM_CAP_READONLY_MEM is not supported"
    );
    let (slot, mem) = vm.add_slot(SLOT_GPA, SLOT_SIZE, KVM_MEM_READONLY)?;
    mem.write_u64(0x1000, VALUE);
    let a = SLOT_GPA + 0x1000;
    walker::set_list(&vm, &[Access::Read(a), Access::Write(a), Access::Read(a)]);
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::Sync(a, VALUE)],
        "read of the read-only slot",
    )?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::MmioWrite(a, a), Event::Sync(a, a)],
        "write to the read-only slot",
    )?;
    expect_events(
        step(&mut vcpu, &vm)?,
        &[Event::Sync(a, VALUE)],
        "read after the write",
    )?;
    check_eq!(
        vm.slot_mem(slot).read_u64(0x1000),
        VALUE,
        "host view of the read-only page"
    );
    Ok(())
}

const DIRTY_PAGES: [u64; 3] = [1, 3, 8];

fn dirty_writes() -> Vec<Access> {
    DIRTY_PAGES
        .iter()
        .map(|p| Access::Write(SLOT_GPA + p * PAGE + 8))
        .collect()
}

fn run_dirty_writes(vm: &TestVm) -> CaseResult {
    walker::set_list(vm, &dirty_writes());
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    run_walk(&mut vcpu, vm)
}

fn run_walk(vcpu: &mut kvm_ioctls::VcpuFd, vm: &TestVm) -> CaseResult {
    for a in dirty_writes() {
        let Access::Write(addr) = a else {
            unreachable!()
        };
        expect_events(
            step(vcpu, vm)?,
            &[Event::Sync(addr, addr)],
            "a logged write",
        )?;
    }
    expect_events(step(vcpu, vm)?, &[Event::Done], "end")
}

fn dirty_log_bitmap(_: &mut Diag) -> CaseResult {
    let mut vm = walker_vm()?;
    let (slot, _) = vm.add_slot(SLOT_GPA, 16 * PAGE as usize, KVM_MEM_LOG_DIRTY_PAGES)?;
    let size = 16 * PAGE as usize;
    let first = vm.vm.get_dirty_log(slot, size).ctx("KVM_GET_DIRTY_LOG")?;
    check_eq!(first[0], 0u64, "dirty bitmap before the guest ran");
    run_dirty_writes(&vm)?;
    let want = DIRTY_PAGES.iter().fold(0u64, |b, p| b | 1 << p);
    let log = vm.vm.get_dirty_log(slot, size).ctx("KVM_GET_DIRTY_LOG")?;
    check_eq!(
        log[0],
        want,
        "dirty bitmap after writes to pages 1, 3 and 8"
    );
    let again = vm.vm.get_dirty_log(slot, size).ctx("KVM_GET_DIRTY_LOG")?;
    check_eq!(again[0], 0u64, "dirty bitmap read a second time (cleared)");
    for p in DIRTY_PAGES {
        let off = (p * PAGE + 8) as usize;
        check_eq!(
            vm.slot_mem(slot).read_u64(off),
            SLOT_GPA + off as u64,
            "host view of page {p}"
        );
    }
    Ok(())
}

/// `struct kvm_dirty_gfn` flags.
const GFN_DIRTY: u32 = 1;
const GFN_RESET: u32 = 2;
const RING_ENTRIES: usize = 4096;

fn dirty_log_ring(_: &mut Diag) -> CaseResult {
    let mut vm = walker_vm()?;
    let max = vm.kvm.check_extension_int(Cap::DirtyLogRing);
    require!(max > 0, "KVM_CAP_DIRTY_LOG_RING is not supported");
    let bytes = (RING_ENTRIES * 16).min(max as usize);
    let cap = kvm_enable_cap {
        cap: KVM_CAP_DIRTY_LOG_RING,
        args: [bytes as u64, 0, 0, 0],
        ..Default::default()
    };
    vm.vm
        .enable_cap(&cap)
        .ctx(&format!("KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING, {bytes})"))?;
    let (slot, _) = vm.add_slot(SLOT_GPA, 16 * PAGE as usize, KVM_MEM_LOG_DIRTY_PAGES)?;
    walker::set_list(&vm, &dirty_writes());
    let mut vcpu = vm.long_mode_vcpu(0, CODE_GPA)?;
    let ring = VcpuMapping::new(&vcpu, u64::from(KVM_DIRTY_LOG_PAGE_OFFSET), bytes)?;
    run_walk(&mut vcpu, &vm)?;
    let mut pages = BTreeSet::new();
    let mut harvested = 0;
    for i in 0..bytes / 16 {
        let flags = ring.read_u32(i * 16);
        if flags & GFN_DIRTY == 0 {
            break;
        }
        let entry_slot = ring.read_u32(i * 16 + 4);
        let offset = ring.read_u64(i * 16 + 8);
        check_eq!(entry_slot & 0xffff, slot, "slot of dirty ring entry {i}");
        pages.insert(offset);
        ring.write_u32(i * 16, GFN_RESET);
        harvested += 1;
    }
    let want: BTreeSet<u64> = DIRTY_PAGES.into_iter().collect();
    check!(
        pages == want,
        "dirty ring pages {pages:?}, expected {want:?}"
    );
    let reset = reset_dirty_rings(&vm.vm)?;
    check_eq!(reset, harvested, "entries KVM_RESET_DIRTY_RINGS recycled");
    Ok(())
}
