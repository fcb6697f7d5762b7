//! One boot of a VM: create the KVM VM, guest memory, devices and vCPUs from a
//! [`VmConfig`], then run the vCPU threads until something stops them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::serial::{SerialDevice, SerialOutput};
use devices::Bus;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::coalesced_io::CoalescedRing;
use crate::config::VmConfig;
use crate::device_memory::DeviceMemoryView;
use crate::disk_lock::DiskLock;
use crate::events::EventMonitor;
use crate::exit::{ExitReason, ExitSignal};
use crate::hotplug::DmaTargets;
use crate::interrupt::MsiRouter;
use crate::kvm_stats::KvmStats;
use crate::memslots::MemSlots;
use crate::pci_segment::PciSegment;
use crate::platform::{self, MemoryLayout};
use crate::ram_slots::RamSlots;
use crate::vcpu::{self, VcpuContext, VcpuHandle};
use crate::vm_devices;
use crate::{memory, Error, Result};
use virtio::mem::MemHandle;

/// A VM built and ready to start.
///
/// The VM owns its parts as a tree: nothing below it holds an owning
/// reference back up. Teardown ([`Drop`]) is ordered: vCPU fds close (their
/// threads were stopped by [`RunningVm`]), device workers are stopped and
/// joined, passed-through devices release their memory slots, interrupts
/// and DMA mappings, then the buses, KVM memory slots (with the VM fd) and
/// finally guest RAM go, in field order.
pub struct Vm {
    vcpus: Vec<VcpuFd>,
    /// KVM's queue of port writes that did not exit, replayed by the vCPUs.
    coalesced: Option<Arc<CoalescedRing>>,
    /// What the architecture keeps (x86: host CPU facts; aarch64: the GIC).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    arch_state: platform::Platform,
    kvm_stats: Arc<KvmStats>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pci: PciSegment,
    mem_device: Option<MemHandle>,
    balloon: Option<virtio::balloon::BalloonHandle>,
    /// The memory autopilot (`autosize=on`), fed by the balloon.
    autosize: Option<Arc<crate::autosize::Autopilot>>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_input_wanted: Arc<EventFd>,
    exit: Arc<ExitSignal>,
    events: Option<Arc<EventMonitor>>,
    ram_size: u64,
    /// Bytes of virtio-console output dropped because the host did not read.
    console_dropped: Arc<AtomicU64>,
    /// What devices see of guest memory (and what they wrote).
    view: Arc<DeviceMemoryView>,
    /// Guest RAM's KVM slots (and what vCPUs wrote).
    ram_slots: Arc<RamSlots>,
    /// The locks on the disk images.
    disk_locks: Vec<DiskLock>,
    /// A migration's destination: TAP queues kept out of the traffic until
    /// [`Vm::attach_taps`].
    parked_taps: Vec<crate::tap::ParkedQueue>,
    /// Each network card's traffic counters, by device name.
    net_counters: Vec<(String, Arc<virtio::net::NetCounters>)>,
    /// The vsock device's listening socket file, removed with the VM.
    _socket_files: Vec<crate::unix_socket::SocketFile>,
    vm_fd: Arc<VmFd>,
    ram: memory::GuestRam,
}

impl Vm {
    /// Builds the VM of `cfg` with COM1's output going to `serial_out`.
    ///
    /// `hotplug_requested` overrides the configured `hotplugged_size` (the
    /// last `vm.resize` survives guest reboots).
    pub fn new(
        cfg: &VmConfig,
        serial_out: SerialOutput,
        events: Option<Arc<EventMonitor>>,
        hotplug_requested: Option<u64>,
    ) -> Result<Self> {
        Self::build(cfg, serial_out, events, Build::Boot { hotplug_requested })
    }

    /// Builds the VM of `cfg` for a restore: devices and vCPUs as
    /// [`Vm::new`] makes them, but no payload is loaded (the kernel file
    /// need not exist); [`Vm::restore_state`] brings the rest.
    pub fn new_for_restore(
        cfg: &VmConfig,
        serial_out: SerialOutput,
        events: Option<Arc<EventMonitor>>,
    ) -> Result<Self> {
        Self::build(cfg, serial_out, events, Build::Restore)
    }

