//! The host side of virtio-balloon: which guest pages may be returned to
//! the host (boot RAM and plugged virtio-mem blocks, and only while no
//! passed-through device has guest memory mapped for DMA), and the device
//! built from `--balloon`.

use std::sync::Arc;

use virtio::balloon::{Balloon, BalloonBackend, BalloonHandle, Refusal};

use crate::config::BalloonConfig;
use crate::device_memory::DeviceMemoryView;
use crate::hotplug::DmaTargets;
use crate::pci_segment::PciSegment;
use crate::{Error, Result};

/// Discards what the balloon's driver gives or reports.
pub struct BalloonHost {
    view: Arc<DeviceMemoryView>,
    dma: DmaTargets,
}

impl BalloonBackend for BalloonHost {
    fn discard(&self, gpa: u64, len: u64) -> std::result::Result<(), Refusal> {
        // VFIO pins guest memory for DMA: a discarded page would be
        // replaced for the guest but not for the device.
        if !self
            .dma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return Err(Refusal::DmaMapped);
        }
        self.view.discard(gpa, len)
    }
}

/// Creates the balloon of `cfg` on `pci`, returning memory through `view`
/// unless `dma` holds a passed-through device's container.
pub fn add_balloon_device(
    cfg: &BalloonConfig,
    pci: &mut PciSegment,
    view: &Arc<DeviceMemoryView>,
    dma: &DmaTargets,
) -> Result<BalloonHandle> {
    let backend = Arc::new(BalloonHost {
        view: view.clone(),
        dma: dma.clone(),
    });
    let dev = Balloon::new(cfg.options(), cfg.size, backend)
        .map_err(|e| Error::config("--balloon", e.to_string()))?;
    let handle = dev.handle();
    handle.set_interrupt(pci.add_virtio_signalled(
        "virtio-balloon",
        Box::new(dev),
        view.memory(),
    )?);
    Ok(handle)
}
