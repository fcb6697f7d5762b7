//! Guest RAM: anonymous host mappings registered as KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::{Error, Result};

/// Maps `ranges` (guest address, size) as private anonymous memory, asking for
/// transparent huge pages (fewer nested page faults, as Cloud Hypervisor and
/// QEMU do). Nothing is touched until the guest writes.
pub fn create(ranges: &[(u64, u64)]) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ranges
        .iter()
        .map(|(a, s)| (GuestAddress(*a), *s as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| Error::Memory(format!("cannot map guest RAM: {e}")))?;
    for region in mem.iter() {
        let host = region.as_ptr();
        let len = region.len() as usize;
        // SAFETY: `host..host+len` is exactly one mapping we just created and
        // own; madvise only changes paging policy and cannot invalidate it.
        let ret = unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
        if ret != 0 {
            log::debug!(
                "MADV_HUGEPAGE not applied: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

/// Registers every region of `mem` with KVM, slots numbered from 0.
///
/// The caller must keep `mem` alive for as long as `vm` can run vCPUs: the
/// slots point at its host mappings.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<u32> {
    let mut slot = 0;
    for region in mem.iter() {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes
        // owned by `mem`, which the VM owner keeps until after the VM fd (and
        // with it every vCPU) is closed; see `Vm`'s field order.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        slot += 1;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn creates_disjoint_regions() {
        let m = create(&[(0, 1 << 20), (1 << 32, 2 << 20)]).unwrap();
        assert_eq!(m.num_regions(), 2);
        m.write_obj(0xdead_beefu32, GuestAddress((1 << 32) + 4))
            .unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress((1 << 32) + 4)).unwrap(),
            0xdead_beef
        );
        assert!(
            m.read_obj::<u32>(GuestAddress(2 << 20)).is_err(),
            "hole is not memory"
        );
    }
}
