//! The i8042 keyboard controller, reduced to its reset line (0xfe to port 0x64).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::{BusDevice, GuestRequest, GuestRequestSink};

/// Turns the controller's reset trigger into a [`GuestRequest::Reset`].
pub struct ResetLine(Arc<dyn GuestRequestSink>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(GuestRequest::Reset);
        Ok(())
    }
}

/// The controller at ports 0x60-0x64 (insert with length 5).
pub struct I8042 {
    inner: I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller whose reset line goes to `sink`.
    pub fn new(sink: Arc<dyn GuestRequestSink>) -> Self {
        Self {
            inner: I8042Device::new(ResetLine(sink)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = self.inner.write(off, v);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Requests(pub Mutex<Vec<GuestRequest>>);
    impl GuestRequestSink for Requests {
        fn request(&self, r: GuestRequest) {
            self.0.lock().unwrap().push(r);
        }
    }

    #[test]
    fn reset_command_requests_reset() {
        let sink = Arc::new(Requests::default());
        let mut dev = I8042::new(sink.clone());
        dev.write(0, &[0xfe]); // data port: ignored
        dev.write(4, &[0xaa]); // other command: ignored
        assert!(sink.0.lock().unwrap().is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(*sink.0.lock().unwrap(), vec![GuestRequest::Reset]);
        let mut d = [0xffu8; 1];
        dev.read(4, &mut d);
        assert_eq!(d[0], 0, "status: input buffer empty");
    }
}
