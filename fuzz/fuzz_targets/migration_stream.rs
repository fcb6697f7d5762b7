//! Fuzzes what a migration's destination reads from its source: a byte
//! stream of frames (header, length, checksum) carrying the stream header,
//! the VM's configuration, memory and the state, fed to the receiver with
//! a VM builder that refuses (no KVM here). No panic, no unbounded
//! allocation, no hang: the receive ends with a message.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use vmm::config::{Payload, RawPayload, VmConfig};
use vmm::migration::receive::receive;
use vmm::migration::stream::{self, Hello, Kind};

/// Reads the fuzz input, discards what the receiver answers.
struct Wire<'a>(&'a [u8]);

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // Half the inputs start with a valid Hello, so the fuzzer reaches the
    // frames after it without having to find a checksum first.
    let mut input = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 1) {
        stream::write_json(&mut input, Kind::Hello, &Hello::ours(false)).unwrap();
        input.extend_from_slice(&data[1..]);
    } else {
        input.extend_from_slice(data);
    }
    let host = VmConfig::new(Payload::Raw(RawPayload {
        segments: Vec::new(),
        entry: 0,
    }));
    let mut refuse = |_: &VmConfig, _| Err(vmm::Error::Migration("no VM in the fuzzer".into()));
    let mut no_fds = |_| Err(std::io::Error::other("no memory files in the fuzzer"));
    let err = receive(&mut Wire(&input), &host, &mut refuse, &mut no_fds, &|_| ());
    assert!(err.is_err(), "a fuzzed stream never yields a running VM");
});