    /// Builds the VM of `cfg` for a live migration's destination around
    /// `ram` (made by [`Vm::guest_ram`] for the same `cfg`), which receives
    /// the source's memory while the source still runs. The disk images are
    /// opened but not locked (the source holds the locks until it pauses)
    /// and its TAP queues are parked: [`Vm::lock_disks`] and
    /// [`Vm::attach_taps`] before [`Vm::restore_state`].
    pub fn new_for_migration(
        cfg: &VmConfig,
        serial_out: SerialOutput,
        events: Option<Arc<EventMonitor>>,
        ram: memory::GuestRam,
    ) -> Result<Self> {
        Self::build(cfg, serial_out, events, Build::Migration(ram))
    }

    /// Maps guest memory for `cfg`: boot RAM and the virtio-mem region.
    pub fn guest_ram(cfg: &VmConfig) -> Result<memory::GuestRam> {
        let (ranges, hotplug) = Self::memory_ranges(cfg);
        memory::GuestRam::with_backing(&ranges, hotplug, backing(cfg))
    }

    /// Guest memory for `cfg` from `files`, the memfds of a VM of the same
    /// configuration (a local migration), in [`memory::GuestRam::mappings`]
    /// order.
    pub fn guest_ram_from_files(
        cfg: &VmConfig,
        files: Vec<std::fs::File>,
    ) -> Result<memory::GuestRam> {
        let (ranges, hotplug) = Self::memory_ranges(cfg);
        memory::GuestRam::from_files(&ranges, hotplug, files)
    }

    /// Boot RAM ranges and the hotplug region of `cfg`.
    fn memory_ranges(cfg: &VmConfig) -> MemoryRanges {
        let mem_layout = MemoryLayout::new(cfg.memory.size);
        let hotplug = cfg
            .memory
            .hotplug
            .map(|h| (mem_layout.hotplug_start(), h.hotplug_size));
        (mem_layout.ram_ranges(), hotplug)
    }

