//! The lifecycle around VMs: console, control API, signals and reboots.
//!
//! The VMM thread runs an epoll loop over the VM's exit event, stdin (when
//! COM1 is on the terminal), the serial FIFO's "drained" event, the API's
//! command queue and the termination-signal event. A guest reset builds a
//! fresh [`Vm`] from the same configuration unless `no_reboot` is set.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use api::http::Response;
use api::types::VmState;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

use crate::api_server::{ApiCommand, ApiCommands, ApiServer, ApiShared};
use crate::config::{ConsoleConfig, VmConfig};
use crate::console::{self, RawTerminal};
use crate::events::EventMonitor;
use crate::exit::ExitReason;
use crate::vm::{RunningVm, Vm};
use crate::{Error, Result};

const TOKEN_EXIT: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_SERIAL_WANTED: u64 = 3;
const TOKEN_API: u64 = 4;
const TOKEN_SIGNAL: u64 = 5;

/// The sizes the last `vm.resize` asked for, kept for the VM a guest
/// reboot builds.
#[derive(Debug, Clone, Copy, Default)]
struct ResizeTargets {
    /// virtio-mem's requested size.
    hotplug: Option<u64>,
    /// The balloon's size.
    balloon: Option<u64>,
}

/// Raw fd of the eventfd that termination signals write to (-1: none).
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGNAL_EVENT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd that lives
        // as long as the process (it is leaked on purpose), and the buffer is
        // a valid 8-byte value on this stack frame.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The VM of the current boot: running, or paused by `vm.pause`.
enum Guest {
    Running(RunningVm),
    Paused(Vm),
}

impl Guest {
    fn vm(&self) -> &Vm {
        match self {
            Guest::Running(r) => r.vm(),
            Guest::Paused(v) => v,
        }
    }

    /// Stops everything and says why the VM stopped.
    fn stop(self) -> ExitReason {
        match self {
            Guest::Running(r) => r.stop(),
            Guest::Paused(v) => v.exit_reason().unwrap_or(ExitReason::Shutdown),
        }
    }
}

/// A snapshot to start from instead of booting (`--restore`).
struct Restore {
    dir: std::path::PathBuf,
    snapshot: crate::snapshot::files::Snapshot,
    resume: bool,
    prefault: bool,
}

/// Runs VMs for one configuration until the guest powers off, the host asks
/// it to stop, or it crashes.
pub struct Vmm {
    config: VmConfig,
    signal_event: Option<Arc<EventFd>>,
    restore: Option<Restore>,
    /// Start without a VM and wait for `vm.receive-migration`.
    incoming: bool,
}

impl Vmm {
    /// A VMM for `config`.
    pub fn new(config: VmConfig) -> Self {
        Self {
            config,
            signal_event: None,
            restore: None,
            incoming: false,
        }
    }

    /// A VMM without a VM that waits for one to arrive through
    /// `vm.receive-migration` on its API socket (`host` gives the API
    /// socket, output, sandbox and reboot policy; the VM's shape comes
    /// from the source).
    pub fn incoming(host: VmConfig) -> Self {
        Self {
            incoming: true,
            ..Self::new(host)
        }
    }

    /// A VMM that starts from the snapshot in `dir` (checked now: format,
    /// version, architecture, checksum, memory file, disk images). The VM's
    /// shape and devices come from the snapshot; output, API socket,
    /// sandbox and reboot policy from `host`. The VM comes up paused unless
    /// `resume`. Guest memory is mapped from the snapshot's memory file and
    /// read as the guest touches it, or copied in first with `prefault`.
    pub fn restore(
        host: VmConfig,
        dir: &std::path::Path,
        resume: bool,
        prefault: bool,
    ) -> Result<Self> {
        let snapshot = crate::snapshot::files::load(dir)?;
        Ok(Self {
            config: snapshot.config.apply_to(&host),
            signal_event: None,
            restore: Some(Restore {
                dir: dir.to_path_buf(),
                snapshot,
                resume,
                prefault,
            }),
            incoming: false,
        })
    }

