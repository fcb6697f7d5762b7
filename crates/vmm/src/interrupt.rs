//! MSI delivery through KVM: each MSI-X vector of each device gets a GSI, an
//! irqfd on that GSI, and (while the vector is unmasked) an MSI route.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, and the in-kernel irqchip's
//! default routes (x86: GSI n -> IOAPIC pin n, and the PIC for n < 16;
//! aarch64: GSI n -> SPI n) live in the same table, so every commit re-sends
//! them with the MSI routes. On aarch64 an MSI route also carries the
//! device's requester ID, the ITS device ID (`KVM_MSI_VALID_DEVID`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::VmFd;
use pci::MsixSink;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{Error, Result};

/// GSIs below this are the irqchip's own (x86: IOAPIC pins; aarch64: SPIs).
#[cfg(target_arch = "x86_64")]
const IRQCHIP_GSIS: u32 = 24;
/// GSIs below this are the irqchip's own (x86: IOAPIC pins; aarch64: SPIs).
#[cfg(target_arch = "aarch64")]
const IRQCHIP_GSIS: u32 = 32;
/// Highest GSI handed out (KVM allows 4096 routes).
const MAX_GSI: u32 = 4095;

/// Owns the VM's GSI routing table.
pub struct MsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

struct RouterState {
    next_gsi: u32,
    /// GSI -> (address, data, device ID).
    msi: BTreeMap<u32, (u64, u32, Option<u32>)>,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default routes for the in-kernel PIC and IOAPIC.
#[cfg(target_arch = "x86_64")]
pub fn default_routes() -> Vec<kvm_irq_routing_entry> {
    use kvm_bindings::{KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};
    let mut v = Vec::new();
    for gsi in 0..IRQCHIP_GSIS {
        if gsi < 8 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

/// The vGIC's routes Caravel relies on: GSI n -> SPI n.
#[cfg(target_arch = "aarch64")]
pub fn default_routes() -> Vec<kvm_irq_routing_entry> {
    (0..IRQCHIP_GSIS)
        .map(|gsi| irqchip_entry(gsi, 0, gsi))
        .collect()
}

impl MsiRouter {
    /// A router for `vm`, handing out GSIs from `first_gsi`.
    pub fn new(vm: Arc<VmFd>, first_gsi: u32) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: first_gsi.max(IRQCHIP_GSIS),
                msi: BTreeMap::new(),
            }),
        }
    }

    /// A fresh GSI.
    pub fn allocate_gsi(&self) -> Result<u32> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.next_gsi > MAX_GSI {
            return Err(Error::Memory("out of GSIs for MSI routes".into()));
        }
        s.next_gsi += 1;
        Ok(s.next_gsi - 1)
    }

    /// Routes `gsi` to `message` from device `devid` (aarch64's ITS needs
    /// it), or removes its route.
    pub fn set_route(&self, gsi: u32, message: Option<(u64, u32)>, devid: Option<u32>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match message {
            Some((a, d)) => s.msi.insert(gsi, (a, d, devid)) != Some((a, d, devid)),
            None => s.msi.remove(&gsi).is_some(),
        };
        if changed {
            if let Err(e) = self.commit(&s) {
                devices::warn_ratelimited!("cannot update MSI routes: {e}");
            }
        }
    }

    fn commit(&self, s: &RouterState) -> std::result::Result<(), String> {
        let mut entries = default_routes();
        for (&gsi, &(addr, data, devid)) in &s.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = addr as u32;
            e.u.msi.address_hi = (addr >> 32) as u32;
            e.u.msi.data = data;
            if let Some(id) = devid {
                e.flags = KVM_MSI_VALID_DEVID;
                e.u.msi.__bindgen_anon_1.devid = id;
            }
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries).map_err(|e| format!("{e:?}"))?;
        self.vm.set_gsi_routing(&table).map_err(|e| e.to_string())
    }
}

/// The MSI-X vectors of one device: a GSI and an irqfd each.
pub struct MsixVectors {
    router: Arc<MsiRouter>,
    vectors: Vec<(u32, EventFd)>,
    devid: Option<u32>,
}

impl MsixVectors {
    /// Allocates `count` vectors with irqfds registered on `vm`, for the
    /// device with requester ID `devid` (used where MSIs carry it).
    pub fn new(router: Arc<MsiRouter>, count: u16, devid: Option<u32>) -> Result<Self> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = router.allocate_gsi()?;
            let evt = EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
            router
                .vm
                .register_irqfd(&evt, gsi)
                .map_err(Error::kvm("KVM_IRQFD"))?;
            vectors.push((gsi, evt));
        }
        Ok(Self {
            router,
            vectors,
            devid,
        })
    }
}

impl MsixVectors {
    /// The vectors' irqfds, for a device that signals them itself (VFIO).
    pub fn eventfds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.vectors.iter().map(|(_, e)| e.as_raw_fd()).collect()
    }
}

impl MsixSink for MsixVectors {
    fn update_route(&self, vector: u16, message: Option<(u64, u32)>) {
        if let Some((gsi, _)) = self.vectors.get(usize::from(vector)) {
            self.router.set_route(*gsi, message, self.devid);
        }
    }

    fn deliver(&self, vector: u16) {
        if let Some((_, evt)) = self.vectors.get(usize::from(vector)) {
            let _ = evt.write(1);
        }
    }
}

impl Drop for MsixVectors {
    fn drop(&mut self) {
        for (gsi, evt) in &self.vectors {
            // Deassign the irqfd before its route goes (KVM wants that order).
            let _ = self.router.vm.unregister_irqfd(evt, *gsi);
            self.router.set_route(*gsi, None, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn default_routes_are_the_spis() {
        let r = default_routes();
        assert_eq!(r.len(), 32);
        for (i, e) in r.iter().enumerate() {
            // SAFETY: these entries were built as irqchip routes above.
            let (chip, pin) = unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) };
            assert_eq!((e.gsi, chip, pin), (i as u32, 0, i as u32));
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn default_routes_match_kvms() {
        let r = default_routes();
        // 16 PIC + 24 IOAPIC entries.
        assert_eq!(r.len(), 40);
        let pic0: Vec<_> = r.iter().filter(|e| e.gsi == 0).collect();
        assert_eq!(pic0.len(), 2);
        // SAFETY: these entries were built as irqchip routes above.
        let chips: Vec<u32> = pic0
            .iter()
            .map(|e| unsafe { e.u.irqchip.irqchip })
            .collect();
        assert_eq!(
            chips,
            vec![
                kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
                kvm_bindings::KVM_IRQCHIP_IOAPIC
            ]
        );
        let g20: Vec<_> = r.iter().filter(|e| e.gsi == 20).collect();
        assert_eq!(g20.len(), 1, "above 15 only the IOAPIC");
    }
}
