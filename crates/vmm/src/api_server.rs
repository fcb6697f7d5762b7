//! The control API server: one thread accepting HTTP requests on a Unix
//! socket and one thread per connection (at most [`MAX_CONNECTIONS`] at a
//! time; more are answered 503 at once), so a slow client delays nobody
//! else. A client has [`CLIENT_TIMEOUT`] for its whole request, however it
//! trickles it in. Read-only requests are answered from shared state;
//! requests that change the VM are handed to the VMM's event loop and
//! answered when done.

use std::io::{BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use api::http::{self, Method, Request, Response};
use api::types::{VmInfoResponse, VmState, VmmPingResponse};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{Error, Result};

/// How long a client may take to send its whole request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more get 503 without a thread.
pub const MAX_CONNECTIONS: usize = 16;
/// How long the server waits for the VMM to carry out a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `vm.snapshot` may take before the client hears 504.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a migration may take (sending, or waiting for a source and
/// receiving) before the client hears 504.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// State the API reads without involving the VMM thread.
#[derive(Debug, Clone)]
pub struct ApiShared {
    /// Lifecycle state.
    pub state: VmState,
    /// Boots so far.
    pub boot_count: u64,
    /// The configuration as JSON.
    pub config: serde_json::Value,
    /// The VM's devices.
    pub devices: Vec<api::types::DeviceInfo>,
    /// Boot RAM in bytes.
    pub boot_size: u64,
    /// The running VM's virtio-mem device.
    pub memory_device: Option<virtio::mem::MemHandle>,
    /// The running VM's KVM statistics (`vm.counters`).
    pub kvm_stats: Option<Arc<crate::kvm_stats::KvmStats>>,
    /// The running VM's port I/O and MMIO access counts by device range
    /// (`vm.counters` groups `pio` and `mmio`).
    pub bus_counts: Option<(devices::bus::BusCounts, devices::bus::BusCounts)>,
    /// Console output dropped because the host did not read (`vm.counters`).
    pub output_dropped: Option<OutputDropped>,
    /// The current or last live migration.
    pub migration: Option<api::types::MigrationInfo>,
    /// The running VM's network cards' counters (`vm.counters`), by name.
    pub net_counters: Vec<(String, Arc<virtio::net::NetCounters>)>,
    /// The running VM's virtio-balloon device.
    pub balloon: Option<virtio::balloon::BalloonHandle>,
    /// The running VM's memory autopilot.
    pub autosize: Option<Arc<crate::autosize::Autopilot>>,
}

impl ApiShared {
    /// Whether a migration is under way (the VM must not change meanwhile).
    pub fn migrating(&self) -> bool {
        use api::types::MigrationPhase::*;
        self.migration
            .as_ref()
            .is_some_and(|m| matches!(m.phase, Setup | Precopy | Stopped))
    }
}

/// Counters of console bytes the host did not take (the buffer was full).
#[derive(Debug, Clone)]
pub struct OutputDropped {
    /// COM1 / PL011 output, over all boots.
    pub serial: Arc<std::sync::atomic::AtomicU64>,
    /// virtio-console output, this boot.
    pub console: Arc<std::sync::atomic::AtomicU64>,
}

impl ApiShared {
    /// The memory section of `vm.info`.
    pub fn memory_info(&self) -> api::types::MemoryInfo {
        let hotplug = self.memory_device.as_ref().map(|m| {
            let i = m.info();
            api::types::HotplugInfo {
                addr: i.geometry.addr,
                region_size: i.geometry.region_size,
                block_size: i.geometry.block_size,
                usable_region_size: i.usable_region_size,
                requested_size: i.requested_size,
                plugged_size: i.plugged_size,
                driver_active: i.driver_active,
            }
        });
        let balloon = self.balloon.as_ref().map(|b| {
            let i = b.info();
            api::types::BalloonInfo {
                size: i.target,
                actual: i.actual,
                deflate_on_oom: i.options.deflate_on_oom,
                free_page_reporting: i.options.free_page_reporting,
                stats_interval: i.options.stats_interval.as_secs(),
                driver_active: i.driver_active,
            }
        });
        api::types::MemoryInfo {
            boot_size: self.boot_size,
            hotplug,
            balloon,
            autosize: self
                .autosize
                .as_ref()
                .and_then(|a| serde_json::to_value(a.status()).ok()),
        }
    }
}

/// A request the VMM's event loop must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCommand {
    /// Stop the VM and exit (`vm.shutdown`, `vmm.shutdown`).
    Shutdown,
    /// Stop the vCPUs, keep the VM (`vm.pause`).
    Pause,
    /// Start the vCPUs of a paused VM again (`vm.resume`).
    Resume,
    /// Save the paused VM into a directory (`vm.snapshot`).
    Snapshot {
        /// `file:///DIR`.
        destination_url: String,
    },
    /// Set total guest RAM and/or the balloon's size (`vm.resize`).
    Resize {
        /// Boot RAM plus hotplugged memory, in bytes.
        desired_ram: Option<u64>,
        /// Bytes the balloon should hold.
        desired_balloon: Option<u64>,
    },
    /// Live-migrate the VM to another Caravel (`vm.send-migration`).
    SendMigration(crate::migration::send::SendOptions),
    /// Wait for a migrating VM and run it (`vm.receive-migration`).
    ReceiveMigration(crate::migration::Endpoint),
}

