//! The PCI segment of a VM: host bridge, configuration access (type-1 ports
//! and ECAM), BAR address allocation, BAR moves and the virtio-pci devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use crate::platform::{self, MemoryLayout};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use pci::aml::HostBridgeLayout;
use pci::{
    BarKind, BarMapper, BarMove, BarRegion, DevFn, HostBridge, PciBus, PciConfigIo, PciConfigMmio,
    PciDevice,
};
use virtio::transport::{VirtioPciDevice, BAR0_SIZE};
use virtio::VirtioDevice;
use vm_allocator::{AddressAllocator, AllocPolicy};
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{MsiRouter, MsixVectors};
use crate::vfio_pci::VfioPciDevice;
use crate::{Error, Result};

/// Port of CONFIG_ADDRESS (type-1 access).
const PCI_CONFIG_PORT: u64 = 0xcf8;

/// A registered ioeventfd inside a BAR.
struct IoEvent {
    bar: u8,
    offset: u64,
    evt: EventFd,
}

/// A BAR the guest reaches through a KVM memory slot (VFIO passthrough).
#[derive(Debug, Clone, Copy)]
struct BarSlot {
    slot: u32,
    host: u64,
    size: u64,
}

/// Moves BARs on the buses and their ioeventfds and memory slots with them.
///
/// The buses own the configuration accessors, which own the PCI bus, which
/// owns this mapper: so the mapper reaches the buses through `Weak` handles
/// (an owning handle would be a cycle, and a VM would never be freed).
struct Mapper {
    vm: Arc<VmFd>,
    mmio: Weak<Bus>,
    pio: Weak<Bus>,
    ram: Vec<(u64, u64)>,
    /// Where each BAR really is (a refused move leaves it in place).
    located: Mutex<BTreeMap<(DevFn, u8), u64>>,
    ioevents: Mutex<BTreeMap<DevFn, Vec<IoEvent>>>,
    slots: Mutex<BTreeMap<(DevFn, u8), BarSlot>>,
}

impl Mapper {
    /// Points memory slot `s` at guest address `gpa` (size 0 deletes it).
    fn set_slot(
        &self,
        s: &BarSlot,
        gpa: u64,
        present: bool,
    ) -> std::result::Result<(), kvm_ioctls::Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: s.slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: if present { s.size } else { 0 },
            userspace_addr: s.host,
        };
        // SAFETY: the host range is a VFIO region mapping owned by the
        // passed-through device, which the VM keeps (through its buses)
        // until its vCPUs have stopped; deleting a slot touches no memory.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl Mapper {
    fn overlaps_ram(&self, start: u64, size: u64) -> bool {
        let end = start.saturating_add(size);
        self.ram.iter().any(|&(a, s)| start < a + s && a < end)
    }
}

impl BarMapper for Mapper {
    fn move_bar(&self, devfn: DevFn, mv: &BarMove) -> std::result::Result<(), String> {
        let mut located = self.located.lock().unwrap_or_else(|e| e.into_inner());
        let key = (devfn, mv.index);
        let Some(&current) = located.get(&key) else {
            return Err("BAR is not mapped".into());
        };
        if mv.kind != BarKind::Io && self.overlaps_ram(mv.new, mv.size) {
            return Err("the new address overlaps guest RAM".into());
        }
        let bus = if mv.kind == BarKind::Io {
            &self.pio
        } else {
            &self.mmio
        };
        let bus = bus.upgrade().ok_or("the VM is being torn down")?;
        bus.relocate(current, mv.new).map_err(|e| e.to_string())?;
        located.insert(key, mv.new);
        if let Some(s) = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            // Delete, then re-create at the new address; if that fails the
            // BAR still works, trapped through the bus.
            let _ = self.set_slot(s, current, false);
            if let Err(e) = self.set_slot(s, mv.new, true) {
                devices::warn_ratelimited!(
                    "pci {devfn}: BAR {} memory slot not moved ({e}); accesses take the slow path",
                    mv.index
                );
            }
        }
        let ioevents = self.ioevents.lock().unwrap_or_else(|e| e.into_inner());
        for io in ioevents
            .get(&devfn)
            .into_iter()
            .flatten()
            .filter(|io| io.bar == mv.index)
        {
            let _ = self.vm.unregister_ioevent(
                &io.evt,
                &IoEventAddress::Mmio(current + io.offset),
                NoDatamatch,
            );
            if let Err(e) = self.vm.register_ioevent(
                &io.evt,
                &IoEventAddress::Mmio(mv.new + io.offset),
                NoDatamatch,
            ) {
                devices::warn_ratelimited!("pci {devfn}: ioeventfd at {:#x} not registered ({e}); notifications take the slow path", mv.new + io.offset);
            }
        }
        Ok(())
    }
}

