//! The Arm PrimeCell UART (PL011, r1p5), as arm64 guests expect it on a
//! `virt`-like machine (`console=ttyAMA0`).
//!
//! The model is what a guest driver can observe: the transmit FIFO is
//! always empty (each byte written to UARTDR goes straight to the output),
//! the receive FIFO holds up to [`RX_FIFO_SIZE`] bytes the VMM queued, and
//! the interrupt registers follow the TRM (raw status, mask, masked status,
//! clear). The interrupt line is an edge on an irqfd: it fires whenever an
//! enabled interrupt becomes active, and Linux's handler loops until the
//! masked status reads zero. The AMBA identification registers read as a
//! PL011 r1p5 so the guest's AMBA bus binds the driver. Every offset and
//! access width is accepted; unknown registers read 0 and ignore writes.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Receive FIFO depth (PL011 r1p5).
pub const RX_FIFO_SIZE: usize = 32;

const DR: u64 = 0x000;
const RSR_ECR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;
/// UARTPeriphID0..3 then UARTPCellID0..3, one byte per word from 0xfe0.
const ID_REGS: u64 = 0xfe0;
const IDS: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

const FR_RXFE: u32 = 1 << 4;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;
/// Receive interrupt.
const INT_RX: u32 = 1 << 4;
/// Transmit interrupt.
const INT_TX: u32 = 1 << 5;
/// Every interrupt bit of RIS/IMSC/ICR.
const INT_ALL: u32 = 0x7ff;

/// Where the guest's output goes.
pub type Pl011Output = Box<dyn Write + Send>;

/// A PL011 on the MMIO bus.
pub struct Pl011 {
    interrupt: EventFd,
    input_wanted: Arc<EventFd>,
    out: Pl011Output,
    rx: VecDeque<u8>,
    ris: u32,
    imsc: u32,
    /// The masked status when the line last fired (edge detection).
    signalled: u32,
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    dmacr: u32,
}

/// Saved PL011 registers and receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pl011State {
    /// Bytes the guest has not read.
    pub rx: Vec<u8>,
    /// UARTRIS.
    pub ris: u32,
    /// UARTIMSC.
    pub imsc: u32,
    /// The masked status when the line last fired.
    pub signalled: u32,
    /// UARTILPR.
    pub ilpr: u32,
    /// UARTIBRD.
    pub ibrd: u32,
    /// UARTFBRD.
    pub fbrd: u32,
    /// UARTLCR_H.
    pub lcr_h: u32,
    /// UARTCR.
    pub cr: u32,
    /// UARTIFLS.
    pub ifls: u32,
    /// UARTDMACR.
    pub dmacr: u32,
}

impl Pl011 {
    /// The registers and unread input, for a snapshot.
    pub fn state(&self) -> Pl011State {
        Pl011State {
            rx: self.rx.iter().copied().collect(),
            ris: self.ris,
            imsc: self.imsc,
            signalled: self.signalled,
            ilpr: self.ilpr,
            ibrd: self.ibrd,
            fbrd: self.fbrd,
            lcr_h: self.lcr_h,
            cr: self.cr,
            ifls: self.ifls,
            dmacr: self.dmacr,
        }
    }

    /// Restores saved registers (the FIFO must fit).
    pub fn restore(&mut self, st: &Pl011State) -> Result<(), String> {
        if st.rx.len() > RX_FIFO_SIZE {
            return Err(format!(
                "PL011: {} bytes in a {RX_FIFO_SIZE}-byte FIFO",
                st.rx.len()
            ));
        }
        self.rx = st.rx.iter().copied().collect();
        self.ris = st.ris;
        self.imsc = st.imsc;
        self.signalled = st.signalled;
        self.ilpr = st.ilpr;
        self.ibrd = st.ibrd;
        self.fbrd = st.fbrd;
        self.lcr_h = st.lcr_h;
        self.cr = st.cr;
        self.ifls = st.ifls;
        self.dmacr = st.dmacr;
        Ok(())
    }

