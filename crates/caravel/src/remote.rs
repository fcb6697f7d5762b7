//! `caravel-remote`: a client for the control API, like Cloud Hypervisor's `ch-remote`.

use std::path::PathBuf;
use std::time::Duration;

use api::client;
use api::http::Method;
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
    /// Shut the VM down; caravel then exits with status 0.
    Shutdown,
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

/// Runs one command.
pub fn run(args: &RemoteArgs) -> Outcome {
    let (method, endpoint) = match args.command {
        Command::Ping => (Method::Get, "vmm.ping"),
        Command::Info => (Method::Get, "vm.info"),
        Command::Shutdown => (Method::Put, "vm.shutdown"),
    };
    let path = format!("{}{endpoint}", api::API_PREFIX);
    match client::request(
        &args.api_socket,
        method,
        &path,
        None,
        Duration::from_secs(args.timeout),
    ) {
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
