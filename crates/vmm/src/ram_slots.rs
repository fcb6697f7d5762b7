//! The KVM memory slots that map guest RAM, and their dirty logging.
//!
//! Boot RAM and the plugged slots of the virtio-mem region are set through
//! [`RamSlots`], which remembers them, so live migration can turn
//! `KVM_MEM_LOG_DIRTY_PAGES` on and off for all of them at once and read
//! their dirty bitmaps; a slot added while logging is on logs from the start.
//! (The BARs of passed-through devices are not RAM and are not kept here.)
//!
//! Where the host has `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, reading a slot's
//! log does not re-protect its pages by itself: [`RamSlots::take_dirty`]
//! clears exactly the pages it read with `KVM_CLEAR_DIRTY_LOG` (only those
//! get write-protected again); elsewhere `KVM_GET_DIRTY_LOG` does both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, kvm_userspace_memory_region,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

ioctl_iowr_nr!(
    KVM_CLEAR_DIRTY_LOG,
    kvm_bindings::KVMIO,
    0xc0,
    kvm_clear_dirty_log
);

/// The RAM slots of one VM.
pub struct RamSlots {
    vm: Arc<VmFd>,
    inner: Mutex<Inner>,
    /// Manual dirty-log protection is on (`KVM_CLEAR_DIRTY_LOG`).
    manual_protect: bool,
}

#[derive(Default)]
struct Inner {
    /// Present slots by number (flags as last set).
    slots: BTreeMap<u32, kvm_userspace_memory_region>,
    /// Whether slots log dirty pages.
    logging: bool,
}