/// A command with the channel its response goes to.
pub type PendingCommand = (ApiCommand, SyncSender<Response>);

/// The VMM's end: commands arrive here and `wake` becomes readable.
pub struct ApiCommands {
    /// Incoming commands.
    pub rx: Receiver<PendingCommand>,
    /// Signalled after each command is queued.
    pub wake: Arc<EventFd>,
}

/// A running server; dropping it stops its threads and removes the socket.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

/// The connection threads, with a handle on each socket to cut it at stop.
#[derive(Default)]
struct Connections {
    live: Mutex<Vec<(JoinHandle<()>, UnixStream)>>,
}

impl Connections {
    /// Joins finished connection threads; returns how many still run.
    fn reap(&self) -> usize {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let (done, running): (Vec<_>, Vec<_>) = live.drain(..).partition(|(t, _)| t.is_finished());
        *live = running;
        drop(live);
        for (t, _) in done {
            let _ = t.join();
        }
        self.live.lock().map_or(0, |l| l.len())
    }

    /// Cuts every connection and joins its thread.
    fn stop_all(&self) {
        let live: Vec<_> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        // Answers already handed to a connection (vm.shutdown's, or
        // vm.send-migration's before the source exits) get a moment to be
        // written before the sockets are cut.
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while live.iter().any(|(t, _)| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (t, s) in live {
            let _ = s.shutdown(std::net::Shutdown::Both);
            let _ = t.join();
        }
    }
}

impl ApiServer {
    /// Binds `path` and starts serving. An existing socket nobody listens
    /// on (left by a killed Caravel) is replaced; anything else there is an
    /// error.
    pub fn start(path: &Path, shared: Arc<Mutex<ApiShared>>) -> Result<(Self, ApiCommands)> {
        crate::unix_socket::claim_path("--api-socket", path)?;
        let listener = UnixListener::bind(path).map_err(|e| {
            Error::config(
                "--api-socket",
                format!("cannot listen on {}: {e}", path.display()),
            )
        })?;
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(Error::io("eventfd"))?);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = ServerContext {
            shared,
            tx,
            wake: wake.clone(),
        };
        let stop2 = stop.clone();
        let connections = Arc::new(Connections::default());
        let conns = connections.clone();
        let ctx = Arc::new(ctx);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Api);
                serve(listener, ctx, stop2, &conns)
            })
            .map_err(Error::io("cannot start the API thread"))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                stop,
                thread: Some(thread),
                connections,
            },
            ApiCommands { rx, wake },
        ))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.connections.stop_all();
        let _ = std::fs::remove_file(&self.path);
    }
}

struct ServerContext {
    shared: Arc<Mutex<ApiShared>>,
    tx: Sender<PendingCommand>,
    wake: Arc<EventFd>,
}

fn serve(
    listener: UnixListener,
    ctx: Arc<ServerContext>,
    stop: Arc<AtomicBool>,
    conns: &Connections,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                devices::warn_ratelimited!("api: accept failed: {e}");
                continue;
            }
        };
        if conns.reap() >= MAX_CONNECTIONS {
            devices::warn_ratelimited!("api: {MAX_CONNECTIONS} connections busy; refusing one");
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let mut w = &stream;
            let _ = http::write_response(
                &mut w,
                &Response::error(503, "too many API connections at once; retry"),
            );
            continue;
        }
        let (Ok(handle), ctx) = (stream.try_clone(), ctx.clone()) else {
            continue;
        };
        match std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Api);
                handle_connection(stream, &ctx)
            }) {
            Ok(t) => conns
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((t, handle)),
            Err(e) => devices::warn_ratelimited!("api: cannot start a connection thread: {e}"),
        }
    }
}

