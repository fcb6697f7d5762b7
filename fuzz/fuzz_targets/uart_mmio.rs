//! Fuzzes the console UARTs (PL011 and 16550) with guest register accesses
//! of every width at any offset, interleaved with host input: no panic, the
//! receive FIFO stays bounded, and a drained PL011 reports an empty FIFO.
#![no_main]

use std::sync::Arc;

use devices::pl011::RX_FIFO_SIZE;
use devices::serial::SerialDevice;
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn uart(pl011: bool) -> SerialDevice {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let wanted = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let out = Box::new(std::io::sink());
    if pl011 {
        SerialDevice::new_pl011(irq, wanted, out)
    } else {
        SerialDevice::new(irq, wanted, out)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let pl011 = first & 1 == 1;
    let mut dev = uart(pl011);
    let capacity = dev.input_room();
    for op in ops.chunks_exact(8) {
        let len = [0usize, 1, 2, 4, 8][usize::from(op[0] % 5)];
        let off = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&op[4..8]);
        match op[0] >> 5 {
            0..=2 => dev.write(off, &buf[..len]),
            3..=5 => dev.read(off, &mut buf[..len]),
            _ => {
                let n = usize::from(op[3]);
                dev.enqueue_input(&vec![op[4]; n]);
            }
        }
        assert!(dev.input_room() <= capacity, "receive FIFO grew");
    }
    if pl011 {
        assert_eq!(capacity, RX_FIFO_SIZE);
        // Drain through the data register; then the flags say empty.
        for _ in 0..RX_FIFO_SIZE {
            dev.read(0, &mut [0u8; 4]);
        }
        let mut fr = [0u8; 4];
        dev.read(0x18, &mut fr);
        assert_ne!(fr[0] & 0x10, 0, "RXFE after draining");
        assert_eq!(dev.input_room(), RX_FIFO_SIZE);
    }
});
