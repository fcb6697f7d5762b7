//! A fresh VM per case: slot 0 holds 4 MiB of RAM with a flat GDT and
//! identity page tables for 0-4 GiB (2 MiB pages), guest code at
//! [`CODE_GPA`]; vCPUs start in 64-bit mode at an entry point.

use arch::x86_64::regs::{boot_fpu, boot_regs, setup_sregs, write_boot_tables, EntryMode};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

use crate::check::{Failure, IoctlContext};

/// Size of slot 0.
pub const MEM_SIZE: usize = 4 << 20;
/// Where guest code is loaded.
pub const CODE_GPA: u64 = 0x10_0000;
/// Top of the stack of vCPU 0 (vCPU n: 16 KiB lower per id).
pub const STACK_TOP: u64 = 0x20_0000;
/// A scratch page the guest and the host share.
pub const DATA_GPA: u64 = 0x30_0000;
/// Where the selftests' VMs put the TSS (required by VMX, harmless elsewhere).
const TSS_GPA: usize = 0xfffb_d000;

/// Host memory backing an extra slot (anonymous, private).
pub struct HostMem {
    region: MmapRegion<()>,
}

impl HostMem {
    /// Maps `size` bytes.
    pub fn new(size: usize) -> Result<Self, Failure> {
        let region = MmapRegion::new(size)
            .map_err(|e| Failure::Fail(format!("cannot map {size} bytes: {e}")))?;
        Ok(Self { region })
    }

    /// Host address of the first byte.
    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.region.size()
    }

    /// Whether the mapping is empty (never, but clippy wants it).
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    /// Reads the u64 at `off`.
    pub fn read_u64(&self, off: usize) -> u64 {
        self.region
            .as_volatile_slice()
            .read_obj(off)
            .unwrap_or(u64::MAX)
    }

    /// Writes the u64 at `off`.
    pub fn write_u64(&self, off: usize, v: u64) {
        let _ = self.region.as_volatile_slice().write_obj(v, off);
    }

    /// Writes `bytes` at `off`.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        let _ = self.region.as_volatile_slice().write_slice(bytes, off);
    }
}

/// One VM with slot 0 and boot tables in place.
pub struct TestVm {
    /// /dev/kvm.
    pub kvm: Kvm,
    /// The VM (dropped before the memory below).
    pub vm: VmFd,
    /// Slot 0.
    pub mem: GuestMemoryMmap,
    extra: Vec<HostMem>,
    next_slot: u32,
}

/// Opens /dev/kvm, or skips the case when there is none.
pub fn open_kvm() -> Result<Kvm, Failure> {
    Kvm::new().map_err(|e| Failure::Skip(format!("/dev/kvm cannot be opened: {e}")))
}

impl TestVm {
    /// A VM without memory (for the memslot and capability cases).
    pub fn barebones() -> Result<(Kvm, VmFd), Failure> {
        let kvm = open_kvm()?;
        let vm = kvm.create_vm().ctx("KVM_CREATE_VM")?;
        Ok((kvm, vm))
    }

