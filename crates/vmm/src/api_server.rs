//! The control API server: one thread accepting HTTP requests on a Unix
//! socket. Read-only requests are answered from shared state; requests that
//! change the VM are handed to the VMM's event loop and answered when done.

use std::io::BufReader;
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

/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server waits for the VMM to carry out a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Console output dropped because the host did not read (`vm.counters`).
    pub output_dropped: Option<OutputDropped>,
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
        api::types::MemoryInfo {
            boot_size: self.boot_size,
            hotplug,
        }
    }
}

/// A request the VMM's event loop must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCommand {
    /// Stop the VM and exit (`vm.shutdown`, `vmm.shutdown`).
    Shutdown,
    /// Set total guest RAM (`vm.resize`).
    Resize {
        /// Boot RAM plus hotplugged memory, in bytes.
        desired_ram: u64,
    },
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

/// A running server; dropping it stops the thread and removes the socket.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (which must not exist) and starts serving.
    pub fn start(path: &Path, shared: Arc<Mutex<ApiShared>>) -> Result<(Self, ApiCommands)> {
        if path.exists() {
            return Err(Error::config(
                "--api-socket",
                format!("{} already exists; remove it if no other caravel uses it, or choose another path", path.display()),
            ));
        }
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
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(listener, ctx, stop2))
            .map_err(Error::io("cannot start the API thread"))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                stop,
                thread: Some(thread),
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
        let _ = std::fs::remove_file(&self.path);
    }
}

struct ServerContext {
    shared: Arc<Mutex<ApiShared>>,
    tx: Sender<PendingCommand>,
    wake: Arc<EventFd>,
}

fn serve(listener: UnixListener, ctx: ServerContext, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(stream) => handle_connection(stream, &ctx),
            Err(e) => devices::warn_ratelimited!("api: accept failed: {e}"),
        }
    }
}

fn handle_connection(stream: UnixStream, ctx: &ServerContext) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let response = match http::read_request(&mut BufReader::new(&stream)) {
        Ok(req) => route(&req, ctx),
        Err(e) => {
            devices::warn_ratelimited!("api: bad request: {e}");
            Response::error(e.status(), &e.to_string())
        }
    };
    let mut w = &stream;
    let _ = http::write_response(&mut w, &response);
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => Response::json(b),
        Err(e) => Response::error(500, &e.to_string()),
    }
}

fn send_command(ctx: &ServerContext, cmd: ApiCommand) -> Response {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    if ctx.tx.send((cmd, reply_tx)).is_err() {
        return Response::error(503, "the VMM is shutting down");
    }
    let _ = ctx.wake.write(1);
    reply_rx
        .recv_timeout(COMMAND_TIMEOUT)
        .unwrap_or_else(|_| Response::error(504, "the VMM did not complete the request in time"))
}

/// Known endpoints and the method each accepts.
const ENDPOINTS: &[(&str, Method)] = &[
    ("vmm.ping", Method::Get),
    ("vm.info", Method::Get),
    ("vm.counters", Method::Get),
    ("vm.shutdown", Method::Put),
    ("vm.resize", Method::Put),
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
            })
        }
        "vm.counters" => {
            // Cloud Hypervisor's shape: {group: {counter: value}}; the group
            // here is "kvm", KVM's vCPU statistics summed over vCPUs.
            let (stats, dropped) = {
                let s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
                (s.kvm_stats.clone(), s.output_dropped.clone())
            };
            let mut counters = api::types::VmCounters::new();
            if let Some(s) = stats {
                counters.insert("kvm".into(), s.sum());
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
            json(&counters)
        }
        "vm.shutdown" | "vmm.shutdown" => send_command(ctx, ApiCommand::Shutdown),
        "vm.resize" => match serde_json::from_slice::<api::types::VmResizeRequest>(&req.body) {
            Err(e) => Response::error(
                400,
                &format!("vm.resize body: {e} (expected {{\"desired_ram\": BYTES}})"),
            ),
            Ok(r) if r.desired_vcpus.is_some() || r.desired_balloon.is_some() => Response::error(
                400,
                "only desired_ram can be resized (no vCPU hotplug or balloon in Caravel)",
            ),
            Ok(api::types::VmResizeRequest {
                desired_ram: Some(desired_ram),
                ..
            }) => send_command(ctx, ApiCommand::Resize { desired_ram }),
            Ok(_) => Response::error(400, "vm.resize needs desired_ram"),
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
            output_dropped: None,
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

    #[test]
    fn existing_path_is_a_config_error() {
        let path = socket("exists");
        std::fs::write(&path, b"").unwrap();
        let err = ApiServer::start(&path, shared()).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(err.is_config_error());
        assert!(err.to_string().starts_with("--api-socket:"));
    }
}