/// Reads from a socket until a deadline for the whole request: each read
/// waits at most for the time left, so a client that trickles bytes cannot
/// hold its connection past [`CLIENT_TIMEOUT`].
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: std::time::Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

fn handle_connection(stream: UnixStream, ctx: &ServerContext) {
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let reader = DeadlineReader {
        stream: &stream,
        deadline: std::time::Instant::now() + CLIENT_TIMEOUT,
    };
    let response = match http::read_request(&mut BufReader::new(reader)) {
        Ok(req) => route(&req, ctx),
        Err(e) => {
            devices::warn_ratelimited!("api: bad request: {e}");
            Response::error(e.status(), &e.to_string())
        }
    };
    let mut w = &stream;
    let _ = http::write_response(&mut w, &response);
    // The server keeps a clone of the socket (to cut it at stop): close the
    // connection explicitly so the client sees the end now.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => Response::json(b),
        Err(e) => Response::error(500, &e.to_string()),
    }
}

fn send_command(ctx: &ServerContext, cmd: ApiCommand) -> Response {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let shutdown = cmd == ApiCommand::Shutdown;
    // Writing a snapshot takes as long as the disk needs for guest memory.
    let timeout = match cmd {
        ApiCommand::Snapshot { .. } => SNAPSHOT_TIMEOUT,
        ApiCommand::SendMigration(_) | ApiCommand::ReceiveMigration(_) => MIGRATION_TIMEOUT,
        _ => COMMAND_TIMEOUT,
    };
    // A shutdown that finds the VM already stopped (a second, concurrent
    // vm.shutdown) has what it asked for.
    let stopped = || {
        ctx.shared
            .lock()
            .is_ok_and(|s| s.state == VmState::Shutdown)
    };
    if ctx.tx.send((cmd, reply_tx)).is_err() {
        return if shutdown {
            Response::no_content()
        } else {
            Response::error(503, "the VMM is shutting down")
        };
    }
    let _ = ctx.wake.write(1);
    match reply_rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) if shutdown && stopped() => Response::no_content(),
        Err(mpsc::RecvTimeoutError::Disconnected) if shutdown => Response::no_content(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Response::error(503, "the VMM stopped before completing the request")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Response::error(504, "the VMM did not complete the request in time")
        }
    }
}

fn send_migration(ctx: &ServerContext, body: &[u8]) -> Response {
    use crate::migration::send::{SendOptions, DEFAULT_DOWNTIME, DEFAULT_MAX_ITERATIONS};
    let d = match api::types::from_json_object::<api::types::VmSendMigrationData>(body) {
        Ok(d) => d,
        Err(e) => {
            return Response::error(
                400,
                &format!(
                    "vm.send-migration body: {e} (expected {{\"destination_url\": \"unix:/path\"}})"
                ),
            )
        }
    };
    let to = match crate::migration::Endpoint::parse("destination_url", &d.destination_url) {
        Ok(to) => to,
        Err(e) => return Response::error(400, &e.to_string()),
    };
    if d.max_iterations == Some(0) {
        return Response::error(400, "max_iterations must be at least 1");
    }
    send_command(
        ctx,
        ApiCommand::SendMigration(SendOptions {
            to,
            local: d.local,
            downtime: d
                .downtime_ms
                .map_or(DEFAULT_DOWNTIME, Duration::from_millis),
            max_iterations: d.max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS),
        }),
    )
}

