//! The console UART: a 16550A (x86's COM1, backed by vm-superio) or a PL011
//! (arm64, [`crate::pl011`]), behind one interface.
//!
//! Output goes to any writer (stdout, a file, a test buffer). Input is pushed
//! by the VMM with [`SerialDevice::enqueue_input`]; when the guest drains the
//! receive FIFO the `input_wanted` event fires so the VMM resumes reading.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::pl011::Pl011;
use crate::BusDevice;

/// An [`EventFd`] usable as a vm-superio interrupt line (wired to an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Signals the VMM that the receive FIFO became empty.
#[derive(Debug)]
pub struct InputWanted(pub Arc<EventFd>);

impl SerialEvents for InputWanted {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// Where the guest's serial output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// The 16550A's registers and receive FIFO (vm-superio's `SerialState`,
/// which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ns16550State {
    /// DLL, DLM.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// Saved UART state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UartState {
    /// x86's COM1.
    Ns16550(Ns16550State),
    /// arm64's PL011.
    Pl011(crate::pl011::Pl011State),
}

/// Receive FIFO of the 16550A in vm-superio.
const NS16550_FIFO: usize = 64;

enum Uart {
    Ns16550(Serial<EventFdTrigger, InputWanted, SerialOutput>),
    Pl011(Pl011),
}

/// The console UART as a bus device.
pub struct SerialDevice {
    inner: Uart,
}

impl SerialDevice {
    /// A 16550A that raises `interrupt` and writes to `out`.
    pub fn new(interrupt: EventFd, input_wanted: Arc<EventFd>, out: SerialOutput) -> Self {
        Self {
            inner: Uart::Ns16550(Serial::with_events(
                EventFdTrigger(interrupt),
                InputWanted(input_wanted),
                out,
            )),
        }
    }

    /// A PL011 that raises `interrupt` and writes to `out`.
    pub fn new_pl011(interrupt: EventFd, input_wanted: Arc<EventFd>, out: SerialOutput) -> Self {
        Self {
            inner: Uart::Pl011(Pl011::new(interrupt, input_wanted, out)),
        }
    }