    fn build(
        cfg: &VmConfig,
        serial_out: SerialOutput,
        events: Option<Arc<EventMonitor>>,
        how: Build,
    ) -> Result<Self> {
        let (hotplug_requested, load_payload, destination) = match &how {
            Build::Boot { hotplug_requested } => (*hotplug_requested, true, false),
            Build::Restore => (None, false, false),
            Build::Migration(_) => (None, false, true),
        };
        let mut phases = BuildPhases::start();
        let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
        let nr_vcpus = cfg.cpus.boot_vcpus;
        let max = platform::max_vcpus(&kvm);
        if nr_vcpus == 0 || usize::from(nr_vcpus) > max {
            return Err(Error::config(
                "--cpus",
                format!("boot={nr_vcpus} is out of range: this host allows 1 to {max} vCPUs"),
            ));
        }
        let vm_fd = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
        platform::setup_vm(&kvm, &vm_fd)?;
        // vCPUs first: on aarch64 the GIC needs them before anything wires
        // an interrupt to it. Their state is set once the payload is loaded.
        let (vcpus, mut arch_state) = platform::create_vcpus(&kvm, &vm_fd, nr_vcpus)?;
        let coalesced = vcpus
            .first()
            .and_then(|v| CoalescedRing::set_up(&kvm, &vm_fd, v, platform::COALESCED_PORTS))
            .map(Arc::new);
        phases.mark("kvm");

        let mem_layout = MemoryLayout::new(cfg.memory.size);
        let backing = backing(cfg);
        let hotplug_region = cfg
            .memory
            .hotplug
            .map(|h| (mem_layout.hotplug_start(), h.hotplug_size));
        let ram = match how {
            Build::Migration(r) => r,
            _ => Self::guest_ram(cfg)?,
        };
        // Every KVM memory slot of this VM comes from here, in build order.
        let mut slots = MemSlots::new(kvm.get_nr_memslots() as u32);
        let ram_slots = Arc::new(RamSlots::new(vm_fd.clone()));
        ram.register_boot(&ram_slots, &mut slots)?;
        let memory = &ram.memory;
        phases.mark("memory");

        let exit = Arc::new(ExitSignal::new().map_err(Error::io("eventfd"))?);
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        let (serial, serial_input_wanted) = vm_devices::serial(&vm_fd, serial_out)?;
        platform::legacy_devices(&pio, &mmio, serial.clone(), exit.clone())?;

        let router = Arc::new(MsiRouter::new(vm_fd.clone(), platform::MSI_GSI_START));
        let mut pci = PciSegment::new(
            vm_fd.clone(),
            pio.clone(),
            mmio.clone(),
            &mem_layout,
            router,
        )?;
        // Devices see boot RAM and plugged virtio-mem blocks only.
        let view = Arc::new(DeviceMemoryView::new(
            &ram,
            hotplug_region.map(|(base, _)| base),
        )?);
        let console_dropped = Arc::new(AtomicU64::new(0));
        let host_side = vm_devices::add_virtio_devices(
            cfg,
            &mut pci,
            &view.memory(),
            &console_dropped,
            destination,
        )?;
        let dma_targets = DmaTargets::default();
        let mem_device = match (cfg.memory.hotplug, hotplug_region, ram.hotplug_mapping()) {
            (Some(h), Some((base, _)), Some(mapping)) => Some(vm_devices::add_memory_device(
                &mut pci,
                vm_devices::HotplugParts {
                    ram_slots: &ram_slots,
                    config: h,
                    base,
                    mapping,
                    hugetlb: backing == memory::Backing::HugeTlb,
                    requested: hotplug_requested.unwrap_or(h.hotplugged_size),
                    dma: &dma_targets,
                    view: &view,
                    events: &events,
                },
                &mut slots,
            )?),
            _ => None,
        };

        let balloon = cfg
            .balloon
            .as_ref()
            .map(|b| crate::balloon::add_balloon_device(b, &mut pci, &view, &dma_targets))
            .transpose()?;
        let autosize = match (
            cfg.memory.autosize,
            cfg.memory.hotplug,
            &mem_device,
            &balloon,
        ) {
            (Some(a), Some(h), Some(mem), Some(b)) => Some(crate::autosize::Autopilot::start(
                a,
                cfg.memory.size,
                &h,
                mem.clone(),
                b,
                events.clone(),
            )),
            (Some(_), ..) => {
                return Err(Error::config(
                    "--memory",
                    "autosize=on needs hotplug_size=SIZE and --balloon ...,stats_interval=N",
                ))
            }
            _ => None,
        };

        let boot_ram_end = hotplug_region.map_or(u64::MAX, |(base, _)| base);
        vm_devices::add_vfio_devices(
            cfg,
            &mut pci,
            memory,
            boot_ram_end,
            &dma_targets,
            &mut slots,
        )?;

        phases.mark("devices");
        if load_payload {
            platform::boot(cfg, memory, &mem_layout, &pci, &vcpus, &mut arch_state)?;
        } else {
            platform::prepare_restore(&vcpus, &mut arch_state)?;
        }
        phases.mark("payload");
        if let Some(ev) = &events {
            ev.emit("vm", "built", Some(phases.to_json()));
        }
        let kvm_stats = Arc::new(KvmStats::open(&vcpus).unwrap_or_else(|e| {
            log::warn!("no KVM statistics for vm.counters (KVM_GET_STATS_FD: {e})");
            KvmStats::default()
        }));

        Ok(Self {
            vcpus,
            coalesced,
            arch_state,
            kvm_stats,
            vm_fd,
            ram,
            pio,
            mmio,
            pci,
            mem_device,
            balloon,
            autosize,
            serial,
            serial_input_wanted,
            exit,
            events,
            ram_size: mem_layout.ram_size(),
            console_dropped,
            view,
            ram_slots,
            disk_locks: host_side.disk_locks,
            parked_taps: host_side.parked_taps,
            net_counters: host_side.net_counters,
            _socket_files: host_side.socket_files,
        })
    }

