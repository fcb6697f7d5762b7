//! A target that crashes on purpose, so `scripts/fuzz --gate-test` can show
//! that scripts/fuzz fails when a target crashes (a gate must be able to
//! fail). Plain `scripts/fuzz` skips `gate_*` targets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'C') {
        panic!("gate_crash: crashing on purpose");
    }
});