/// A virtio device's saved state with the name it has in the VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedDevice {
    /// `virtio-blk0`, `virtio-mem`, ...
    pub name: String,
    /// Transport and device.
    pub state: virtio::state::VirtioPciState,
}

/// PCI segment 0 of a VM.
pub struct PciSegment {
    bus: Arc<PciBus>,
    mapper: Arc<Mapper>,
    mmio: Arc<Bus>,
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    router: Arc<MsiRouter>,
    layout: HostBridgeLayout,
    virtio: Vec<(String, DevFn, Arc<Mutex<VirtioPciDevice>>)>,
    vfio: Vec<(String, DevFn, Arc<Mutex<VfioPciDevice>>)>,
}

impl PciSegment {
    /// Creates the host bridge and the configuration access paths.
    pub fn new(
        vm: Arc<VmFd>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem_layout: &MemoryLayout,
        router: Arc<MsiRouter>,
    ) -> Result<Self> {
        let mapper = Arc::new(Mapper {
            vm,
            mmio: Arc::downgrade(&mmio),
            pio: Arc::downgrade(&pio),
            ram: mem_layout.ram_ranges(),
            located: Mutex::new(BTreeMap::new()),
            ioevents: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(BTreeMap::new()),
        });
        let bus = Arc::new(PciBus::new(mapper.clone()));
        bus.add(
            DevFn::new(0, 0),
            Arc::new(Mutex::new(HostBridge::default())),
        );
        let layout = HostBridgeLayout {
            ecam_base: platform::PCI_ECAM_START,
            last_bus: 0,
            mmio32: platform::PCI_MMIO32,
            mmio64: mem_layout.pci_mmio64(),
        };
        let place = |e: devices::BusError| {
            Error::Memory(format!("cannot place PCI configuration access: {e}"))
        };
        if platform::PCI_CONFIG_PORTS {
            pio.insert(
                Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
                PCI_CONFIG_PORT,
                8,
            )
            .map_err(place)?;
        }
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
            layout.ecam_base,
            layout.ecam_size(),
        )
        .map_err(place)?;
        let (m64, m64_size) = layout.mmio64;
        let mmio64 = AddressAllocator::new(m64, m64_size)
            .map_err(|e| Error::Memory(format!("64-bit MMIO window: {e:?}")))?;
        let (m32, m32_size) = layout.mmio32;
        let mmio32 = AddressAllocator::new(m32, m32_size)
            .map_err(|e| Error::Memory(format!("32-bit MMIO window: {e:?}")))?;
        Ok(Self {
            bus,
            mapper,
            mmio,
            mmio32,
            mmio64,
            router,
            layout,
            virtio: Vec::new(),
            vfio: Vec::new(),
        })
    }

    /// What the ACPI tables must say about the host bridge.
    pub fn layout(&self) -> &HostBridgeLayout {
        &self.layout
    }

    /// [`PciSegment::add_virtio`] for a device whose VMM handle signals
    /// configuration changes: returns the transport's interrupt path.
    pub fn add_virtio_signalled(
        &mut self,
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: virtio::DeviceMemory,
    ) -> Result<Arc<dyn virtio::VirtioInterrupt>> {
        let dev = self.add_virtio(name, device, mem)?;
        let interrupt = dev.lock().unwrap_or_else(|e| e.into_inner()).interrupt();
        Ok(interrupt)
    }

    /// Adds a virtio device as a PCI function with its BAR in the 64-bit
    /// window, MSI-X vectors, and ioeventfds for its queue notifications.
    pub fn add_virtio(
        &mut self,
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: virtio::DeviceMemory,
    ) -> Result<Arc<Mutex<VirtioPciDevice>>> {
        let devfn = self
            .bus
            .free_slot(1)
            .ok_or_else(|| Error::Memory("no free PCI slot (31 devices at most)".into()))?;
        let range = self
            .mmio64
            .allocate(BAR0_SIZE, BAR0_SIZE, AllocPolicy::FirstMatch)
            .map_err(|e| Error::Memory(format!("no room for {name}'s BAR: {e:?}")))?;
        let bar_addr = range.start();
        let vectors = (device.queue_max_sizes().len() + 1) as u16;
        let sink = Arc::new(MsixVectors::new(
            self.router.clone(),
            vectors,
            platform::msi_devid(devfn),
        )?);
        let dev = VirtioPciDevice::new(name, device, mem, bar_addr, sink)
            .map_err(Error::io(format!("cannot create {name}")))?;
        let mut ioevents = Vec::new();
        for (i, evt) in dev.notify_eventfds().iter().enumerate() {
            let addr = dev.notify_address(i as u16);
            let evt = evt.try_clone().map_err(Error::io("eventfd"))?;
            self.mapper
                .vm
                .register_ioevent(&evt, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(Error::kvm("KVM_IOEVENTFD"))?;
            ioevents.push(IoEvent {
                bar: 0,
                offset: addr - bar_addr,
                evt,
            });
        }
        let dev = Arc::new(Mutex::new(dev));
        let as_pci: Arc<Mutex<dyn PciDevice>> = dev.clone();
        self.mmio
            .insert(
                Arc::new(Mutex::new(BarRegion::new(as_pci.clone(), 0))),
                bar_addr,
                BAR0_SIZE,
            )
            .map_err(|e| Error::Memory(format!("cannot map {name}'s BAR: {e}")))?;
        self.mapper
            .located
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((devfn, 0), bar_addr);
        self.mapper
            .ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(devfn, ioevents);
        self.bus.add(devfn, as_pci);
        log::info!("{name} at PCI {devfn}, BAR0 {bar_addr:#x}");
        self.virtio.push((name.to_string(), devfn, dev.clone()));
        Ok(dev)
    }

    /// Passes `dev` through as a PCI function: BARs placed in the MMIO
    /// windows, mmap-able ones as KVM memory slots, the rest (and MSI-X)
    /// trapped on the MMIO bus.
    pub fn add_vfio(
        &mut self,
        name: &str,
        dev: vfio::device::Device,
        slots: &mut crate::memslots::MemSlots,
    ) -> Result<Arc<Mutex<VfioPciDevice>>> {
        let devfn = self
            .bus
            .free_slot(1)
            .ok_or_else(|| Error::Memory("no free PCI slot (31 devices at most)".into()))?;
        let (m32, m64) = (&mut self.mmio32, &mut self.mmio64);
        let mut alloc = |size: u64, low: bool| -> Result<u64> {
            let a = if low { &mut *m32 } else { &mut *m64 };
            a.allocate(size, size, AllocPolicy::FirstMatch)
                .map(|r| r.start())
                .map_err(|e| {
                    Error::Memory(format!("no room for a {size:#x}-byte BAR of {name}: {e:?}"))
                })
        };
        let router = self.router.clone();
        let mut make_sink = |n: u16| -> Result<Arc<MsixVectors>> {
            Ok(Arc::new(MsixVectors::new(
                router.clone(),
                n,
                platform::msi_devid(devfn),
            )?))
        };
        let vdev = VfioPciDevice::new(name, dev, &mut alloc, &mut make_sink)?;
        let bars = vdev.bars();
        let direct = vdev.direct_bars();
        let dev = Arc::new(Mutex::new(vdev));
        let as_pci: Arc<Mutex<dyn PciDevice>> = dev.clone();
        for b in &bars {
            self.mmio
                .insert(
                    Arc::new(Mutex::new(BarRegion::new(as_pci.clone(), b.index))),
                    b.addr,
                    b.size,
                )
                .map_err(|e| Error::Memory(format!("cannot map {name}'s BAR {}: {e}", b.index)))?;
            self.mapper
                .located
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((devfn, b.index), b.addr);
        }
        for d in direct {
            let s = BarSlot {
                slot: slots
                    .take(1, "--device", &format!("{name}'s BAR {}", d.index))?
                    .start,
                host: d.host,
                size: d.size,
            };
            self.mapper.set_slot(&s, d.addr, true).map_err(|e| {
                Error::Vfio(format!(
                    "{name}: BAR {} as memory slot {}: {e}",
                    d.index, s.slot
                ))
            })?;
            self.mapper
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((devfn, d.index), s);
        }
        self.bus.add(devfn, as_pci);
        log::info!(
            "{name} passed through at PCI {devfn}: BARs {:?}",
            bars.iter().map(|b| (b.index, b.addr)).collect::<Vec<_>>()
        );
        self.vfio.push((name.to_string(), devfn, dev.clone()));
        Ok(dev)
    }

    /// The passed-through functions: name, address, device.
    pub fn vfio_devices(&self) -> &[(String, DevFn, Arc<Mutex<VfioPciDevice>>)] {
        &self.vfio
    }

    /// The virtio functions: name, address, device.
    pub fn virtio_devices(&self) -> &[(String, DevFn, Arc<Mutex<VirtioPciDevice>>)] {
        &self.virtio
    }

    /// Stops every virtio device's worker, keeping its queues (VM pause).
    pub fn pause_devices(&self) {
        for (_, _, dev) in &self.virtio {
            dev.lock().unwrap_or_else(|e| e.into_inner()).pause();
        }
    }

    /// Continues the paused virtio devices.
    pub fn resume_devices(&self) {
        for (_, _, dev) in &self.virtio {
            dev.lock().unwrap_or_else(|e| e.into_inner()).resume();
        }
    }

    /// The state of every virtio device (paused), by name. Passed-through
    /// devices have state Caravel cannot read: they refuse the snapshot.
    pub fn save_devices(&self) -> Result<Vec<SavedDevice>> {
        if !self.vfio.is_empty() {
            let names: Vec<_> = self.vfio.iter().map(|(n, _, _)| n.as_str()).collect();
            return Err(Error::Snapshot(format!(
                "the VM has passed-through devices ({}), whose state cannot be saved",
                names.join(", ")
            )));
        }
        self.virtio
            .iter()
            .map(|(name, _, dev)| {
                let state = dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save()
                    .map_err(Error::Snapshot)?;
                Ok(SavedDevice {
                    name: name.clone(),
                    state,
                })
            })
            .collect()
    }

    /// Restores saved devices into this segment's freshly built ones (the
    /// same names, the same kinds) and moves their BARs where they were.
    /// virtio-mem goes first: it makes plugged memory visible to the other
    /// devices, whose rings may live there.
    pub fn restore_devices(&self, saved: &[SavedDevice]) -> Result<()> {
        let ours: Vec<_> = self.virtio.iter().map(|(n, _, _)| n.as_str()).collect();
        let theirs: Vec<_> = saved.iter().map(|d| d.name.as_str()).collect();
        if ours.len() != theirs.len() || !theirs.iter().all(|n| ours.contains(n)) {
            return Err(Error::Snapshot(format!(
                "the snapshot's devices ({}) are not this VM's ({})",
                theirs.join(", "),
                ours.join(", ")
            )));
        }
        let mut order: Vec<&SavedDevice> = saved.iter().collect();
        order.sort_by_key(|d| !matches!(d.state.device, virtio::state::DeviceState::Mem(_)));
        for d in order {
            let Some((_, devfn, dev)) = self.virtio.iter().find(|(n, _, _)| *n == d.name) else {
                continue;
            };
            let moves = dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(&d.state)
                .map_err(Error::Snapshot)?;
            for mv in moves {
                self.mapper.move_bar(*devfn, &mv).map_err(|e| {
                    Error::Snapshot(format!(
                        "{}: BAR{} cannot go to {:#x}: {e}",
                        d.name, mv.index, mv.new
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// Stops every device, in the teardown order of a VM whose vCPUs have
    /// stopped: virtio workers are stopped and joined (they touch guest
    /// memory), then passed-through devices are released (their interrupts,
    /// BAR memory slots and, with the last reference to their container,
    /// their DMA mappings). Every function leaves the PCI bus and the MMIO
    /// bus, so nothing can reach a stopped device.
    pub fn shutdown(&mut self) {
        for (_, _, dev) in self.virtio.drain(..) {
            dev.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        }
        let slots =
            std::mem::take(&mut *self.mapper.slots.lock().unwrap_or_else(|e| e.into_inner()));
        for s in slots.values() {
            // The guest is gone: deleting the slot frees KVM's reference to
            // the device's mapping before the device closes it.
            let _ = self.mapper.set_slot(s, 0, false);
        }
        self.vfio.clear();
        let located = std::mem::take(
            &mut *self
                .mapper
                .located
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // Every BAR Caravel places is in an MMIO window.
        for addr in located.into_values() {
            self.mmio.remove(addr);
        }
        self.mapper
            .ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.bus.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    fn kvm_vm() -> Option<Arc<VmFd>> {
        let kvm = Kvm::new().ok()?;
        let vm = kvm.create_vm().ok()?;
        vm.create_irq_chip().ok()?;
        Some(Arc::new(vm))
    }

    fn ecam_write(seg: &PciSegment, devfn: DevFn, reg: u16, v: u32) {
        let mut cfg = PciConfigMmio::new(seg.bus.clone());
        devices::BusDevice::write(
            &mut cfg,
            (u64::from(devfn.0) << 12) | u64::from(reg),
            &v.to_le_bytes(),
        );
    }

    #[test]
    fn a_moved_bar_takes_its_mmio_range_and_ioeventfds_along() {
        let Some(vm) = kvm_vm() else {
            crate::test_support::skip_or_fail("a_moved_bar...", "no KVM VM with an irqchip");
            return;
        };
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let mem_layout = MemoryLayout::new(64 << 20);
        let router = Arc::new(MsiRouter::new(vm.clone(), 24));
        let mut seg = PciSegment::new(vm.clone(), pio, mmio.clone(), &mem_layout, router).unwrap();
        let mem = virtio::DeviceMemory::new(
            vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)])
                .unwrap(),
        );
        let dev = seg
            .add_virtio("virtio-rng", Box::new(virtio::rng::Rng::default()), mem)
            .unwrap();
        let devfn = seg.virtio_devices()[0].1;
        let old = dev.lock().unwrap().bar_addr();
        let notify_old = dev.lock().unwrap().notify_address(0);
        let evt = dev.lock().unwrap().notify_eventfds()[0]
            .try_clone()
            .unwrap();

        // num_queues (common config + 0x12) through the MMIO bus.
        let mut q = [0u8; 2];
        assert!(mmio.read(old + 0x12, &mut q));
        assert_eq!(u16::from_le_bytes(q), 1);

        // The guest moves BAR 0 (64-bit: low dword, then high dword).
        let new = old + 0x100_0000;
        ecam_write(&seg, devfn, 0x10, new as u32 | 0x4);
        assert_eq!(
            dev.lock().unwrap().bar_addr(),
            old,
            "nothing moves on the low half"
        );
        ecam_write(&seg, devfn, 0x14, (new >> 32) as u32);
        assert_eq!(dev.lock().unwrap().bar_addr(), new);
        assert!(!mmio.read(old + 0x12, &mut q), "old range released");
        assert!(mmio.read(new + 0x12, &mut q));
        assert_eq!(u16::from_le_bytes(q), 1);

        // KVM has the ioeventfd at the new address and no longer at the old one.
        let notify_new = notify_old - old + new;
        let again = vm.register_ioevent(&evt, &IoEventAddress::Mmio(notify_new), NoDatamatch);
        assert_eq!(
            again.map_err(|e| e.errno()),
            Err(libc::EEXIST),
            "already registered at the new address"
        );
        assert!(
            vm.unregister_ioevent(&evt, &IoEventAddress::Mmio(notify_old), NoDatamatch)
                .is_err(),
            "gone from the old address"
        );

        // A move onto guest RAM is refused: the device stays where it was.
        ecam_write(&seg, devfn, 0x10, 0x100_0000 | 0x4);
        ecam_write(&seg, devfn, 0x14, 0);
        assert!(
            mmio.read(new + 0x12, &mut q),
            "still at the last good address"
        );
    }
}
