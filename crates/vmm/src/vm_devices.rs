//! Building a VM's devices: the UART, the virtio devices of the
//! configuration, the virtio-mem device with its host backend, and
//! passed-through VFIO devices. `Vm::new` calls these in order.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use devices::serial::{SerialDevice, SerialOutput};
use kvm_ioctls::VmFd;
use virtio::mem::{Geometry, Mem, MemHandle, PluggedListener};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{ConsoleConfig, HotplugConfig, VmConfig};
use crate::console;
use crate::device_memory::DeviceMemoryView;
use crate::disk_lock::DiskLock;
use crate::events::EventMonitor;
use crate::hotplug::{DmaTargets, HotplugBackend};
use crate::memory::HostMapping;
use crate::memslots::MemSlots;
use crate::pci_segment::PciSegment;
use crate::platform;
use crate::ram_slots::RamSlots;
use crate::{Error, Result};

/// The console UART, its interrupt an irqfd on the platform's serial GSI;
/// also the event that fires when the guest drains its receive FIFO.
pub fn serial(vm: &VmFd, out: SerialOutput) -> Result<(Arc<Mutex<SerialDevice>>, Arc<EventFd>)> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
    vm.register_irqfd(&irq, platform::SERIAL_GSI)
        .map_err(Error::kvm("KVM_IRQFD"))?;
    let input_wanted = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?);
    let serial = Arc::new(Mutex::new(platform::serial_device(
        irq,
        input_wanted.clone(),
        out,
    )));
    Ok((serial, input_wanted))
}

/// What the virtio-mem device and its backend are built from.
pub struct HotplugParts<'a> {
    /// The VM's RAM slots (the region's slots join them).
    pub ram_slots: &'a Arc<RamSlots>,
    /// `--memory`'s hotplug part.
    pub config: HotplugConfig,
    /// Guest address of the region.
    pub base: u64,
    /// The region's host mapping.
    pub mapping: &'a Arc<HostMapping>,
    /// hugetlbfs backing: plugs allocate their pages first.
    pub hugetlb: bool,
    /// Bytes requested at start.
    pub requested: u64,
    /// Passed-through devices whose DMA follows plugs.
    pub dma: &'a DmaTargets,
    /// The devices' view of guest memory, which follows plugs.
    pub view: &'a Arc<DeviceMemoryView>,
    /// Where plugged-size changes are reported.
    pub events: &'a Option<Arc<EventMonitor>>,
}

/// Creates the virtio-mem device on `pci`: its backend takes one KVM memory
/// slot per hotplug slot from `slots`. Returns the VMM's handle.
pub fn add_memory_device(
    pci: &mut PciSegment,
    p: HotplugParts<'_>,
    slots: &mut MemSlots,
) -> Result<MemHandle> {
    let h = p.config;
    let hotplug_slots = slots.take(
        (h.hotplug_size / h.slot_size()) as u32,
        "--memory",
        &format!("hotplug_size={}", arch::format_size(h.hotplug_size)),
    )?;
    let backend = Arc::new(HotplugBackend::new(
        p.ram_slots.clone(),
        p.mapping.clone(),
        p.base,
        h.slot_size(),
        hotplug_slots,
        p.dma.clone(),
        p.view.clone(),
    ));
    let geometry = Geometry {
        addr: p.base,
        region_size: h.hotplug_size,
        block_size: h.block_size,
        slot_size: h.slot_size(),
        node_id: 0,
    };
    let events = p.events.clone();
    let listener: PluggedListener = Box::new(move |plugged| {
        if let Some(ev) = &events {
            ev.emit(
                "memory",
                "plugged-size",
                Some(serde_json::json!({ "plugged_size": plugged })),
            );
        }
    });
    let dev = Mem::new(geometry, p.requested, p.hugetlb, backend, Some(listener));
    let handle = dev.handle();
    handle.set_interrupt(pci.add_virtio_signalled("virtio-mem", Box::new(dev), p.view.memory())?);
    Ok(handle)
}

/// Opens each `--device` (refusing a missing or wrong VF token before the
/// guest starts), passes it through, and maps boot RAM (below
/// `boot_ram_end`) for its DMA; hotplugged memory is mapped block by block
/// as the guest plugs it, through `dma`.
pub fn add_vfio_devices(
    cfg: &VmConfig,
    pci: &mut PciSegment,
    mem: &GuestMemoryMmap,
    boot_ram_end: u64,
    dma: &DmaTargets,
    slots: &mut MemSlots,
) -> Result<()> {
    let sysfs = vfio::pci::Sysfs::default();
    for (i, d) in cfg.devices.iter().enumerate() {
        let dev = vfio::device::Device::open(&sysfs, d.bdf, d.vf_token.as_ref())
            .map_err(|e| Error::Vfio(format!("{}: {e}", d.bdf)))?;
        for region in mem.iter().filter(|r| r.start_addr().0 < boot_ram_end) {
            // SAFETY: guest RAM is owned by the Vm, whose `pci` field (which
            // owns the device and its container) is dropped before `ram`,
            // so the pages stay mapped as long as the device can DMA.
            unsafe {
                dev.container()
                    .map_dma(region.start_addr().0, region.len(), region.as_ptr() as u64)
            }
            .map_err(|e| Error::Vfio(format!("{}: {e}", d.bdf)))?;
        }
        dma.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dev.shared_container());
        let name = d.id.clone().unwrap_or_else(|| format!("vfio{i}"));
        pci.add_vfio(&name, dev, slots)?;
    }
    Ok(())
}