    /// A UART that raises `interrupt` and writes to `out`; `input_wanted`
    /// fires when the guest empties the receive FIFO.
    pub fn new(interrupt: EventFd, input_wanted: Arc<EventFd>, out: Pl011Output) -> Self {
        Self {
            interrupt,
            input_wanted,
            out,
            rx: VecDeque::with_capacity(RX_FIFO_SIZE),
            ris: 0,
            imsc: 0,
            signalled: 0,
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            // UARTEN off, TXE and RXE on: the reset value.
            cr: 0x300,
            ifls: 0x12,
            dmacr: 0,
        }
    }

    /// Queues bytes for the guest; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.input_room());
        self.rx.extend(&bytes[..n]);
        if n > 0 {
            self.ris |= INT_RX;
            self.update_interrupt();
        }
        n
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        RX_FIFO_SIZE - self.rx.len()
    }

    /// Fires the line when an enabled interrupt became active.
    fn update_interrupt(&mut self) {
        let mis = self.ris & self.imsc;
        if mis & !self.signalled != 0 {
            if let Err(e) = self.interrupt.write(1) {
                crate::warn_ratelimited!("pl011: cannot raise the interrupt: {e}");
            }
        }
        self.signalled = mis;
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() >= RX_FIFO_SIZE {
            fr |= FR_RXFF;
        }
        fr
    }

    fn read_data(&mut self) -> u32 {
        let byte = self.rx.pop_front();
        if self.rx.is_empty() {
            self.ris &= !INT_RX;
            if byte.is_some() {
                let _ = self.input_wanted.write(1);
            }
        }
        self.update_interrupt();
        byte.map_or(0, u32::from)
    }

    fn write_data(&mut self, byte: u8) {
        if let Err(e) = self.out.write_all(&[byte]).and_then(|()| self.out.flush()) {
            crate::warn_ratelimited!("pl011: output lost: {e}");
        }
        self.ris |= INT_TX;
        self.update_interrupt();
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            DR => self.read_data(),
            RSR_ECR => 0,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris,
            MIS => self.ris & self.imsc,
            DMACR => self.dmacr,
            ID_REGS..=0xffc if offset.is_multiple_of(4) => {
                u32::from(IDS[((offset - ID_REGS) / 4) as usize])
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            DR => self.write_data(v as u8),
            RSR_ECR => {}
            ILPR => self.ilpr = v & 0xff,
            IBRD => self.ibrd = v & 0xffff,
            FBRD => self.fbrd = v & 0x3f,
            LCR_H => self.lcr_h = v & 0xff,
            CR => self.cr = v & 0xff87,
            IFLS => self.ifls = v & 0x3f,
            IMSC => {
                self.imsc = v & INT_ALL;
                self.update_interrupt();
            }
            ICR => {
                self.ris &= !(v & INT_ALL);
                // Data still waiting keeps the receive interrupt raised.
                if !self.rx.is_empty() {
                    self.ris |= INT_RX;
                }
                self.update_interrupt();
            }
            DMACR => self.dmacr = v & 0x7,
            _ => {}
        }
    }
}

/// The register at `offset` with a little-endian access of up to 4 bytes
/// (guests use 16- or 32-bit accesses); empty, wider or unaligned accesses
/// read 0 and write nothing.
fn word_access(offset: u64, len: usize) -> Option<u64> {
    ((1..=4).contains(&len) && offset.is_multiple_of(4) && offset < 0x1000).then_some(offset)
}

