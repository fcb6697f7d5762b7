//! `caravel-its`: inspect GICv3 ITS state (see `caravel-its dump --help`).

use std::process::ExitCode;

use caravel::its_dump::{dump, Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dump(args) => match dump(&args) {
            Ok(decoded) => {
                print!("{decoded}");
                if decoded.issues.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("caravel-its: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