    /// The port I/O bus (tests add devices here before [`Vm::start`]).
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram.memory
    }

    /// The event monitor, if any.
    pub fn events(&self) -> Option<&Arc<EventMonitor>> {
        self.events.as_ref()
    }

    /// KVM's statistics of this VM's vCPUs.
    pub fn kvm_stats(&self) -> Arc<KvmStats> {
        self.kvm_stats.clone()
    }

    /// Port I/O and MMIO access counts by device range (`vm.counters`).
    pub fn bus_counts(&self) -> (devices::bus::BusCounts, devices::bus::BusCounts) {
        (self.pio.counts(), self.mmio.counts())
    }

    /// Each network card's traffic counters, by device name (`vm.counters`).
    pub fn net_counters(&self) -> Vec<(String, Arc<virtio::net::NetCounters>)> {
        self.net_counters.clone()
    }

    /// Bytes of virtio-console output dropped so far (the host did not read).
    pub fn console_dropped(&self) -> Arc<AtomicU64> {
        self.console_dropped.clone()
    }

    /// The virtio-mem device, if the VM has a hotplug region.
    pub fn memory_device(&self) -> Option<&MemHandle> {
        self.mem_device.as_ref()
    }

    /// The virtio-balloon device, if the VM has one.
    pub fn balloon(&self) -> Option<&virtio::balloon::BalloonHandle> {
        self.balloon.as_ref()
    }

    /// The memory autopilot, if `autosize=on`.
    pub fn autosize(&self) -> Option<&Arc<crate::autosize::Autopilot>> {
        self.autosize.as_ref()
    }

    /// The PCI devices: `(name, PCI address)`.
    pub fn devices(&self) -> Vec<api::types::DeviceInfo> {
        let virtio = self.pci.virtio_devices().iter().map(|(n, d, _)| (n, d));
        let vfio = self.pci.vfio_devices().iter().map(|(n, d, _)| (n, d));
        virtio
            .chain(vfio)
            .map(|(name, devfn)| api::types::DeviceInfo {
                id: name.clone(),
                pci_bdf: devfn.to_string(),
            })
            .collect()
    }

    /// Guest address of BAR0 of the virtio device named `id` (as in
    /// [`Vm::devices`]), for tests that drive a device as a driver would.
    pub fn virtio_bar0(&self, id: &str) -> Option<u64> {
        self.pci
            .virtio_devices()
            .iter()
            .find(|(name, _, _)| name == id)
            .map(|(_, _, dev)| dev.lock().unwrap_or_else(|e| e.into_inner()).bar_addr())
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm_fd
    }

    /// Becomes readable when the VM wants to stop (also while paused).
    pub fn exit_event(&self) -> &EventFd {
        self.exit.event()
    }

    /// The reason recorded so far, if any.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.get()
    }

    /// Asks the VM to stop with `reason` (unless it already has one).
    pub fn request_exit(&self, reason: ExitReason) {
        self.exit.set(reason);
    }

    /// COM1, for feeding input.
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        &self.serial
    }

    /// Becomes readable when COM1's receive FIFO has drained.
    pub fn serial_input_wanted(&self) -> &EventFd {
        &self.serial_input_wanted
    }

    /// Starts one thread per vCPU (again after [`RunningVm::pause`]: the
    /// vCPUs continue where they stopped).
    pub fn start(mut self) -> Result<RunningVm> {
        // Devices paused with the VM (or restored) continue first.
        self.pci.resume_devices();
        // On an early return the threads started so far are stopped (Drop).
        let mut threads = VcpuThreads {
            handles: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            let ctx = VcpuContext {
                id: id as u8,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit: self.exit.clone(),
                stop: threads.stop.clone(),
                events: self.events.clone(),
                coalesced: self.coalesced.clone(),
            };
            let h = vcpu::spawn(fd, ctx).map_err(Error::io("cannot start a vCPU thread"))?;
            threads.handles.push(h);
        }
        Ok(RunningVm { threads, vm: self })
    }
}

/// How long each step of [`Vm::build`] took, for the event monitor's
/// `built` event: `kvm` (KVM, the VM, its vCPUs), `memory` (guest RAM mapped
/// and registered), `devices` (legacy, PCI, virtio, VFIO), `payload`
/// (kernel, initramfs, ACPI tables or FDT, vCPU registers).
struct BuildPhases {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl BuildPhases {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }

    /// `{"kvm_us": N, "memory_us": N, ...}` (keys in serde_json's order).
    fn to_json(&self) -> serde_json::Value {
        self.done
            .iter()
            .map(|(p, d)| (format!("{p}_us"), serde_json::json!(d.as_micros() as u64)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Boot RAM ranges and the hotplug region, each (guest address, size).
type MemoryRanges = (Vec<(u64, u64)>, Option<(u64, u64)>);

/// How [`Vm::build`] makes a VM.
enum Build {
    /// A fresh boot (`hotplug_requested` overrides `hotplugged_size`).
    Boot { hotplug_requested: Option<u64> },
    /// For a restore: no payload.
    Restore,
    /// For a migration's destination: no payload, this memory, disk locks
    /// left for later.
    Migration(memory::GuestRam),
}

/// What backs guest memory for `cfg`.
fn backing(cfg: &VmConfig) -> memory::Backing {
    match (cfg.memory.shared, cfg.memory.hugepages) {
        (_, true) => memory::Backing::HugeTlb,
        (true, false) => memory::Backing::Shared,
        (false, false) => memory::Backing::Anonymous,
    }
}

/// What a live migration uses of a VM.
impl Vm {
    /// Guest RAM with its host mappings.
    pub fn ram(&self) -> &memory::GuestRam {
        &self.ram
    }

    /// Guest RAM's KVM slots, with their dirty logging.
    pub(crate) fn ram_slots(&self) -> &RamSlots {
        &self.ram_slots
    }

    /// The devices' view of guest memory, with their dirty bitmaps.
    pub(crate) fn device_view(&self) -> &DeviceMemoryView {
        &self.view
    }

    /// Names of the passed-through devices (they cannot be migrated).
    pub fn vfio_names(&self) -> Vec<String> {
        self.pci
            .vfio_devices()
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    /// Gives up the locks on the disk images (a paused VM whose
    /// migration's destination opens them next).
    pub fn release_disks(&self) {
        self.disk_locks.iter().for_each(DiskLock::release);
    }

    /// Takes the disk locks (again, after a failed migration; or at a
    /// migration's destination once the source has given them up).
    pub fn lock_disks(&self) -> Result<()> {
        self.disk_locks.iter().try_for_each(DiskLock::lock)
    }

    /// A migration's destination, once the source has paused: its TAP
    /// queues join the TAP's traffic (they were parked since the build).
    pub fn attach_taps(&self) -> Result<()> {
        self.parked_taps
            .iter()
            .try_for_each(|q| q.attach().map_err(|e| Error::config("--net", e)))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.vcpus.clear();
        self.pci.shutdown();
        // The virtio-mem device's handle keeps the hotplug backend (memory
        // slots, DMA targets) alive; the device itself stopped above.
        self.mem_device = None;
    }
}

impl Vm {
    /// Saves a paused VM ([`RunningVm::pause`]): vCPUs, the in-kernel
    /// interrupt controllers and clock, the UART and every virtio device;
    /// with guest memory ([`Vm::memory`]) that is the whole VM. A VM with a
    /// passed-through device is refused by the device's name.
    pub fn snapshot(&self) -> Result<crate::snapshot::VmState> {
        if self.vcpus.is_empty() {
            return Err(Error::Snapshot(
                "the VM is running: pause it first (RunningVm::pause)".into(),
            ));
        }
        let devices = self.pci.save_devices()?;
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state();
        #[cfg(target_arch = "x86_64")]
        let arch = crate::x86_64::snapshot::save(&self.vm_fd, &self.vcpus)?;
        #[cfg(target_arch = "aarch64")]
        let arch = self.arch_state.save(&self.vcpus)?;
        Ok(crate::snapshot::VmState {
            version: crate::snapshot::STATE_VERSION,
            arch,
            serial,
            devices,
        })
    }

    /// Restores a snapshot into this VM, built from the same configuration
    /// and not started: guest memory is copied from `memory` (the saved
    /// VM's), then [`Vm::restore_state`].
    pub fn restore(&self, st: &crate::snapshot::VmState, memory: &GuestMemoryMmap) -> Result<()> {
        memory::copy_guest_memory(memory, &self.ram.memory).map_err(Error::Snapshot)?;
        self.restore_state(st)
    }

    /// Restores a snapshot's state into this VM, built from the same
    /// configuration, not started, and already holding the snapshot's
    /// guest memory: devices first (virtio-mem maps its plugged blocks when
    /// the VM starts), the UART, then vCPUs and interrupt controllers in
    /// KVM's order. The devices continue when the VM starts.
    pub fn restore_state(&self, st: &crate::snapshot::VmState) -> Result<()> {
        st.check_version()?;
        self.pci.restore_devices(&st.devices)?;
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&st.serial)
            .map_err(Error::Snapshot)?;
        #[cfg(target_arch = "x86_64")]
        crate::x86_64::snapshot::restore(&self.vm_fd, &self.vcpus, &st.arch)?;
        #[cfg(target_arch = "aarch64")]
        self.arch_state
            .restore(&self.vcpus, &st.arch, &self.ram.memory)?;
        Ok(())
    }
}

#[cfg(target_arch = "aarch64")]
impl Vm {
    /// Saves the ITS of a paused VM ([`RunningVm::pause`]): tables and
    /// pending LPIs into guest memory, registers returned.
    pub fn its_save(&self) -> Result<platform::ItsState> {
        self.arch_state.save_its()
    }

    /// Restores a saved ITS into this VM (built with the same configuration
    /// and holding the snapshot's guest memory), before it starts.
    pub fn its_restore(&self, st: &platform::ItsState) -> Result<()> {
        self.arch_state.restore_its(st, &self.ram.memory)
    }
}

/// The vCPU threads of a running VM; dropping it stops and joins them.
struct VcpuThreads {
    handles: Vec<VcpuHandle>,
    stop: Arc<AtomicBool>,
}

impl VcpuThreads {
    /// Stops the threads (if still running) and returns their vCPU fds.
    fn stop(&mut self) -> Vec<VcpuFd> {
        self.stop.store(true, Ordering::Release);
        vcpu::stop_all(std::mem::take(&mut self.handles))
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        drop(self.stop());
    }
}

/// A VM whose vCPUs are running.
///
/// Dropping it (on any path, errors included) stops and joins the vCPU
/// threads before the [`Vm`] itself is torn down: `threads` is declared
/// first, and fields drop in declaration order.
pub struct RunningVm {
    threads: VcpuThreads,
    vm: Vm,
}

impl RunningVm {
    /// The eventfd that becomes readable when the VM wants to stop.
    pub fn exit_event(&self) -> &EventFd {
        self.vm.exit_event()
    }

    /// The reason recorded so far, if any.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.vm.exit_reason()
    }

    /// Asks the VM to stop with `reason` (unless it already has one).
    pub fn request_exit(&self, reason: ExitReason) {
        self.vm.request_exit(reason);
    }

    /// COM1, for feeding input.
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice>> {
        self.vm.serial()
    }

    /// Becomes readable when COM1's receive FIFO has drained.
    pub fn serial_input_wanted(&self) -> &EventFd {
        self.vm.serial_input_wanted()
    }

    /// Boot RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.vm.ram_size
    }

    /// The VM (buses, memory) while it runs.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Stops all vCPUs, tears the VM down and returns why it stopped.
    pub fn stop(mut self) -> ExitReason {
        drop(self.threads.stop());
        self.vm.exit_reason().unwrap_or(ExitReason::Shutdown)
    }

    /// Stops the vCPU threads and the device workers but keeps the VM
    /// (memory, devices with their queues, KVM state and the vCPUs, each
    /// with its last exit completed) for a snapshot or inspection: nothing
    /// changes guest memory until [`Vm::start`].
    pub fn pause(mut self) -> Vm {
        let mut vcpus = self.threads.stop();
        vcpus.iter_mut().for_each(vcpu::complete_pending_exit);
        self.vm.pci.pause_devices();
        let mut vm = self.vm;
        vm.vcpus = vcpus;
        vm
    }

    /// Blocks until the VM wants to stop, then stops it (tests use this).
    pub fn wait(self, timeout: std::time::Duration) -> ExitReason {
        let deadline = std::time::Instant::now() + timeout;
        while self.exit_reason().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.exit_reason().is_none() {
            self.request_exit(ExitReason::Crash(format!("test timeout after {timeout:?}")));
        }
        self.stop()
    }
}