/// `vm.balloon-stats`: the balloon's sizes and the guest's latest memory
/// statistics, in Firecracker's shape.
fn balloon_stats(ctx: &ServerContext) -> Response {
    let balloon = ctx
        .shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .balloon
        .clone();
    let Some(b) = balloon else {
        return Response::error(
            400,
            "the VM has no balloon (start it with --balloon size=SIZE,stats_interval=SECONDS)",
        );
    };
    let info = b.info();
    if info.options.stats_interval.is_zero() {
        return Response::error(
            400,
            "the balloon has no statistics: start the VM with --balloon ...,stats_interval=SECONDS",
        );
    }
    let Some((guest, age)) = b.stats() else {
        return Response::error(
            503,
            "no statistics from the guest yet (its balloon driver has not sent any)",
        );
    };
    let guest = match serde_json::to_value(guest) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
            .collect(),
        _ => Default::default(),
    };
    let page = virtio::balloon::PAGE_SIZE;
    json(&api::types::BalloonStats {
        target_pages: info.target / page,
        actual_pages: info.actual / page,
        target_mib: info.target >> 20,
        actual_mib: info.actual >> 20,
        age_ms: age.as_millis() as u64,
        guest,
    })
}

/// Known endpoints and the method each accepts (`docs/api.yaml` lists the
/// same; a test compares them).
pub const ENDPOINTS: &[(&str, Method)] = &[
    ("vmm.ping", Method::Get),
    ("vm.info", Method::Get),
    ("vm.counters", Method::Get),
    ("vm.balloon-stats", Method::Get),
    ("vm.shutdown", Method::Put),
    ("vm.pause", Method::Put),
    ("vm.resume", Method::Put),
    ("vm.resize", Method::Put),
    ("vm.snapshot", Method::Put),
    ("vm.send-migration", Method::Put),
    ("vm.receive-migration", Method::Put),
    ("vmm.shutdown", Method::Put),
];

