//! `caravel-sriov`: see `caravel-sriov --help`.

use std::process::ExitCode;

use caravel::sriov_cli::{run, SriovArgs};
use clap::Parser;

fn main() -> ExitCode {
    match run(&SriovArgs::parse()) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("caravel-sriov: error: {e}");
            ExitCode::from(1)
        }
    }
}
