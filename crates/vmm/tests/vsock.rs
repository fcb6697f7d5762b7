//! virtio-vsock inside a real VM (no vCPU runs: the test plays the guest
//! driver through the device's BAR and guest memory): a host program's
//! `CONNECT` reaches the receive queue as a REQUEST, under the VMM's
//! device wiring and the worker's seccomp filter, and the socket goes away
//! with the VM.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm::config::{Payload, RawPayload, VmConfig, VsockConfig};
use vmm::Vm;

const RX_DESC: u64 = 0x20_0000;
const RX_BUFS: u64 = 0x30_0000;

#[test]
fn a_host_connect_becomes_a_request_for_the_guest() {
    if !vmm::test_support::kvm_usable("vsock") {
        return;
    }
    // The worker runs under its seccomp filter, as in caravel: a syscall
    // outside it ends this test binary with a message.
    vmm::seccomp::set_mode(vmm::seccomp::SeccompMode::Enforce);
    let dir = std::env::temp_dir().join(format!("caravel-vsock-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("v.sock");
    let mut cfg = VmConfig::new(Payload::Raw(RawPayload {
        segments: Vec::new(),
        entry: 0,
    }));
    cfg.memory.size = 64 << 20;
    cfg.vsock = Some(VsockConfig {
        cid: 7,
        socket: socket.clone(),
        id: None,
    });
    let vm = Vm::new(&cfg, Box::new(std::io::sink()), None, None).unwrap();
    let mem = vm.memory();
    // Four 4 KiB receive buffers, as the guest driver posts them.
    for i in 0..4u64 {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&(RX_BUFS + i * 0x1000).to_le_bytes());
        d[8..12].copy_from_slice(&0x1000u32.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes()); // VIRTQ_DESC_F_WRITE
        mem.write_slice(&d, GuestAddress(RX_DESC + 16 * i)).unwrap();
        mem.write_obj(i as u16, GuestAddress(RX_DESC + 0x1004 + 2 * i))
            .unwrap();
    }
    mem.write_obj(4u16, GuestAddress(RX_DESC + 0x1002)).unwrap();
    let rings: Vec<(u64, u64, u64)> = (0..3u64)
        .map(|i| {
            let base = RX_DESC + i * 0x1_0000;
            (base, base + 0x1000, base + 0x2000)
        })
        .collect();
    vmm::test_support::activate_virtio(&vm, "virtio-vsock", &rings);
    let mut host = UnixStream::connect(&socket).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(RX_DESC + 0x2002)).unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "no packet reached the receive queue"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut hdr = [0u8; 44];
    mem.read_slice(&mut hdr, GuestAddress(RX_BUFS)).unwrap();
    let dst_cid = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    let dst_port = u32::from_le_bytes(hdr[20..24].try_into().unwrap());
    let op = u16::from_le_bytes(hdr[30..32].try_into().unwrap());
    assert_eq!(
        (dst_cid, dst_port, op),
        (7, 1234, 1),
        "a REQUEST to the guest's port"
    );
    drop(vm);
    assert!(!socket.exists(), "the socket outlived the VM");
    let _ = std::fs::remove_dir_all(&dir);
}