    /// The configuration the VMM runs (for a restore: the snapshot's).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Makes SIGTERM, SIGINT and SIGHUP stop the VM cleanly (for the
    /// `caravel` binary; libraries and tests leave signals alone).
    pub fn handle_termination_signals(&mut self) -> Result<()> {
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?);
        // The handler may run at any time until exit: keep the fd open forever.
        let fd = evt.as_raw_fd();
        std::mem::forget(evt.try_clone().map_err(Error::io("eventfd"))?);
        SIGNAL_EVENT_FD.store(fd, Ordering::Relaxed);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            register_signal_handler(sig, on_terminate).map_err(|e| {
                Error::io("cannot install a signal handler")(std::io::Error::from_raw_os_error(
                    e.errno(),
                ))
            })?;
        }
        self.signal_event = Some(evt);
        Ok(())
    }

    /// Boots the guest (again after each guest reset unless `no_reboot`) and
    /// returns the final exit reason.
    pub fn run(mut self) -> Result<ExitReason> {
        let mut restore = self.restore.take();
        // Threads started from here on install their filters.
        crate::seccomp::set_mode(self.config.seccomp);
        let events = match &self.config.event_monitor {
            Some(p) => Some(Arc::new(EventMonitor::create(p).map_err(|e| {
                Error::config(
                    "--event-monitor",
                    format!("cannot create {}: {e}", p.display()),
                )
            })?)),
            None => None,
        };
        let emit = |event: &str, props: Option<serde_json::Value>| {
            if let Some(ev) = &events {
                ev.emit("vmm", event, props);
            }
        };
        emit("starting", None);

        let shared = Arc::new(Mutex::new(ApiShared {
            state: VmState::Created,
            boot_count: 0,
            config: serde_json::to_value(&self.config).unwrap_or_default(),
            devices: Vec::new(),
            boot_size: self.config.memory.size,
            memory_device: None,
            kvm_stats: None,
            bus_counts: None,
            output_dropped: None,
            migration: None,
            net_counters: Vec::new(),
            balloon: None,
            autosize: None,
        }));
        // Declared before the terminal guard so the socket is removed last
        // but the terminal is restored even if the server fails to stop.
        let api = match &self.config.api_socket {
            Some(path) => Some(ApiServer::start(path, shared.clone())?),
            None => None,
        };
        let (_api_server, api_commands) = match api {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let _raw = (self.config.serial == ConsoleConfig::Tty
            || self.config.console == ConsoleConfig::Tty)
            .then(RawTerminal::enter);
        // The sandbox: from here on this thread, and every thread it starts,
        // runs under its seccomp filter.
        crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm).map_err(Error::Seccomp)?;

        let serial_dropped = Arc::new(AtomicU64::new(0));
        // A migrated VM, already running.
        let mut arrived = None;
        if self.incoming {
            let Some(api) = api_commands.as_ref() else {
                return Err(Error::config(
                    "--api-socket",
                    "a caravel without --kernel waits for vm.receive-migration on its API socket: give --api-socket PATH",
                ));
            };
            match self.wait_for_migration(api, &shared, &events, &serial_dropped)? {
                None => {
                    shared.lock().unwrap_or_else(|e| e.into_inner()).state = VmState::Shutdown;
                    emit("shutdown", Some(serde_json::json!({"reason": "Shutdown"})));
                    return Ok(ExitReason::Shutdown);
                }
                Some(r) => {
                    self.config = r.config;
                    shared.lock().unwrap_or_else(|e| e.into_inner()).config =
                        serde_json::to_value(&self.config).unwrap_or_default();
                    emit(
                        "migrated",
                        Some(serde_json::json!({"memory_bytes": r.info.memory_bytes})),
                    );
                    arrived = Some(r.vm);
                }
            }
        }
        let cfg = &self.config;
        // The last vm.resize, carried across guest reboots.
        let mut targets = ResizeTargets {
            hotplug: match (&restore, &arrived) {
                (Some(r), _) => r.snapshot.vm.memory_device().map(|m| m.requested_size),
                (None, Some(vm)) => vm.vm().memory_device().map(|m| m.info().requested_size),
                (None, None) => None,
            },
            balloon: arrived
                .as_ref()
                .and_then(|vm| vm.vm().balloon().map(|b| b.info().target)),
        };

        loop {
            let guest = match arrived.take() {
                Some(running) => Guest::Running(running),
                None => {
                    let out = serial_output(cfg, &serial_dropped)?;
                    match restore.take() {
                        Some(r) => {
                            let vm = Vm::new_for_restore(cfg, out, events.clone())?;
                            let report = crate::snapshot::files::restore(
                                &vm,
                                &r.snapshot,
                                &r.dir,
                                r.prefault,
                            )?;
                            log::info!(
                                "restored {} ({} MiB of memory {}) in {:?}",
                                r.dir.display(),
                                report.memory_read >> 20,
                                if report.mapped { "mapped" } else { "copied" },
                                report.elapsed
                            );
                            emit(
                                "restored",
                                Some(
                                    serde_json::json!({"source": r.dir, "memory_read": report.memory_read}),
                                ),
                            );
                            // The balloon's size as it was, for the next boot.
                            if let Some(b) = vm.balloon() {
                                targets.balloon = Some(b.info().target);
                            }
                            if r.resume {
                                Guest::Running(vm.start()?)
                            } else {
                                Guest::Paused(vm)
                            }
                        }
                        None => {
                            let vm = Vm::new(cfg, out, events.clone(), targets.hotplug)?;
                            if let (Some(b), Some(size)) = (vm.balloon(), targets.balloon) {
                                // Checked when it was asked for.
                                let _ = b.set_target(size);
                            }
                            Guest::Running(vm.start()?)
                        }
                    }
                }
            };
            {
                let vm = guest.vm();
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.output_dropped = Some(crate::api_server::OutputDropped {
                    serial: serial_dropped.clone(),
                    console: vm.console_dropped(),
                });
                s.state = match guest {
                    Guest::Paused(_) => VmState::Paused,
                    Guest::Running(_) => VmState::Running,
                };
                s.boot_count += 1;
                s.devices = vm.devices();
                s.memory_device = vm.memory_device().cloned();
                s.balloon = vm.balloon().cloned();
                s.autosize = vm.autosize().cloned();
                s.kvm_stats = Some(vm.kvm_stats());
                s.bus_counts = Some(vm.bus_counts());
                s.net_counters = vm.net_counters();
            }
            emit(
                "booting",
                Some(serde_json::json!({"boot": shared.lock().map(|s| s.boot_count).unwrap_or(0)})),
            );
            let reason = self.event_loop(guest, api_commands.as_ref(), &mut targets, &shared)?;
            {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.state = VmState::Created;
                s.memory_device = None;
                s.balloon = None;
                s.autosize = None;
                s.kvm_stats = None;
                s.bus_counts = None;
                s.net_counters.clear();
            }
            match reason {
                ExitReason::Reset if !cfg.no_reboot => {
                    emit("reboot", None);
                    log::info!("guest reset: restarting the VM");
                    continue;
                }
                r => {
                    shared.lock().unwrap_or_else(|e| e.into_inner()).state = VmState::Shutdown;
                    emit(
                        "shutdown",
                        Some(serde_json::json!({"reason": format!("{r:?}")})),
                    );
                    return Ok(r);
                }
            }
        }
    }

    /// Without a VM: serves `vm.receive-migration` until a VM has arrived
    /// (returned running) or the VMM is told to stop (`None`). A failed
    /// migration is answered with its reason and the wait goes on.
    fn wait_for_migration(
        &self,
        api: &ApiCommands,
        shared: &Mutex<ApiShared>,
        events: &Option<Arc<EventMonitor>>,
        serial_dropped: &Arc<AtomicU64>,
    ) -> Result<Option<crate::migration::receive::Received>> {
        let epoll = Epoll::new().map_err(Error::io("epoll"))?;
        let add = |fd: i32, token: u64| watch(&epoll, fd, token);
        add(api.wake.as_raw_fd(), TOKEN_API).map_err(Error::io("epoll"))?;
        if let Some(sig) = &self.signal_event {
            add(sig.as_raw_fd(), TOKEN_SIGNAL).map_err(Error::io("epoll"))?;
        }
        let progress = |info: &api::types::MigrationInfo| {
            shared.lock().unwrap_or_else(|e| e.into_inner()).migration = Some(info.clone());
        };
        let mut events_buf = vec![EpollEvent::default(); 4];
        loop {
            let n = match epoll.wait(-1, &mut events_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("epoll_wait")(e)),
            };
            for ev in &events_buf[..n] {
                if ev.data() == TOKEN_SIGNAL {
                    log::info!("termination signal while waiting for a migration: exiting");
                    return Ok(None);
                }
            }
            let _ = api.wake.read();
            while let Ok((cmd, reply)) = api.rx.try_recv() {
                match cmd {
                    ApiCommand::Shutdown => {
                        let _ = reply.send(Response::no_content());
                        return Ok(None);
                    }
                    ApiCommand::ReceiveMigration(at) => {
                        let cancel = self.signal_event.as_ref().map(|e| e.as_raw_fd());
                        let mut make_vm = |cfg: &VmConfig, ram| {
                            let out = serial_output(cfg, serial_dropped)?;
                            Vm::new_for_migration(cfg, out, events.clone(), ram)
                        };
                        let result = crate::migration::Listener::bind(&at).and_then(|l| {
                            log::info!("waiting for a migration on {at:?}");
                            let conn = l.accept(cancel).map_err(Error::io("accept"))?;
                            let Some(mut conn) = conn else {
                                return Ok(None);
                            };
                            crate::migration::receive::prepare(&conn)?;
                            // A local migration's memory files arrive on
                            // the same Unix socket.
                            let fd_sock = conn.unix().and_then(|u| u.try_clone().ok());
                            let mut fds = |n| match &fd_sock {
                                Some(u) => crate::migration::recv_fds(u, n),
                                None => Err(std::io::Error::other(
                                    "memory files need a Unix socket (unix: URL)",
                                )),
                            };
                            crate::migration::receive::receive(
                                &mut conn,
                                &self.config,
                                &mut make_vm,
                                &mut fds,
                                &progress,
                            )
                            .map(Some)
                        });
                        match result {
                            Ok(Some(r)) => {
                                let _ = reply.send(json_response(&r.info));
                                return Ok(Some(r));
                            }
                            Ok(None) => {
                                let _ = reply.send(Response::error(
                                    503,
                                    "the VMM is stopping (termination signal)",
                                ));
                                return Ok(None);
                            }
                            Err(e) => {
                                log::error!("receiving a migration failed: {e}");
                                let status = if e.is_config_error() { 400 } else { 500 };
                                let _ = reply.send(Response::error(status, &e.to_string()));
                            }
                        }
                    }
                    _ => {
                        let _ = reply.send(Response::error(
                            409,
                            "there is no VM here yet: this caravel waits for one through vm.receive-migration",
                        ));
                    }
                }
            }
        }
    }

    /// `vm.send-migration`: pre-copy while the guest runs, then pause and
    /// hand over. Returns the guest (running as before if the migration
    /// failed), the answer, and whether the guest now runs elsewhere.
    fn send_migration(
        &self,
        guest: Guest,
        opts: crate::migration::send::SendOptions,
        shared: &Mutex<ApiShared>,
    ) -> Result<(Guest, Response, bool)> {
        use crate::migration::send::Session;
        let progress = |info: &api::types::MigrationInfo| {
            shared.lock().unwrap_or_else(|e| e.into_inner()).migration = Some(info.clone());
        };
        let refused = |e: Error| {
            log::error!("migration: {e}");
            // Refused before anything moved (a VM with VFIO devices is
            // refused before any progress is reported, so vm.info may still
            // show an earlier migration: start from nothing).
            let info = api::types::MigrationInfo {
                phase: api::types::MigrationPhase::Failed,
                error: Some(e.to_string()),
                ..crate::migration::empty_info("source")
            };
            progress(&info);
            Response::error(500, &e.to_string())
        };
        let mut session = match Session::start(guest.vm(), &self.config, opts, &progress) {
            Ok(s) => s,
            Err(e) => return Ok((guest, refused(e), false)),
        };
        if let Err(e) = session.precopy(guest.vm(), &progress) {
            let info = session.abandon(guest.vm(), &e, &progress);
            log::error!("migration failed during pre-copy: {e}");
            return Ok((guest, migration_error(&info), false));
        }
        let was_running = matches!(guest, Guest::Running(_));
        let paused_at = std::time::Instant::now();
        let vm = match guest {
            Guest::Running(r) => r.pause(),
            Guest::Paused(v) => v,
        };
        match session.finish(&vm, paused_at, &progress) {
            Ok(info) => {
                log::info!(
                    "migrated: {} passes, {} MiB of memory, downtime {} ms",
                    info.iterations,
                    info.memory_bytes >> 20,
                    info.downtime_ms.unwrap_or(0)
                );
                if let Some(ev) = vm.events() {
                    ev.emit(
                        "vm",
                        "migrated",
                        Some(serde_json::to_value(&info).unwrap_or_default()),
                    );
                }
                Ok((Guest::Paused(vm), json_response(&info), true))
            }
            Err(e) => {
                let info = session.abandon(&vm, &e, &progress);
                log::error!("migration failed with the guest paused, resuming it: {e}");
                let guest = if was_running {
                    Guest::Running(vm.start()?)
                } else {
                    Guest::Paused(vm)
                };
                Ok((guest, migration_error(&info), false))
            }
        }
    }

    /// Checks a `vm.resize` (both parts before either is applied) and
    /// applies it to the VM (running or paused), remembering the sizes in
    /// `targets` for the next boot.
    fn resize(
        &self,
        vm: &Vm,
        desired_ram: Option<u64>,
        desired_balloon: Option<u64>,
        targets: &mut ResizeTargets,
    ) -> std::result::Result<(), String> {
        let requested = desired_ram
            .map(|r| self.check_ram_resize(vm, r))
            .transpose()?;
        let balloon = desired_balloon
            .map(|b| self.check_balloon_resize(vm, b))
            .transpose()?;
        if let (Some(requested), Some(dev)) = (requested, vm.memory_device()) {
            dev.set_requested(requested);
            targets.hotplug = Some(requested);
            if let Some(ev) = vm.events() {
                ev.emit(
                    "memory",
                    "resize",
                    Some(serde_json::json!({ "requested_size": requested })),
                );
            }
        }
        if let (Some(size), Some(b)) = (balloon, vm.balloon()) {
            b.set_target(size)?;
            targets.balloon = Some(size);
            if let Some(ev) = vm.events() {
                ev.emit(
                    "balloon",
                    "resize",
                    Some(serde_json::json!({ "size": size })),
                );
            }
        }
        Ok(())
    }

    /// Checks `desired_balloon` against the VM: it needs a balloon, and
    /// the balloon must be smaller than the guest's memory.
    fn check_balloon_resize(&self, vm: &Vm, size: u64) -> std::result::Result<u64, String> {
        if vm.balloon().is_none() {
            return Err("this VM has no balloon (start it with --balloon size=SIZE)".into());
        }
        let cfg = &self.config.memory;
        let total = cfg.size + cfg.hotplug.map_or(0, |h| h.hotplug_size);
        if size >= total {
            return Err(format!(
                "desired_balloon {} is not less than the guest's memory ({})",
                arch::format_size(size),
                arch::format_size(total)
            ));
        }
        Ok(size)
    }

    /// Checks `desired_ram` against the VM; returns the hotplug bytes to
    /// request.
    fn check_ram_resize(&self, vm: &Vm, desired_ram: u64) -> std::result::Result<u64, String> {
        if vm.autosize().is_some() {
            return Err(
                "the memory autopilot sizes this VM (--memory ...,autosize=on): desired_ram cannot be set by hand".into(),
            );
        }
        let cfg = &self.config.memory;
        let (Some(h), Some(_)) = (cfg.hotplug, vm.memory_device()) else {
            return Err(
                "this VM has no hotplug memory (start it with --memory size=..,hotplug_size=SIZE)"
                    .into(),
            );
        };
        let fmt = arch::format_size;
        if desired_ram < cfg.size || desired_ram > cfg.size + h.hotplug_size {
            return Err(format!(
                "desired_ram {} is outside {}..={} (boot memory up to boot memory plus hotplug_size)",
                fmt(desired_ram),
                fmt(cfg.size),
                fmt(cfg.size + h.hotplug_size)
            ));
        }
        let requested = desired_ram - cfg.size;
        if !requested.is_multiple_of(h.block_size) {
            return Err(format!(
                "desired_ram must be the boot memory plus a multiple of the block size ({})",
                fmt(h.block_size)
            ));
        }
        Ok(requested)
    }

    /// `vm.snapshot`: the VM must be paused; the directory comes from a
    /// `file:///DIR` URL.
    fn snapshot(&self, guest: &Guest, url: &str) -> Response {
        let Guest::Paused(vm) = guest else {
            return Response::error(409, "the VM is running: pause it first (vm.pause)");
        };
        let dir = match crate::snapshot::files::dir_of_url("destination_url", url) {
            Ok(d) => d,
            Err(e) => return Response::error(400, &e.to_string()),
        };
        match crate::snapshot::files::save(vm, &self.config, &dir) {
            Ok(r) => {
                log::info!(
                    "snapshot in {}: state {} bytes, memory {} MiB stored of {} MiB, {:?}",
                    dir.display(),
                    r.state_bytes,
                    r.memory_stored >> 20,
                    r.memory_size >> 20,
                    r.elapsed
                );
                if let Some(ev) = vm.events() {
                    ev.emit(
                        "vm",
                        "snapshot",
                        Some(serde_json::json!({"destination": dir, "memory_stored": r.memory_stored})),
                    );
                }
                Response::no_content()
            }
            Err(e) => Response::error(500, &e.to_string()),
        }
    }

    fn event_loop(
        &self,
        mut guest: Guest,
        api: Option<&ApiCommands>,
        targets: &mut ResizeTargets,
        shared: &Mutex<ApiShared>,
    ) -> Result<ExitReason> {
        let set_state = |state: VmState| {
            shared.lock().unwrap_or_else(|e| e.into_inner()).state = state;
        };
        let epoll = Epoll::new().map_err(Error::io("epoll"))?;
        let add = |fd: i32, token: u64| watch(&epoll, fd, token);
        add(guest.vm().exit_event().as_raw_fd(), TOKEN_EXIT).map_err(Error::io("epoll"))?;
        add(
            guest.vm().serial_input_wanted().as_raw_fd(),
            TOKEN_SERIAL_WANTED,
        )
        .map_err(Error::io("epoll"))?;
        if let Some(api) = api {
            add(api.wake.as_raw_fd(), TOKEN_API).map_err(Error::io("epoll"))?;
        }
        if let Some(sig) = &self.signal_event {
            add(sig.as_raw_fd(), TOKEN_SIGNAL).map_err(Error::io("epoll"))?;
        }
        let stdin_fd = std::io::stdin().as_raw_fd();
        // Regular files and /dev/null cannot be polled: then there is no input.
        let mut stdin_polled =
            self.config.serial == ConsoleConfig::Tty && add(stdin_fd, TOKEN_STDIN).is_ok();
        let mut stdin_open = stdin_polled;
        let mut pending_replies = Vec::new();

        let mut events = vec![EpollEvent::default(); 8];
        while guest.vm().exit_reason().is_none() {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STDIN => {
                        let room = guest
                            .vm()
                            .serial()
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .input_room();
                        if room == 0 {
                            // Stop polling until the guest drains the FIFO.
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                stdin_fd,
                                EpollEvent::default(),
                            );
                            stdin_polled = false;
                            continue;
                        }
                        let mut buf = [0u8; 64];
                        match console::read_stdin(&mut buf[..room.min(64)]) {
                            Ok(0) | Err(_) => {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    stdin_fd,
                                    EpollEvent::default(),
                                );
                                stdin_polled = false;
                                stdin_open = false;
                            }
                            Ok(n) => {
                                guest
                                    .vm()
                                    .serial()
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .enqueue_input(&buf[..n]);
                            }
                        }
                    }
                    TOKEN_SERIAL_WANTED => {
                        let _ = guest.vm().serial_input_wanted().read();
                        if stdin_open && !stdin_polled {
                            stdin_polled = add(stdin_fd, TOKEN_STDIN).is_ok();
                        }
                    }
                    TOKEN_API => {
                        if let Some(api) = api {
                            let _ = api.wake.read();
                            while let Ok((cmd, reply)) = api.rx.try_recv() {
                                match cmd {
                                    ApiCommand::Shutdown => {
                                        guest.vm().request_exit(ExitReason::Shutdown);
                                        pending_replies.push(reply);
                                    }
                                    // Pause stops the vCPUs, each with its last exit
                                    // completed; devices stay. Resume starts them
                                    // again where they stopped.
                                    ApiCommand::Pause => {
                                        let r = match guest {
                                            Guest::Running(running) => {
                                                guest = Guest::Paused(running.pause());
                                                set_state(VmState::Paused);
                                                Response::no_content()
                                            }
                                            Guest::Paused(_) => {
                                                Response::error(409, "the VM is already paused")
                                            }
                                        };
                                        let _ = reply.send(r);
                                    }
                                    ApiCommand::Resume => {
                                        let r = match guest {
                                            Guest::Paused(vm) => {
                                                guest = Guest::Running(vm.start()?);
                                                set_state(VmState::Running);
                                                Response::no_content()
                                            }
                                            Guest::Running(_) => {
                                                Response::error(409, "the VM is not paused")
                                            }
                                        };
                                        let _ = reply.send(r);
                                    }
                                    ApiCommand::SendMigration(opts) => {
                                        let (g, r, migrated) =
                                            self.send_migration(guest, opts, shared)?;
                                        guest = g;
                                        let _ = reply.send(r);
                                        if migrated {
                                            guest.vm().request_exit(ExitReason::Migrated);
                                        }
                                    }
                                    ApiCommand::ReceiveMigration(_) => {
                                        let _ = reply.send(Response::error(
                                            409,
                                            "this caravel runs a VM already: receive a migration in a caravel started without --kernel",
                                        ));
                                    }
                                    ApiCommand::Snapshot { destination_url } => {
                                        let _ = reply.send(self.snapshot(&guest, &destination_url));
                                    }
                                    ApiCommand::Resize {
                                        desired_ram,
                                        desired_balloon,
                                    } => {
                                        let r = match self.resize(
                                            guest.vm(),
                                            desired_ram,
                                            desired_balloon,
                                            targets,
                                        ) {
                                            Ok(()) => Response::no_content(),
                                            Err(msg) => Response::error(400, &msg),
                                        };
                                        let _ = reply.send(r);
                                    }
                                }
                            }
                        }
                    }
                    TOKEN_SIGNAL => {
                        if let Some(sig) = &self.signal_event {
                            let _ = sig.read();
                        }
                        log::info!("termination signal: stopping the VM");
                        guest.vm().request_exit(ExitReason::Shutdown);
                    }
                    _ => {}
                }
            }
        }
        let _ = guest.vm().exit_event().read();
        let reason = guest.stop();
        for reply in pending_replies {
            let _ = reply.send(Response::no_content());
        }
        Ok(reason)
    }
}

/// Adds `fd` to `epoll`, readable events reported as `token`.
fn watch(epoll: &Epoll, fd: i32, token: u64) -> std::io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

/// COM1's output for a boot of `cfg` (`dropped` counts what the host did
/// not take).
fn serial_output(
    cfg: &VmConfig,
    dropped: &Arc<AtomicU64>,
) -> Result<devices::serial::SerialOutput> {
    console::open_output(&cfg.serial, "--serial", "serial-out", dropped.clone())
}

fn json_response<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => Response::json(b),
        Err(e) => Response::error(500, &e.to_string()),
    }
}

/// A failed migration's answer: 500 with the reason (the body's message
/// is the error, as every API error's).
fn migration_error(info: &api::types::MigrationInfo) -> Response {
    Response::error(500, info.error.as_deref().unwrap_or("migration failed"))
}
