//! `caravel-remote`: a client for the control API, like Cloud Hypervisor's `ch-remote`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::client;
use api::http::Method;
use api::types::VmInfoResponse;
use clap::{Parser, Subcommand};

/// Command-line arguments of `caravel-remote`.
#[derive(Debug, Parser)]
#[command(
    name = "caravel-remote",
    version,
    about = "Control a running Caravel VM through its API socket"
)]
pub struct RemoteArgs {
    /// The VM's API socket (as given to caravel --api-socket).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,

    /// Seconds to wait for each reply.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the VMM answers (prints its version and PID as JSON).
    Ping,
    /// Print the VM's configuration and state as JSON.
    Info,
    /// Print the VM's counters as JSON: {"kvm": {...}}, KVM's vCPU
    /// statistics (exits by type, halts, ...) summed over vCPUs, and
    /// {"console": {...}}, console output dropped because the host did not read.
    Counters,
    /// Print the balloon's size and the guest's latest memory statistics
    /// as JSON (Firecracker's field names; needs --balloon ...,stats_interval=N).
    BalloonStats,
    /// Shut the VM down; caravel then exits with status 0.
    Shutdown,
    /// Pause the VM: its vCPUs stop (devices and the API stay up).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Save a paused VM into a directory (state.json and a sparse memory
    /// file); `caravel --restore source_url=URL` starts it again.
    Snapshot {
        /// Where: file:///DIR (created if missing).
        #[arg(value_name = "file:///DIR")]
        destination_url: String,
    },
    /// Live-migrate the VM to a caravel waiting in receive-migration: memory
    /// is copied while the guest runs (pre-copy), then the guest pauses for
    /// the rest and continues there; this caravel then exits 0. On any
    /// failure the guest keeps running here. Prints a line per pass on a
    /// terminal and the final figures as JSON.
    SendMigration {
        /// Where the destination listens: unix:/path or tcp:HOST:PORT.
        #[arg(value_name = "URL")]
        destination_url: String,
        /// Same-host migration: guest memory (shared=on or hugepages=on)
        /// is handed over as file descriptors over the unix: socket instead
        /// of being copied; the guest pauses only for the state.
        #[arg(long)]
        local: bool,
        /// The pause the guest may see, in milliseconds: pre-copy stops when
        /// what is left fits it.
        #[arg(long, value_name = "MS", default_value_t = 300)]
        downtime: u64,
        /// Most passes over memory before pausing the guest anyway.
        #[arg(long, value_name = "N", default_value_t = 30)]
        max_iterations: u32,
    },
    /// Wait for a migrating VM on URL and run it (on a caravel started with
    /// --api-socket and no --kernel). Returns when the VM runs here.
    ReceiveMigration {
        /// Where to listen: unix:/path or tcp:HOST:PORT (tcp:0.0.0.0:PORT for any).
        #[arg(value_name = "URL")]
        receiver_url: String,
    },
    /// Set the guest's total RAM (boot memory plus virtio-mem hotplugged
    /// memory) and/or the balloon's size.
    #[command(group = clap::ArgGroup::new("size").required(true).multiple(true).args(["memory", "balloon"]))]
    Resize {
        /// Total RAM wanted, e.g. 768M (boot size + a multiple of the block size).
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Memory the balloon should take from the guest, e.g. 256M (0 empties it).
        #[arg(long, value_name = "SIZE")]
        balloon: Option<String>,
        /// Return only when the guest has plugged (or unplugged) to the new
        /// size and its balloon holds the new size.
        #[arg(long)]
        wait: bool,
        /// Seconds --wait waits before reporting how far the guest got.
        #[arg(
            long = "wait-timeout",
            visible_alias = "timeout",
            value_name = "SECONDS",
            default_value_t = 30.0
        )]
        wait_timeout: f64,
    },
}

/// Outcome of one command: what to print and the exit status.
#[derive(Debug)]
pub struct Outcome {
    /// Text for stdout (pretty JSON) or stderr (an error).
    pub text: String,
    /// Exit status: 0 success, 1 failure.
    pub status: i32,
}