/// A virtio-net device on the TAP `n` names (opened or created now); for a
/// migration's destination its queues are parked into `parked`.
fn open_net(
    n: &crate::config::NetConfig,
    parked: Option<&mut Vec<crate::tap::ParkedQueue>>,
) -> Result<virtio::net::Net> {
    let tap = match &n.tap {
        Some(name) => {
            crate::tap::open_named(name, n.pairs(), n.ip.zip(n.mask), n.host_mac.map(|m| m.0))
        }
        None => crate::tap::from_fds(&n.fds),
    }
    .map_err(|e| Error::config("--net", e))?;
    log::info!(
        "virtio-net: TAP {} ({}{} queue pair(s)), guest MAC {}",
        tap.name,
        if tap.created { "created, " } else { "" },
        tap.queues.len(),
        n.mac
    );
    if let Some(parked) = parked {
        for q in &tap.queues {
            parked.push(q.park(&tap.name).map_err(|e| Error::config("--net", e))?);
        }
    }
    let options = virtio::net::NetOptions {
        mac: n.mac.0,
        queue_size: n.queue_size,
        ufo: tap.ufo,
    };
    let queues = tap
        .queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn virtio::net::TapQueue>)
        .collect();
    virtio::net::Net::new(options, queues).map_err(|e| Error::config("--net", e))
}

/// What the VM keeps of its virtio devices' host side.
pub struct VirtioHostSide {
    /// The disk images' locks.
    pub disk_locks: Vec<DiskLock>,
    /// A migration's destination: its TAP queues, detached until the guest
    /// runs here.
    pub parked_taps: Vec<crate::tap::ParkedQueue>,
    /// Each network card's traffic counters, by device name.
    pub net_counters: Vec<(String, Arc<virtio::net::NetCounters>)>,
    /// Socket files the devices listen on, removed when dropped.
    pub socket_files: Vec<crate::unix_socket::SocketFile>,
}

/// Creates the configured virtio devices on `pci`: disks, console, net, rng.
/// For a migration's `destination` (the source still runs on the same
/// disks and TAPs) the disk images are not locked and the TAP queues are
/// parked ([`VirtioHostSide`]).
pub fn add_virtio_devices(
    cfg: &VmConfig,
    pci: &mut PciSegment,
    mem: &virtio::DeviceMemory,
    console_dropped: &Arc<AtomicU64>,
    destination: bool,
) -> Result<VirtioHostSide> {
    let mut locks = Vec::new();
    let mut parked_taps = Vec::new();
    let mut net_counters = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!d.readonly)
            .open(&d.path)
            .map_err(|e| {
                Error::config(
                    "--disk",
                    format!(
                        "cannot open {}{}: {e}",
                        d.path.display(),
                        if d.readonly {
                            ""
                        } else {
                            " read-write (readonly=on?)"
                        }
                    ),
                )
            })?;
        locks.push(DiskLock::new(&file, &d.path, d.readonly, destination)?);
        let id = d.id.clone().unwrap_or_else(|| format!("caravel-disk{i}"));
        let disk = virtio::block::Disk::new(file, d.readonly, &id)
            .map_err(|e| Error::config("--disk", format!("{}: {e}", d.path.display())))?;
        pci.add_virtio(
            &format!("virtio-blk{i}"),
            Box::new(virtio::block::Block::new(disk)),
            mem.clone(),
        )?;
    }
    if cfg.console != ConsoleConfig::Off {
        let out = console::open_output(
            &cfg.console,
            "--console",
            "hvc0-out",
            console_dropped.clone(),
        )?;
        let input = (cfg.console == ConsoleConfig::Tty).then_some(0);
        pci.add_virtio(
            "virtio-console",
            Box::new(virtio::console::Console::new(out, input)),
            mem.clone(),
        )?;
    }
    for (i, n) in cfg.net.iter().enumerate() {
        let name = n.id.clone().unwrap_or_else(|| format!("virtio-net{i}"));
        let net = open_net(n, destination.then_some(&mut parked_taps))?;
        net_counters.push((name.clone(), net.counters()));
        pci.add_virtio(&name, Box::new(net), mem.clone())?;
    }
    let mut socket_files = Vec::new();
    if let Some(v) = &cfg.vsock {
        let (listener, file) = crate::unix_socket::listen("--vsock", &v.socket)?;
        let vsock = virtio::vsock::Vsock::new(v.cid, &v.socket, listener)
            .map_err(|e| Error::config("--vsock", e))?;
        socket_files.push(file);
        log::info!(
            "virtio-vsock: guest CID {}, host connections on {}",
            v.cid,
            v.socket.display()
        );
        let name = v.id.clone().unwrap_or_else(|| "virtio-vsock".into());
        pci.add_virtio(&name, Box::new(vsock), mem.clone())?;
    }
    if cfg.rng {
        pci.add_virtio(
            "virtio-rng",
            Box::new(virtio::rng::Rng::default()),
            mem.clone(),
        )?;
    }
    Ok(VirtioHostSide {
        disk_locks: locks,
        parked_taps,
        net_counters,
        socket_files,
    })
}