impl BusDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(reg) = word_access(offset, data.len()) {
            let v = self.read_reg(reg).to_le_bytes();
            let n = data.len();
            data.copy_from_slice(&v[..n]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(reg) = word_access(offset, data.len()) {
            let mut v = [0u8; 4];
            v[..data.len()].copy_from_slice(data);
            self.write_reg(reg, u32::from_le_bytes(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_output::Shared;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn uart() -> (Pl011, EventFd, Arc<EventFd>, Shared) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let wanted = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let out = Shared::default();
        let dev = Pl011::new(
            irq.try_clone().unwrap(),
            wanted.clone(),
            Box::new(out.clone()),
        );
        (dev, irq, wanted, out)
    }

    fn rd(d: &mut Pl011, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(d: &mut Pl011, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    #[test]
    fn a_restored_pl011_reads_on_where_the_saved_one_was() {
        let (mut d, ..) = uart();
        wr(&mut d, IBRD, 13);
        wr(&mut d, LCR_H, 0x70);
        wr(&mut d, IMSC, INT_RX);
        d.enqueue_input(b"ab");
        assert_eq!(rd(&mut d, DR) & 0xff, u32::from(b'a'));
        let st = d.state();
        let (mut fresh, ..) = uart();
        fresh.restore(&st).unwrap();
        assert_eq!(rd(&mut fresh, IBRD), 13);
        assert_eq!(rd(&mut fresh, LCR_H), 0x70);
        assert_eq!(rd(&mut fresh, MIS) & INT_RX, INT_RX, "RX still pending");
        assert_eq!(rd(&mut fresh, DR) & 0xff, u32::from(b'b'));
        let mut big = st;
        big.rx = vec![0; RX_FIFO_SIZE + 1];
        assert!(fresh.restore(&big).is_err());
    }

    #[test]
    fn identifies_as_a_pl011_primecell() {
        let (mut d, ..) = uart();
        let ids: Vec<u32> = (0..8).map(|i| rd(&mut d, 0xfe0 + 4 * i)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn transmit_reaches_the_writer_and_raises_tx_when_enabled() {
        let (mut d, irq, _w, out) = uart();
        d.write(DR, &[b'h', 0]); // 16-bit access, as Linux's driver does
        wr(&mut d, DR, u32::from(b'i'));
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert_eq!(rd(&mut d, FR) & FR_TXFE, FR_TXFE);
        assert!(irq.read().is_err(), "TX is masked: no interrupt");
        wr(&mut d, IMSC, INT_TX);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(rd(&mut d, MIS), INT_TX);
        wr(&mut d, ICR, INT_TX);
        assert_eq!(rd(&mut d, MIS), 0);
    }

    #[test]
    fn receive_interrupt_stays_until_the_fifo_is_drained() {
        let (mut d, irq, wanted, _out) = uart();
        wr(&mut d, IMSC, INT_RX);
        assert_eq!(rd(&mut d, FR) & FR_RXFE, FR_RXFE);
        assert_eq!(d.enqueue_input(b"ab"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(rd(&mut d, MIS), INT_RX);
        wr(&mut d, ICR, INT_RX);
        assert_eq!(rd(&mut d, RIS) & INT_RX, INT_RX, "data still waiting");
        assert_eq!(rd(&mut d, DR), u32::from(b'a'));
        assert!(wanted.read().is_err(), "not drained yet");
        assert_eq!(rd(&mut d, DR), u32::from(b'b'));
        assert_eq!(wanted.read().unwrap(), 1);
        assert_eq!(rd(&mut d, RIS) & INT_RX, 0);
        assert_eq!(rd(&mut d, DR), 0, "empty FIFO reads 0");
        d.enqueue_input(b"c");
        assert_eq!(irq.read().unwrap(), 1, "a new edge for new data");
    }

    #[test]
    fn the_fifo_is_bounded() {
        let (mut d, ..) = uart();
        assert_eq!(d.enqueue_input(&[b'x'; 1000]), RX_FIFO_SIZE);
        assert_eq!(d.input_room(), 0);
        assert_eq!(rd(&mut d, FR) & FR_RXFF, FR_RXFF);
        assert_eq!(d.enqueue_input(b"y"), 0);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let (mut d, _irq, _w, out) = uart();
        let mut b = [0xffu8; 8];
        d.read(DR, &mut b);
        assert_eq!(b, [0; 8]);
        d.write(DR + 1, b"x");
        d.write(0x1_0000, b"x");
        d.write(DR, &[]);
        d.read(0xffe, &mut [0u8; 2]);
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(rd(&mut d, CR), 0x300);
    }
}
