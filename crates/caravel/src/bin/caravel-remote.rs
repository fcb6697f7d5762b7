//! `caravel-remote`: control a running Caravel through its API socket.

use std::process::ExitCode;

use caravel::remote::{run, RemoteArgs};
use clap::Parser;

fn main() -> ExitCode {
    use std::io::Write;
    let args = RemoteArgs::parse();
    let outcome = run(&args);
    // Not println!: a reader that went away (`caravel-remote info | head`)
    // is not an error worth a panic.
    if outcome.status == 0 {
        if !outcome.text.is_empty() {
            let _ = writeln!(std::io::stdout(), "{}", outcome.text);
        }
    } else {
        let _ = writeln!(std::io::stderr(), "{}", outcome.text);
    }
    ExitCode::from(outcome.status as u8)
}
