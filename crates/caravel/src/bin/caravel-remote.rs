//! `caravel-remote`: control a running Caravel through its API socket.

use std::process::ExitCode;

use caravel::remote::{run, RemoteArgs};
use clap::Parser;

fn main() -> ExitCode {
    let args = RemoteArgs::parse();
    let outcome = run(&args);
    if outcome.status == 0 {
        if !outcome.text.is_empty() {
            println!("{}", outcome.text);
        }
    } else {
        eprintln!("{}", outcome.text);
    }
    ExitCode::from(outcome.status as u8)
}
