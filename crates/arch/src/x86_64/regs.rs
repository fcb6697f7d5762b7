//! Initial vCPU state for the two ways we enter a Linux kernel.
//!
//! * **PVH** (ELF `vmlinux` with `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected
//!   mode, paging off, flat segments, `RBX` = physical address of `hvm_start_info`.
//! * **Linux 64-bit boot protocol** (`bzImage`): long mode with identity-mapped
//!   page tables covering 0-4 GiB, `RSI` = zero page, `RIP` = load address + 0x200.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{kvm_segment_from_gdt, CODE32, CODE64, DATA, TSS};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit flat protected mode, `RBX` = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode, `RSI` = zero page.
    Linux64,
}

/// CR0.PE
pub const X86_CR0_PE: u64 = 0x1;
/// CR0.ET
pub const X86_CR0_ET: u64 = 0x10;
/// CR0.PG
pub const X86_CR0_PG: u64 = 0x8000_0000;
/// CR4.PAE
pub const X86_CR4_PAE: u64 = 0x20;
/// EFER.LME
pub const EFER_LME: u64 = 0x100;
/// EFER.LMA
pub const EFER_LMA: u64 = 0x400;

/// Error writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot write boot {what} at {addr:#x}: guest memory too small")]
pub struct WriteError {
    what: &'static str,
    addr: u64,
}

fn gdt_for(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Pvh => CODE32,
        EntryMode::Linux64 => CODE64,
    };
    [0, code, DATA, TSS]
}

/// Writes the GDT, an empty IDT and (for long mode) the identity page tables.
pub fn write_boot_tables<M: GuestMemory>(mem: &M, mode: EntryMode) -> Result<(), WriteError> {
    let put = |what, addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|_| WriteError { what, addr })
    };
    for (i, e) in gdt_for(mode).iter().enumerate() {
        put("GDT", BOOT_GDT_START + 8 * i as u64, *e)?;
    }
    put("IDT", BOOT_IDT_START, 0)?;
    if mode == EntryMode::Linux64 {
        put("PML4", PML4_START, PDPTE_START | 0x3)?;
        for i in 0..4u64 {
            put("PDPT", PDPTE_START + 8 * i, (PDE_START + 0x1000 * i) | 0x3)?;
        }
        // 2048 entries of 2 MiB (present, writable, page size): 0-4 GiB.
        for i in 0..2048u64 {
            put("PD", PDE_START + 8 * i, (i << 21) | 0x83)?;
        }
    }
    Ok(())
}

/// Adjusts the special registers read from a fresh vCPU for `mode`.
pub fn setup_sregs(sregs: &mut kvm_sregs, mode: EntryMode) {
    let gdt = gdt_for(mode);
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
}

/// General-purpose registers at entry.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Linux64 => regs.rsi = ZERO_PAGE_START,
    }
    regs
}

/// FPU state at reset (x87 control word 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn long_mode_page_tables_identity_map_4g() {
        let m = mem();
        write_boot_tables(&m, EntryMode::Linux64).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        for i in 0..4 {
            let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START + 8 * i)).unwrap();
            assert_eq!(pdpte, (PDE_START + 0x1000 * i) | 3);
        }
        let last: u64 = m.read_obj(GuestAddress(PDE_START + 8 * 2047)).unwrap();
        assert_eq!(last, (2047 << 21) | 0x83);
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, CODE64);
    }

    #[test]
    fn pvh_uses_32bit_code_and_no_paging() {
        let m = mem();
        write_boot_tables(&m, EntryMode::Pvh).unwrap();
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, CODE32);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0, "PVH must not get page tables");

        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, EntryMode::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!((s.cs.db, s.cs.l, s.cs.selector), (1, 0, 8));
        assert_eq!(s.efer, 0);
        let r = boot_regs(EntryMode::Pvh, 0x100_04a0);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_04a0, PVH_INFO_START, 2));
    }

    #[test]
    fn linux64_enters_long_mode() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, EntryMode::Linux64);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.db), (1, 0));
        assert_eq!(s.gdt.limit, 31);
        let r = boot_regs(EntryMode::Linux64, 0x100200);
        assert_eq!(
            (r.rip, r.rsi, r.rsp),
            (0x100200, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_boot_tables(&m, EntryMode::Linux64).is_err());
    }
}