fn pretty(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

fn failure(text: String) -> Outcome {
    Outcome { text, status: 1 }
}

/// Polls `vm.info` until the plugged size equals the requested size.
fn wait_for_plug(args: &RemoteArgs, timeout: Duration) -> Outcome {
    let fmt = arch::format_size;
    let start = Instant::now();
    loop {
        let info = match client::request(
            &args.api_socket,
            Method::Get,
            "/api/v1/vm.info",
            None,
            Duration::from_secs(args.timeout),
        ) {
            Ok(r) if r.status == 200 => r
                .body
                .and_then(|b| serde_json::from_slice::<VmInfoResponse>(&b).ok()),
            _ => None,
        };
        let Some(memory) = info.map(|i| i.memory) else {
            return failure(
                "caravel-remote: cannot read vm.info while waiting (did the VM stop?)".into(),
            );
        };
        let balloon_done = memory.balloon.as_ref().is_none_or(|b| b.actual == b.size);
        if let (false, Some(b)) = (balloon_done, &memory.balloon) {
            if start.elapsed() >= timeout {
                return failure(format!(
                    "caravel-remote: timed out after {:.1} s: the balloon holds {} of {}{}",
                    timeout.as_secs_f64(),
                    fmt(b.actual),
                    fmt(b.size),
                    if b.driver_active {
                        ""
                    } else {
                        " (the guest has not started a virtio-balloon driver)"
                    }
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let Some(h) = memory.hotplug else {
            let b = memory.balloon.unwrap_or(api::types::BalloonInfo {
                size: 0,
                actual: 0,
                deflate_on_oom: false,
                free_page_reporting: false,
                stats_interval: 0,
                driver_active: false,
            });
            return Outcome {
                text: format!(
                    "balloon holds {} after {:.2} s",
                    fmt(b.actual),
                    start.elapsed().as_secs_f64()
                ),
                status: 0,
            };
        };
        if h.plugged_size == h.requested_size {
            return Outcome {
                text: format!(
                    "plugged {} (requested {}) after {:.2} s",
                    fmt(h.plugged_size),
                    fmt(h.requested_size),
                    start.elapsed().as_secs_f64()
                ),
                status: 0,
            };
        }
        if start.elapsed() >= timeout {
            let why = if !h.driver_active {
                "the guest has not started a virtio-mem driver (a kernel without CONFIG_VIRTIO_MEM, or still booting)"
            } else if h.plugged_size < h.requested_size {
                "the guest driver is running but did not plug more: is hot-added memory onlined (memhp_default_state=online_movable)?"
            } else {
                "the guest driver is running but could not unplug more: the memory is in use or not movable"
            };
            return failure(format!(
                "caravel-remote: timed out after {:.1} s: the guest plugged {} of {} requested; {why}",
                timeout.as_secs_f64(),
                fmt(h.plugged_size),
                fmt(h.requested_size)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Prints a line to stderr for each pass of a migration being sent, read
/// from `vm.info` (which the source answers while it migrates).
struct ProgressWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressWatcher {
    fn start(socket: PathBuf) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut shown = (0, None);
            while !flag.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                let Ok(r) = client::request(
                    &socket,
                    Method::Get,
                    "/api/v1/vm.info",
                    None,
                    Duration::from_secs(5),
                ) else {
                    continue;
                };
                let Some(m) = r
                    .body
                    .and_then(|b| serde_json::from_slice::<VmInfoResponse>(&b).ok())
                    .and_then(|i| i.migration)
                else {
                    continue;
                };
                let key = (m.iterations, Some(m.phase));
                if key != shown {
                    shown = key;
                    eprintln!(
                        "migration: {:?}, pass {}: {} MiB sent, {} MiB dirty ({} MiB/s dirtied, {} MiB/s sent), {:.1} s",
                        m.phase,
                        m.iterations,
                        m.memory_bytes >> 20,
                        m.dirty_bytes >> 20,
                        m.dirty_rate >> 20,
                        m.throughput >> 20,
                        m.total_ms as f64 / 1e3
                    );
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ProgressWatcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one command.
pub fn run(args: &RemoteArgs) -> Outcome {
    let mut body = None;
    let (method, endpoint) = match &args.command {
        Command::Ping => (Method::Get, "vmm.ping"),
        Command::Info => (Method::Get, "vm.info"),
        Command::Counters => (Method::Get, "vm.counters"),
        Command::BalloonStats => (Method::Get, "vm.balloon-stats"),
        Command::Shutdown => (Method::Put, "vm.shutdown"),
        Command::Pause => (Method::Put, "vm.pause"),
        Command::Resume => (Method::Put, "vm.resume"),
        Command::Snapshot { destination_url } => {
            body = Some(
                serde_json::json!({ "destination_url": destination_url })
                    .to_string()
                    .into_bytes(),
            );
            (Method::Put, "vm.snapshot")
        }
        Command::SendMigration {
            destination_url,
            local,
            downtime,
            max_iterations,
        } => {
            body = Some(
                serde_json::json!({
                    "destination_url": destination_url,
                    "local": local,
                    "downtime_ms": downtime,
                    "max_iterations": max_iterations,
                })
                .to_string()
                .into_bytes(),
            );
            (Method::Put, "vm.send-migration")
        }
        Command::ReceiveMigration { receiver_url } => {
            body = Some(
                serde_json::json!({ "receiver_url": receiver_url })
                    .to_string()
                    .into_bytes(),
            );
            (Method::Put, "vm.receive-migration")
        }
        Command::Resize {
            memory, balloon, ..
        } => {
            let mut req = serde_json::Map::new();
            for (flag, key, v) in [
                ("--memory", "desired_ram", memory),
                ("--balloon", "desired_balloon", balloon),
            ] {
                let Some(v) = v else { continue };
                match arch::parse_size(v) {
                    Ok(bytes) => {
                        req.insert(key.into(), bytes.into());
                    }
                    Err(e) => {
                        return Outcome {
                            text: format!("caravel-remote: {flag}: {e}"),
                            status: 2,
                        }
                    }
                }
            }
            body = Some(serde_json::Value::Object(req).to_string().into_bytes());
            (Method::Put, "vm.resize")
        }
    };
    let path = format!("{}{endpoint}", api::API_PREFIX);
    // Progress lines while a migration is sent, on a terminal.
    let watcher = matches!(args.command, Command::SendMigration { .. })
        .then(|| std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .filter(|&tty| tty)
        .map(|_| ProgressWatcher::start(args.api_socket.clone()));
    let result = client::request(
        &args.api_socket,
        method,
        &path,
        body.as_deref(),
        // Writing a snapshot takes as long as guest memory needs; a
        // migration as long as memory and the network need.
        Duration::from_secs(match args.command {
            Command::Snapshot { .. } => args.timeout.max(600),
            Command::SendMigration { .. } | Command::ReceiveMigration { .. } => {
                args.timeout.max(3600)
            }
            _ => args.timeout,
        }),
    );
    drop(watcher);
    if let (
        Ok(r),
        Command::Resize {
            wait: true,
            wait_timeout,
            ..
        },
    ) = (&result, &args.command)
    {
        if (200..300).contains(&r.status) {
            return wait_for_plug(args, Duration::from_secs_f64(wait_timeout.max(0.0)));
        }
    }
    match result {
        Ok(r) if (200..300).contains(&r.status) => Outcome {
            text: r.body.as_deref().map(pretty).unwrap_or_default(),
            status: 0,
        },
        Ok(r) => Outcome {
            text: format!(
                "caravel-remote: {endpoint} failed with HTTP {}: {}",
                r.status,
                r.body.as_deref().map(pretty).unwrap_or_default()
            ),
            status: 1,
        },
        Err(e) => Outcome {
            text: format!("caravel-remote: {e}"),
            status: 1,
        },
    }
}