    /// Queues bytes for the guest to read; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.input_room());
        if n == 0 {
            return 0;
        }
        match &mut self.inner {
            Uart::Pl011(p) => p.enqueue_input(&bytes[..n]),
            Uart::Ns16550(s) => match s.enqueue_raw_bytes(&bytes[..n]) {
                Ok(n) => n,
                Err(e) => {
                    crate::warn_ratelimited!("serial: cannot queue input: {e:?}");
                    0
                }
            },
        }
    }

    /// The registers and unread input, for a snapshot.
    pub fn state(&self) -> UartState {
        match &self.inner {
            Uart::Pl011(p) => UartState::Pl011(p.state()),
            Uart::Ns16550(s) => {
                let st = s.state();
                UartState::Ns16550(Ns16550State {
                    baud_divisor: [st.baud_divisor_low, st.baud_divisor_high],
                    interrupt_enable: st.interrupt_enable,
                    interrupt_identification: st.interrupt_identification,
                    line_control: st.line_control,
                    line_status: st.line_status,
                    modem_control: st.modem_control,
                    modem_status: st.modem_status,
                    scratch: st.scratch,
                    in_buffer: st.in_buffer,
                })
            }
        }
    }

    /// Restores saved registers into a UART of the same kind (output and
    /// interrupt line stay this device's).
    pub fn restore(&mut self, state: &UartState) -> Result<(), String> {
        match (&mut self.inner, state) {
            (Uart::Pl011(p), UartState::Pl011(st)) => p.restore(st),
            (Uart::Ns16550(s), UartState::Ns16550(st)) => {
                if st.in_buffer.len() > NS16550_FIFO {
                    return Err(format!(
                        "serial: {} bytes in a {NS16550_FIFO}-byte FIFO",
                        st.in_buffer.len()
                    ));
                }
                let saved = vm_superio::serial::SerialState {
                    baud_divisor_low: st.baud_divisor[0],
                    baud_divisor_high: st.baud_divisor[1],
                    interrupt_enable: st.interrupt_enable,
                    interrupt_identification: st.interrupt_identification,
                    line_control: st.line_control,
                    line_status: st.line_status,
                    modem_control: st.modem_control,
                    modem_status: st.modem_status,
                    scratch: st.scratch,
                    in_buffer: st.in_buffer.clone(),
                };
                let trigger = EventFdTrigger(
                    s.interrupt_evt()
                        .0
                        .try_clone()
                        .map_err(|e| format!("serial: eventfd: {e}"))?,
                );
                let events = InputWanted(s.events().0.clone());
                let out = std::mem::replace(s.writer_mut(), Box::new(std::io::sink()));
                // Cannot fail: the FIFO length was checked above.
                *s = Serial::from_state(&saved, trigger, events, out)
                    .map_err(|e| format!("serial: {e:?}"))?;
                Ok(())
            }
            _ => Err("serial: the snapshot has another kind of UART".into()),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        match &self.inner {
            Uart::Ns16550(s) => s.fifo_capacity(),
            Uart::Pl011(p) => p.input_room(),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let s = match &mut self.inner {
            Uart::Pl011(p) => return p.read(offset, data),
            Uart::Ns16550(s) => s,
        };
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = s.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let s = match &mut self.inner {
            Uart::Pl011(p) => return p.write(offset, data),
            Uart::Ns16550(s) => s,
        };
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = s.write(off, value) {
                crate::warn_ratelimited!("serial: write to offset {off} failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_output::Shared;

    fn device() -> (SerialDevice, EventFd, Arc<EventFd>, Shared) {
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let wanted = Arc::new(EventFd::new(libc_nonblock()).unwrap());
        let out = Shared::default();
        let dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            wanted.clone(),
            Box::new(out.clone()),
        );
        (dev, irq, wanted, out)
    }

    fn libc_nonblock() -> i32 {
        0o4000 // O_NONBLOCK / EFD_NONBLOCK
    }

    #[test]
    fn transmit_reaches_the_writer() {
        let (mut dev, _irq, _w, out) = device();
        for b in b"hi" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn receive_raises_interrupt_and_asks_for_more_when_drained() {
        let (mut dev, irq, wanted, _out) = device();
        dev.write(1, &[0x01]); // IER: received data available
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        dev.read(0, &mut d);
        assert_eq!(d[0], b'a');
        dev.read(0, &mut d);
        assert_eq!(d[0], b'b');
        assert_eq!(wanted.read().unwrap(), 1, "FIFO drained");
    }

    #[test]
    fn fifo_is_bounded() {
        let (mut dev, _irq, _w, _out) = device();
        let big = [b'x'; 1000];
        let n = dev.enqueue_input(&big);
        assert!(n > 0 && n < 1000);
        assert_eq!(dev.input_room(), 0);
        assert_eq!(dev.enqueue_input(b"y"), 0);
    }

    /// Registers and unread input survive save -> restore into a fresh
    /// UART (with its own output), and the guest reads on where it was.
    #[test]
    fn a_restored_uart_reads_on_where_the_saved_one_was() {
        let (mut dev, _irq, _w, _out) = device();
        dev.write(7, &[0x5a]); // scratch
        dev.write(3, &[0x03]); // LCR: 8N1
        dev.write(1, &[0x01]); // IER
        dev.enqueue_input(b"xyz");
        let mut d = [0u8];
        dev.read(0, &mut d);
        assert_eq!(d[0], b'x');
        let st = dev.state();
        let (mut fresh, _irq2, _w2, out2) = device();
        fresh.restore(&st).unwrap();
        fresh.read(7, &mut d);
        assert_eq!(d[0], 0x5a);
        fresh.read(3, &mut d);
        assert_eq!(d[0], 0x03);
        fresh.read(0, &mut d);
        assert_eq!(d[0], b'y');
        fresh.read(0, &mut d);
        assert_eq!(d[0], b'z');
        fresh.write(0, b"!");
        assert_eq!(
            &*out2.0.lock().unwrap(),
            b"!",
            "output goes to the new writer"
        );
        let UartState::Ns16550(mut big) = st else {
            panic!("not a 16550 state")
        };
        big.in_buffer = vec![0; 65];
        assert!(fresh.restore(&UartState::Ns16550(big)).is_err());
    }

    #[test]
    fn wide_and_far_accesses_do_not_panic() {
        let (mut dev, _irq, _w, _out) = device();
        let mut d = [0u8; 8];
        dev.read(0x1_0000, &mut d);
        dev.write(0x1_0000, &[1, 2, 3, 4]);
        dev.read(7, &mut []);
        dev.write(3, &[]);
    }
}
