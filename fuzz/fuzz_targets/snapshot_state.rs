//! Fuzzes what a snapshot directory feeds Caravel: the bytes of a
//! `state.json` (header, length, checksum, then the state), and a
//! virtio-pci device state restored into a fresh device that is then
//! started and paused again. No panic, no unbounded allocation, and a
//! refused state leaves a message.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pci::MsixSink;
use virtio::rng::Rng;
use virtio::state::VirtioPciState;
use virtio::transport::VirtioPciDevice;
use vm_memory::GuestAddress;

struct NoSink;
impl MsixSink for NoSink {
    fn update_route(&self, _: u16, _: Option<(u64, u32)>) {}
    fn deliver(&self, _: u16) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Err(e) = vmm::snapshot::files::parse(rest) {
            assert!(!e.is_empty());
        }
        return;
    }
    let Ok(st) = serde_json::from_slice::<VirtioPciState>(rest) else {
        return;
    };
    let mem = virtio::DeviceRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let Ok(mut d) = VirtioPciDevice::new(
        "rng",
        Box::new(Rng::default()),
        virtio::DeviceMemory::new(mem),
        0x1_0000_0000,
        Arc::new(NoSink),
    ) else {
        return;
    };
    match d.restore(&st) {
        Ok(_) => {
            d.resume();
            d.pause();
            let _ = d.save();
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