impl RamSlots {
    /// No slots yet on `vm`; manual dirty-log protection on where the
    /// host has it.
    pub fn new(vm: Arc<VmFd>) -> Self {
        let supported = vm.check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) as _);
        let manual_protect = supported > 0
            && u64::try_from(supported).unwrap_or(0)
                & u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
                != 0
            && vm
                .enable_cap(&kvm_enable_cap {
                    cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                    args: [u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
                    ..Default::default()
                })
                .is_ok();
        Self {
            vm,
            inner: Mutex::default(),
            manual_protect,
        }
    }

    /// Whether pages read from the dirty log are re-protected one by one
    /// (`KVM_CLEAR_DIRTY_LOG`) rather than by the read itself.
    pub fn manual_protect(&self) -> bool {
        self.manual_protect
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets slot `region.slot` (a `memory_size` of 0 removes it), logging
    /// dirty pages if logging is on; `region.flags` is ignored.
    ///
    /// # Safety
    ///
    /// `[userspace_addr, userspace_addr + memory_size)` must be a mapping
    /// that stays valid for as long as the VM can run vCPUs or the slot is
    /// set (the caller owns it and removes the slot or outlives the VM fd).
    pub unsafe fn set(
        &self,
        mut region: kvm_userspace_memory_region,
    ) -> Result<(), kvm_ioctls::Error> {
        let mut inner = self.lock();
        region.flags = if inner.logging {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        // SAFETY: the caller guarantees the mapping (see above).
        unsafe { self.vm.set_user_memory_region(region) }?;
        if region.memory_size == 0 {
            inner.slots.remove(&region.slot);
        } else {
            inner.slots.insert(region.slot, region);
        }
        Ok(())
    }

    /// Turns dirty logging on or off for every slot. On a failure the slots
    /// changed so far are set back, and the error names the slot.
    pub fn set_logging(&self, on: bool) -> Result<(), String> {
        let mut inner = self.lock();
        if inner.logging == on {
            return Ok(());
        }
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        let slots: Vec<_> = inner.slots.values().copied().collect();
        for (i, r) in slots.iter().enumerate() {
            if let Err(e) = self.reflag(r, flags) {
                for done in &slots[..i] {
                    let _ = self.reflag(done, done.flags);
                }
                return Err(format!(
                    "KVM_SET_USER_MEMORY_REGION (slot {}, dirty logging {}): {e}",
                    r.slot,
                    if on { "on" } else { "off" }
                ));
            }
        }
        for r in inner.slots.values_mut() {
            r.flags = flags;
        }
        inner.logging = on;
        Ok(())
    }

    fn reflag(&self, r: &kvm_userspace_memory_region, flags: u32) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region { flags, ..*r };
        // SAFETY: the same slot over the same memory as when it was set
        // (whose caller vouched for the mapping); only the flags change.
        unsafe { self.vm.set_user_memory_region(region) }
    }

    /// Hands `f` each slot's pages written by vCPUs since logging started or
    /// since the last call: (guest address, one bit per host page). Those
    /// pages are write-protected again before `f` sees them, so a write
    /// after the caller reads a page shows up in the next call.
    pub fn take_dirty(&self, mut f: impl FnMut(u64, &[u64])) -> Result<(), String> {
        let inner = self.lock();
        if !inner.logging {
            return Err("dirty logging is off".into());
        }
        for r in inner.slots.values() {
            let mut bits = self
                .vm
                .get_dirty_log(r.slot, r.memory_size as usize)
                .map_err(|e| format!("KVM_GET_DIRTY_LOG (slot {}): {e}", r.slot))?;
            if self.manual_protect && bits.iter().any(|&w| w != 0) {
                self.clear(r, &mut bits)?;
            }
            f(r.guest_phys_addr, &bits);
        }
        Ok(())
    }

    /// `KVM_CLEAR_DIRTY_LOG` of the whole slot with the bits just read.
    fn clear(&self, r: &kvm_userspace_memory_region, bits: &mut [u64]) -> Result<(), String> {
        let pages = r.memory_size / super::migration::page_size();
        let mut c = kvm_clear_dirty_log {
            slot: r.slot,
            num_pages: u32::try_from(pages)
                .map_err(|_| format!("slot {} has too many pages to clear", r.slot))?,
            first_page: 0,
            ..Default::default()
        };
        c.__bindgen_anon_1.dirty_bitmap = bits.as_mut_ptr().cast();
        // SAFETY: `c` describes this slot's pages and points at `bits`, a
        // bitmap of at least `num_pages` bits (KVM_GET_DIRTY_LOG sized it
        // for the slot), alive and not otherwise borrowed for the call; the
        // kernel reads it (and may clear bits in it).
        let ret = unsafe { ioctl_with_ref(&*self.vm, KVM_CLEAR_DIRTY_LOG(), &c) };
        if ret != 0 {
            return Err(format!(
                "KVM_CLEAR_DIRTY_LOG (slot {}): {}",
                r.slot,
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Whether dirty logging is on.
    pub fn logging(&self) -> bool {
        self.lock().logging
    }
}

impl Drop for RamSlots {
    fn drop(&mut self) {
        // A VM that outlives a failed migration must not keep paying for
        // write protection; the VM fd closes soon after anyway.
        let _ = self.set_logging(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::HostMapping;

    #[test]
    fn logging_covers_slots_set_before_and_after_it_starts() {
        if !crate::test_support::kvm_usable("ram_slots") {
            return;
        }
        // /dev/kvm may open and still not make VMs (an emulator's user mode).
        let vm = match kvm_ioctls::Kvm::new().and_then(|k| k.create_vm()) {
            Ok(vm) => Arc::new(vm),
            Err(e) => {
                crate::test_support::skip_or_fail("ram_slots", &format!("KVM_CREATE_VM: {e}"));
                return;
            }
        };
        let a = HostMapping::anonymous(1 << 20, 1 << 21).unwrap();
        let b = HostMapping::anonymous(1 << 20, 1 << 21).unwrap();
        let slots = RamSlots::new(vm);
        eprintln!("manual dirty-log protection: {}", slots.manual_protect());
        let region = |slot, gpa, m: &HostMapping| kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: m.len() as u64,
            userspace_addr: m.as_ptr() as u64,
        };
        // SAFETY: both mappings outlive `slots` (and the VM fd it holds).
        unsafe { slots.set(region(0, 0, &a)).unwrap() };
        assert!(slots.take_dirty(|_, _| ()).is_err(), "logging is off");
        slots.set_logging(true).unwrap();
        // SAFETY: as above.
        unsafe { slots.set(region(1, 1 << 20, &b)).unwrap() };
        let mut seen = Vec::new();
        slots
            .take_dirty(|gpa, bits| seen.push((gpa, bits.len())))
            .unwrap();
        // 256 pages of 4 KiB per slot: 4 words each, nothing written yet.
        assert_eq!(seen, vec![(0, 4), (1 << 20, 4)]);
        slots.set_logging(false).unwrap();
        assert!(!slots.logging());
        let gone = kvm_userspace_memory_region {
            memory_size: 0,
            ..region(1, 1 << 20, &b)
        };
        // SAFETY: removing a slot has no memory precondition.
        unsafe { slots.set(gone).unwrap() };
        assert_eq!(slots.lock().slots.len(), 1);
    }
}
