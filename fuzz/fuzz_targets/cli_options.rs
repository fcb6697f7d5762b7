//! Fuzzes the CLI option parsers (`--cpus`, `--memory`, `--disk`,
//! `--device`, `--seccomp`, `--serial`/`--console`): any string gives a value or an
//! error that names the flag.
#![no_main]

use caravel::cli;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let flag = match which % 6 {
        0 => cli::parse_cpus(s).err().map(|e| e.to_string()),
        1 => cli::parse_memory(s).err().map(|e| e.to_string()),
        2 => cli::parse_disk(s).err().map(|e| e.to_string()),
        3 => cli::parse_device(s).err().map(|e| e.to_string()),
        4 => cli::parse_seccomp(s).err().map(|e| e.to_string()),
        _ => cli::parse_console("--serial", s)
            .err()
            .map(|e| e.to_string()),
    };
    if let Some(msg) = flag {
        assert!(msg.starts_with("--"), "an error that names no flag: {msg}");
    }
});