    /// A VM with slot 0 and the boot tables, `code` at [`CODE_GPA`].
    pub fn new(code: &[u8]) -> Result<Self, Failure> {
        let (kvm, vm) = Self::barebones()?;
        vm.set_tss_address(TSS_GPA).ctx("KVM_SET_TSS_ADDR")?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(|e| Failure::Fail(format!("cannot map guest memory: {e}")))?;
        write_boot_tables(&mem, EntryMode::Linux64).map_err(|e| Failure::Fail(e.to_string()))?;
        mem.write_slice(code, GuestAddress(CODE_GPA))
            .map_err(|e| Failure::Fail(format!("cannot load guest code: {e}")))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem
                .find_region(GuestAddress(0))
                .ok_or_else(|| Failure::Fail("slot 0 has no region".into()))?
                .as_ptr() as u64,
        };
        // SAFETY: the region is `mem`, owned by the returned TestVm, whose
        // `vm` field is declared (so dropped) before `mem`: the mapping
        // outlives the slot.
        unsafe { vm.set_user_memory_region(region) }.ctx("KVM_SET_USER_MEMORY_REGION slot 0")?;
        Ok(Self {
            kvm,
            vm,
            mem,
            extra: Vec::new(),
            next_slot: 1,
        })
    }

    /// Adds the in-kernel LAPIC/IOAPIC/PIC.
    pub fn with_irqchip(self) -> Result<Self, Failure> {
        self.vm.create_irq_chip().ctx("KVM_CREATE_IRQCHIP")?;
        Ok(self)
    }

    /// Adds a slot of `size` bytes at `gpa` with `flags` and returns its
    /// number and its host memory (kept alive by the VM).
    pub fn add_slot(
        &mut self,
        gpa: u64,
        size: usize,
        flags: u32,
    ) -> Result<(u32, &HostMem), Failure> {
        let mem = HostMem::new(size)?;
        let slot = self.next_slot;
        self.set_slot(slot, gpa, &mem, flags)?;
        self.next_slot += 1;
        self.extra.push(mem);
        Ok((slot, self.extra.last().expect("just pushed")))
    }

    /// KVM_SET_USER_MEMORY_REGION of `slot` to `mem` at `gpa` (create, move
    /// or flag change). `mem` must be one this VM keeps alive.
    pub fn set_slot(&self, slot: u32, gpa: u64, mem: &HostMem, flags: u32) -> Result<(), Failure> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: mem.len() as u64,
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: `mem` is kept in `self.extra` (or is about to be) and lives
        // until after the VM fd is closed.
        unsafe { self.vm.set_user_memory_region(region) }.ctx(&format!(
            "KVM_SET_USER_MEMORY_REGION slot {slot} at {gpa:#x}"
        ))
    }

    /// Deletes `slot` (size 0).
    pub fn delete_slot(&self, slot: u32) -> Result<(), Failure> {
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: deleting a slot maps nothing.
        unsafe { self.vm.set_user_memory_region(region) }
            .ctx(&format!("KVM_SET_USER_MEMORY_REGION delete slot {slot}"))
    }

    /// Host memory of extra slot number `slot`.
    pub fn slot_mem(&self, slot: u32) -> &HostMem {
        &self.extra[(slot - 1) as usize]
    }

    /// A vCPU with KVM's supported CPUID, in 64-bit mode at `entry`.
    pub fn long_mode_vcpu(&self, id: u64, entry: u64) -> Result<VcpuFd, Failure> {
        let vcpu = self.vm.create_vcpu(id).ctx("KVM_CREATE_VCPU")?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .ctx("KVM_GET_SUPPORTED_CPUID")?;
        vcpu.set_cpuid2(&cpuid).ctx("KVM_SET_CPUID2")?;
        let mut sregs = vcpu.get_sregs().ctx("KVM_GET_SREGS")?;
        setup_sregs(&mut sregs, EntryMode::Linux64);
        vcpu.set_sregs(&sregs).ctx("KVM_SET_SREGS")?;
        let mut regs = boot_regs(EntryMode::Linux64, entry);
        regs.rsp = STACK_TOP - 0x4000 * id;
        regs.rbp = regs.rsp;
        regs.rsi = 0;
        vcpu.set_regs(&regs).ctx("KVM_SET_REGS")?;
        vcpu.set_fpu(&boot_fpu()).ctx("KVM_SET_FPU")?;
        Ok(vcpu)
    }

    /// The u64 at `gpa` in slot 0.
    pub fn read_u64(&self, gpa: u64) -> u64 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap_or(u64::MAX)
    }

    /// Writes the u64 at `gpa` in slot 0.
    pub fn write_u64(&self, gpa: u64, v: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(gpa));
    }
}