fn route(req: &Request, ctx: &ServerContext) -> Response {
    let Some(endpoint) = req.path.strip_prefix(api::API_PREFIX) else {
        return Response::error(404, "unknown path; endpoints live under /api/v1/");
    };
    let Some((_, method)) = ENDPOINTS.iter().find(|(name, _)| *name == endpoint) else {
        return Response::error(404, &format!("unknown endpoint '{endpoint}'"));
    };
    if *method != req.method {
        return Response::error(405, &format!("{endpoint} takes {}", method.as_str()));
    }
    match endpoint {
        "vmm.ping" => json(&VmmPingResponse {
            build_version: format!("caravel {}", env!("CARGO_PKG_VERSION")),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: i64::from(std::process::id()),
            features: vec![],
        }),
        "vm.info" => {
            let s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let memory = s.memory_info();
            let plugged = memory.hotplug.as_ref().map_or(0, |h| h.plugged_size);
            json(&VmInfoResponse {
                config: s.config,
                state: s.state,
                memory_actual_size: s.boot_size + plugged,
                boot_count: s.boot_count,
                devices: s.devices,
                memory,
                migration: s.migration,
            })
        }
        "vm.counters" => {
            // Cloud Hypervisor's shape: {group: {counter: value}}; the group
            // here is "kvm", KVM's vCPU statistics summed over vCPUs.
            let (stats, dropped, nets, buses, balloon) = {
                let s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
                (
                    s.kvm_stats.clone(),
                    s.output_dropped.clone(),
                    s.net_counters.clone(),
                    s.bus_counts.clone(),
                    s.balloon.clone(),
                )
            };
            let mut counters = api::types::VmCounters::new();
            if let Some(s) = stats {
                counters.insert("kvm".into(), s.sum());
            }
            // Accesses by device range and unclaimed address: on a vCPU's
            // buses each one is a KVM exit.
            for (group, bus) in buses
                .iter()
                .flat_map(|(pio, mmio)| [("pio", pio), ("mmio", mmio)])
            {
                let snap = bus.snapshot();
                if !snap.is_empty() {
                    counters.insert(group.into(), snap.into_iter().collect());
                }
            }
            if let Some(d) = dropped {
                let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                counters.insert(
                    "console".into(),
                    [
                        ("serial_dropped_bytes".to_string(), load(&d.serial)),
                        ("virtio_console_dropped_bytes".to_string(), load(&d.console)),
                    ]
                    .into_iter()
                    .collect(),
                );
            }
            if let Some(b) = balloon {
                let c = b.counters();
                counters.insert(
                    "balloon".into(),
                    [
                        ("inflated_pages", c.inflated_pages.get()),
                        ("deflated_pages", c.deflated_pages.get()),
                        ("refused_pages", c.refused_pages.get()),
                        ("reported_bytes", c.reported_bytes.get()),
                        ("refused_report_bytes", c.refused_report_bytes.get()),
                        ("stats_updates", c.stats_updates.get()),
                        ("bad_buffers", c.bad_buffers.get()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                );
            }
            for (name, c) in nets {
                counters.insert(
                    name,
                    [
                        ("rx_frames", c.rx_frames.get()),
                        ("rx_bytes", c.rx_bytes.get()),
                        ("rx_dropped", c.rx_dropped.get()),
                        ("tx_frames", c.tx_frames.get()),
                        ("tx_bytes", c.tx_bytes.get()),
                        ("tx_dropped", c.tx_dropped.get()),
                        ("bad_chains", c.bad_chains.get()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                );
            }
            json(&counters)
        }
        "vm.balloon-stats" => balloon_stats(ctx),
        "vm.pause"
        | "vm.resume"
        | "vm.resize"
        | "vm.snapshot"
        | "vm.send-migration"
        | "vm.receive-migration"
            if ctx
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .migrating() =>
        {
            Response::error(
                409,
                &format!("{endpoint}: a migration is under way (see vm.info's migration)"),
            )
        }
        "vm.shutdown" | "vmm.shutdown" => send_command(ctx, ApiCommand::Shutdown),
        "vm.pause" => send_command(ctx, ApiCommand::Pause),
        "vm.resume" => send_command(ctx, ApiCommand::Resume),
        "vm.snapshot" => {
            match api::types::from_json_object::<api::types::VmSnapshotConfig>(&req.body) {
                Err(e) => Response::error(
                    400,
                    &format!(
                        "vm.snapshot body: {e} (expected {{\"destination_url\": \"file:///DIR\"}})"
                    ),
                ),
                Ok(c) => send_command(
                    ctx,
                    ApiCommand::Snapshot {
                        destination_url: c.destination_url,
                    },
                ),
            }
        }
        "vm.send-migration" => send_migration(ctx, &req.body),
        "vm.receive-migration" => {
            match api::types::from_json_object::<api::types::VmReceiveMigrationData>(&req.body) {
                Err(e) => Response::error(
                    400,
                    &format!(
                        "vm.receive-migration body: {e} (expected {{\"receiver_url\": \"unix:/path\"}})"
                    ),
                ),
                Ok(d) => match crate::migration::Endpoint::parse("receiver_url", &d.receiver_url) {
                    Err(e) => Response::error(400, &e.to_string()),
                    Ok(at) => send_command(ctx, ApiCommand::ReceiveMigration(at)),
                },
            }
        }
        "vm.resize" => match api::types::from_json_object::<api::types::VmResizeRequest>(&req.body)
        {
            Err(e) => Response::error(
                400,
                &format!(
                    "vm.resize body: {e} (expected {{\"desired_ram\": BYTES}} and/or {{\"desired_balloon\": BYTES}})"
                ),
            ),
            Ok(r) if r.desired_vcpus.is_some() => {
                Response::error(400, "desired_vcpus: Caravel has no vCPU hotplug")
            }
            Ok(api::types::VmResizeRequest {
                desired_ram: None,
                desired_balloon: None,
                ..
            }) => Response::error(400, "vm.resize needs desired_ram or desired_balloon"),
            Ok(r) => send_command(
                ctx,
                ApiCommand::Resize {
                    desired_ram: r.desired_ram,
                    desired_balloon: r.desired_balloon,
                },
            ),
        },
        _ => Response::error(404, "unknown endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::client;

    fn shared() -> Arc<Mutex<ApiShared>> {
        Arc::new(Mutex::new(ApiShared {
            state: VmState::Running,
            boot_count: 1,
            boot_size: 256 << 20,
            memory_device: None,
            kvm_stats: None,
            bus_counts: None,
            output_dropped: None,
            migration: None,
            net_counters: Vec::new(),
            balloon: None,
            autosize: None,
            config: serde_json::json!({"cpus": {"boot_vcpus": 2}}),
            devices: vec![],
        }))
    }

    fn socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("caravel-api-{name}-{}.sock", std::process::id()))
    }

    fn call(path: &Path, m: Method, p: &str) -> Response {
        client::request(path, m, p, None, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn ping_info_and_errors() {
        let path = socket("basic");
        let (server, _cmds) = ApiServer::start(&path, shared()).unwrap();
        let r = call(&path, Method::Get, "/api/v1/vmm.ping");
        assert_eq!(r.status, 200);
        let ping: VmmPingResponse = serde_json::from_slice(&r.body.unwrap()).unwrap();
        assert_eq!(ping.pid, i64::from(std::process::id()));
        let r = call(&path, Method::Get, "/api/v1/vm.info");
        let info: VmInfoResponse = serde_json::from_slice(&r.body.unwrap()).unwrap();
        assert_eq!(
            (info.state, info.boot_count, info.memory_actual_size),
            (VmState::Running, 1, 256 << 20)
        );
        assert_eq!(info.config["cpus"]["boot_vcpus"], 2);
        let r = call(&path, Method::Get, "/api/v1/vm.counters");
        assert_eq!(
            (r.status, r.body),
            (200, Some(b"{}".to_vec())),
            "no VM, no counters"
        );
        assert_eq!(call(&path, Method::Put, "/api/v1/vm.info").status, 405);
        assert_eq!(call(&path, Method::Get, "/api/v1/nope").status, 404);
        assert_eq!(call(&path, Method::Get, "/other").status, 404);
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }

    #[test]
    fn counters_carry_bus_accesses_by_range() {
        struct Nop;
        impl devices::bus::BusDevice for Nop {
            fn read(&mut self, _: u64, data: &mut [u8]) {
                data.fill(0);
            }
            fn write(&mut self, _: u64, _: &[u8]) {}
        }
        let path = socket("counters");
        let sh = shared();
        let (pio, mmio) = (devices::bus::Bus::new(), devices::bus::Bus::new());
        pio.insert(Arc::new(Mutex::new(Nop)), 0x3f8, 8).unwrap();
        pio.write(0x3f8, b"x");
        pio.write(0x3f8, b"y");
        pio.write(0x80, &[0]);
        sh.lock().unwrap().bus_counts = Some((pio.counts(), mmio.counts()));
        let (_server, _cmds) = ApiServer::start(&path, sh).unwrap();
        let r = call(&path, Method::Get, "/api/v1/vm.counters");
        let v: serde_json::Value = serde_json::from_slice(&r.body.unwrap()).unwrap();
        assert_eq!(v["pio"]["0x3f8+0x8"], 2, "{v}");
        assert_eq!(v["pio"]["unclaimed 0x80"], 1, "{v}");
        assert!(
            v.get("mmio").is_none(),
            "an untouched bus has no group: {v}"
        );
    }

    #[test]
    fn garbage_gets_an_http_error_and_the_server_survives() {
        use std::io::{Read, Write};
        let path = socket("garbage");
        let (_server, _cmds) = ApiServer::start(&path, shared()).unwrap();
        for junk in [
            &b"\x00\x01\x02\r\n\r\n"[..],
            &vec![b'A'; 100_000][..],
            b"PUT / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
        ] {
            let mut s = UnixStream::connect(&path).unwrap();
            let _ = s.write_all(junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            assert!(out.starts_with("HTTP/1.1 4"), "got {out:?}");
        }
        assert_eq!(call(&path, Method::Get, "/api/v1/vmm.ping").status, 200);
    }

    #[test]
    fn shutdown_goes_through_the_vmm_and_waits_for_it() {
        let path = socket("shutdown");
        let (_server, cmds) = ApiServer::start(&path, shared()).unwrap();
        let vmm = std::thread::spawn(move || {
            let (cmd, reply) = cmds.rx.recv().unwrap();
            // The wake-up is written just after the command is queued.
            let woke = (0..1000).any(|_| {
                cmds.wake.read().is_ok() || {
                    std::thread::sleep(Duration::from_millis(1));
                    false
                }
            });
            assert!(woke, "the VMM thread is woken for each command");
            reply.send(Response::no_content()).unwrap();
            cmd
        });
        assert_eq!(call(&path, Method::Put, "/api/v1/vm.shutdown").status, 204);
        assert_eq!(vmm.join().unwrap(), ApiCommand::Shutdown);
    }

    /// The OpenAPI file lists exactly the endpoints and methods the router
    /// serves, so the two cannot drift.
    #[test]
    fn the_openapi_file_matches_the_router() {
        let yaml = include_str!("../../../docs/api.yaml");
        let mut documented = Vec::new();
        let mut path: Option<String> = None;
        let mut in_paths = false;
        for line in yaml.lines() {
            if !line.starts_with(' ') {
                in_paths = line.starts_with("paths:");
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                path = Some(p.to_string());
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                if let Some(m) = m.strip_suffix(':').filter(|m| !m.starts_with(' ')) {
                    documented.push((p.clone(), m.to_uppercase()));
                }
            }
        }
        let mut routed: Vec<_> = ENDPOINTS
            .iter()
            .map(|(p, m)| (p.to_string(), m.as_str().to_string()))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(
            documented, routed,
            "docs/api.yaml vs the router's ENDPOINTS"
        );
    }

    #[test]
    fn pause_and_resume_go_through_the_vmm() {
        let path = socket("pause");
        let (_server, cmds) = ApiServer::start(&path, shared()).unwrap();
        let vmm = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (cmd, reply) = cmds.rx.recv().unwrap();
                reply.send(Response::no_content()).unwrap();
                seen.push(cmd);
            }
            seen
        });
        assert_eq!(call(&path, Method::Put, "/api/v1/vm.pause").status, 204);
        assert_eq!(call(&path, Method::Put, "/api/v1/vm.resume").status, 204);
        assert_eq!(
            vmm.join().unwrap(),
            vec![ApiCommand::Pause, ApiCommand::Resume]
        );
        assert_eq!(call(&path, Method::Get, "/api/v1/vm.pause").status, 405);
    }

    #[test]
    fn an_existing_file_or_live_socket_is_a_config_error() {
        let path = socket("exists");
        std::fs::write(&path, b"").unwrap();
        let err = ApiServer::start(&path, shared()).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(err.is_config_error());
        assert!(err.to_string().starts_with("--api-socket:"), "{err}");
        assert!(err.to_string().contains("not a socket"), "{err}");
        let (_live, _cmds) = ApiServer::start(&path, shared()).unwrap();
        let err = ApiServer::start(&path, shared()).err().unwrap();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    #[test]
    fn a_stale_socket_left_by_a_killed_caravel_is_replaced() {
        let path = socket("stale");
        let _ = std::fs::remove_file(&path);
        drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
        assert!(path.exists());
        let (_server, _cmds) = ApiServer::start(&path, shared()).unwrap();
        assert_eq!(call(&path, Method::Get, "/api/v1/vmm.ping").status, 200);
    }

    #[test]
    fn silent_clients_do_not_delay_others() {
        let path = socket("silent");
        let (_server, _cmds) = ApiServer::start(&path, shared()).unwrap();
        // More silent connections than the server serves at once.
        let silent: Vec<_> = (0..MAX_CONNECTIONS + 4)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // The busy cap answers newcomers at once; once a slot frees (the
        // silent ones time out), a ping goes through. Either way nobody
        // waits for a silent client's 5 s more than once.
        let start = std::time::Instant::now();
        let r = client::request(
            &path,
            Method::Get,
            "/api/v1/vmm.ping",
            None,
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(r.status == 200 || r.status == 503, "{}", r.status);
        assert!(start.elapsed() < CLIENT_TIMEOUT + Duration::from_secs(2));
        drop(silent);
        // With the silent clients gone (their threads end as they see EOF),
        // pings are answered again.
        let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
        let mut status = 0;
        while status != 200 && std::time::Instant::now() < deadline {
            status = call(&path, Method::Get, "/api/v1/vmm.ping").status;
            if status != 200 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(status, 200);
    }

    #[test]
    fn a_trickling_client_is_cut_at_the_whole_request_deadline() {
        use std::io::Write;
        let path = socket("trickle");
        let (_server, _cmds) = ApiServer::start(&path, shared()).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        let start = std::time::Instant::now();
        let request =
            b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        // One byte every 250 ms would take ~20 s; the server stops
        // listening after CLIENT_TIMEOUT.
        let mut cut = false;
        for b in request {
            if s.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            if start.elapsed() > CLIENT_TIMEOUT + Duration::from_secs(3) {
                break;
            }
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            cut || out.starts_with("HTTP/1.1 4"),
            "the server kept a trickling client: {out:?}"
        );
        assert!(start.elapsed() < CLIENT_TIMEOUT + Duration::from_secs(4));
    }

    #[test]
    fn a_second_shutdown_after_the_vm_stopped_is_not_a_timeout() {
        let path = socket("shutdown2");
        let sh = shared();
        let (_server, cmds) = ApiServer::start(&path, sh.clone()).unwrap();
        // The VMM answers the first shutdown, then stops and drops its end.
        let vmm = std::thread::spawn(move || {
            let (_, reply) = cmds.rx.recv().unwrap();
            sh.lock().unwrap().state = VmState::Shutdown;
            reply.send(Response::no_content()).unwrap();
            drop(cmds);
        });
        assert_eq!(call(&path, Method::Put, "/api/v1/vm.shutdown").status, 204);
        vmm.join().unwrap();
        assert_eq!(call(&path, Method::Put, "/api/v1/vm.shutdown").status, 204);
    }

    /// A test backend that takes everything.
    struct TakeAll;
    impl virtio::balloon::BalloonBackend for TakeAll {
        fn discard(&self, _: u64, _: u64) -> std::result::Result<(), virtio::balloon::Refusal> {
            Ok(())
        }
    }

    #[test]
    fn balloon_stats_and_resize_say_what_is_missing() {
        let sh = shared();
        let (tx, rx) = mpsc::channel();
        let ctx = ServerContext {
            shared: sh.clone(),
            tx,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        };
        let req = |method: Method, path: &str, body: &[u8]| Request {
            method,
            path: format!("{}{path}", api::API_PREFIX),
            body: body.to_vec(),
        };
        let stats = || route(&req(Method::Get, "vm.balloon-stats", b""), &ctx);
        let r = stats();
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body.unwrap()).contains("has no balloon"));
        let with = |interval: u64| {
            let b = virtio::balloon::Balloon::new(
                virtio::balloon::BalloonOptions {
                    stats_interval: Duration::from_secs(interval),
                    ..Default::default()
                },
                4 << 20,
                Arc::new(TakeAll),
            )
            .unwrap();
            sh.lock().unwrap().balloon = Some(b.handle());
            b
        };
        let _b = with(0);
        let r = stats();
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body.unwrap()).contains("stats_interval"));
        let _b = with(1);
        assert_eq!(stats().status, 503, "no figures from the guest yet");
        let info = sh.lock().unwrap().memory_info();
        assert_eq!(info.balloon.unwrap().size, 4 << 20);
        for (body, want) in [
            (&br#"{"desired_vcpus": 2}"#[..], "desired_vcpus"),
            (b"{}", "needs desired_ram or desired_balloon"),
        ] {
            let r = route(&req(Method::Put, "vm.resize", body), &ctx);
            assert_eq!(r.status, 400);
            assert!(String::from_utf8_lossy(&r.body.unwrap()).contains(want));
        }
        // A balloon size goes to the VMM as it is.
        std::thread::spawn(move || {
            let (cmd, reply) = rx.recv().unwrap();
            assert_eq!(
                cmd,
                ApiCommand::Resize {
                    desired_ram: None,
                    desired_balloon: Some(1 << 20)
                }
            );
            reply.send(Response::no_content()).unwrap();
        });
        let r = route(
            &req(Method::Put, "vm.resize", br#"{"desired_balloon": 1048576}"#),
            &ctx,
        );
        assert_eq!(r.status, 204);
    }

    #[test]
    fn changes_to_the_vm_are_refused_while_it_migrates() {
        let sh = shared();
        sh.lock().unwrap().migration = Some(api::types::MigrationInfo {
            phase: api::types::MigrationPhase::Precopy,
            ..crate::migration::empty_info("source")
        });
        let (tx, _rx) = mpsc::channel();
        let ctx = ServerContext {
            shared: sh.clone(),
            tx,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        };
        let put = |path: &str, body: &[u8]| Request {
            method: Method::Put,
            path: format!("{}{path}", api::API_PREFIX),
            body: body.to_vec(),
        };
        for (endpoint, body) in [
            ("vm.resize", &br#"{"desired_ram": 536870912}"#[..]),
            ("vm.pause", b""),
            ("vm.snapshot", br#"{"destination_url": "file:///tmp/x"}"#),
            (
                "vm.send-migration",
                br#"{"destination_url": "unix:/tmp/m"}"#,
            ),
        ] {
            let r = route(&put(endpoint, body), &ctx);
            assert_eq!(r.status, 409, "{endpoint}");
        }
        // Done: allowed again (the command then goes to the VMM, absent here).
        sh.lock().unwrap().migration.as_mut().unwrap().phase = api::types::MigrationPhase::Failed;
        assert!(!sh.lock().unwrap().migrating());
    }
}
