//! `caravel`: boot a Linux guest under KVM.

use std::process::ExitCode;

use caravel::cli::Args;
use clap::Parser;
use vmm::{ExitReason, Vmm};

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
}

fn main() -> ExitCode {
    vmm::events::process_start();
    let args = Args::parse();
    init_logging(args.verbose);
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("caravel: error: {e}");
            return ExitCode::from(2);
        }
    };
    let restore = match args.restore() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("caravel: error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut vmm = match restore {
        None if args.incoming() => Vmm::incoming(config),
        None => Vmm::new(config),
        Some(r) => match Vmm::restore(config, &r.dir, r.resume, r.prefault) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("caravel: error: cannot restore {}: {e}", r.dir.display());
                return ExitCode::from(if e.is_config_error() { 2 } else { 1 });
            }
        },
    };
    if let Err(e) = vmm.handle_termination_signals() {
        eprintln!("caravel: error: {e}");
        return ExitCode::from(1);
    }
    match vmm.run() {
        Ok(ExitReason::PowerOff)
        | Ok(ExitReason::Shutdown)
        | Ok(ExitReason::Reset)
        | Ok(ExitReason::Migrated) => ExitCode::SUCCESS,
        Ok(ExitReason::Crash(msg)) => {
            eprintln!("caravel: the guest stopped abnormally: {msg}");
            ExitCode::from(1)
        }
        Err(e) if e.is_config_error() => {
            eprintln!("caravel: error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("caravel: error: {e}");
            ExitCode::from(1)
        }
    }
}
