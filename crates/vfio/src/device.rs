//! An open VFIO device: regions (read, write, mmap), IRQs (eventfds),
//! reset, `VFIO_DEVICE_FEATURE` (the VF token among them), and opening a
//! PCI device by address through its group.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use vfio_bindings::bindings::vfio::{
    vfio_device_feature, vfio_device_info, vfio_irq_info, vfio_irq_set, vfio_region_info,
    VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

use crate::container::{Container, Group};
use crate::ioctls;
use crate::open::{open_named, Target};
use crate::pci::{Role, Sysfs};
use crate::{Error, PciAddress, VfToken};

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A region of the device (a BAR, config space, ROM, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index (`VFIO_PCI_*_REGION_INDEX`).
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`
    pub flags: u32,
    /// Size in bytes (0: absent).
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// An IRQ index (INTx, MSI, MSI-X, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*`
    pub flags: u32,
    /// Vectors.
    pub count: u32,
}

/// A region mapped into this process.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Host address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what Device::mmap mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// An open device, with the container and group that keep it usable.
#[derive(Debug)]
pub struct Device {
    bdf: PciAddress,
    file: File,
    num_regions: u32,
    num_irqs: u32,
    /// Kept open: closing them would detach the device from its IOMMU.
    container: std::sync::Arc<Container>,
    _group: Group,
}

/// What [`Device::open`] needs to know about a device from sysfs.
pub fn target(sysfs: &Sysfs, bdf: PciAddress) -> Target {
    let role = sysfs.role(bdf);
    let pf_driver = match role {
        Role::Vf { pf } => Some(sysfs.driver(pf).unwrap_or_else(|| "no driver".into())),
        _ => None,
    };
    Target {
        bdf,
        role,
        pf_driver,
    }
}

impl Device {
    /// Opens PCI device `bdf` (bound to vfio-pci) in a new container,
    /// presenting `token` if given.
    pub fn open(sysfs: &Sysfs, bdf: PciAddress, token: Option<&VfToken>) -> Result<Self, Error> {
        if !sysfs.exists(bdf) {
            return Err(Error::NoDevice { bdf });
        }
        let t = target(sysfs, bdf);
        match sysfs.driver(bdf) {
            Some(d) if d == "vfio-pci" => {}
            d => {
                return Err(Error::NotVfioBound {
                    bdf,
                    driver: d.unwrap_or_else(|| "no driver".into()),
                })
            }
        }
        let group_nr = sysfs.iommu_group(bdf).ok_or(Error::NoIommuGroup { bdf })?;
        let container = Container::open(sysfs)?;
        // A group node opens once: EBUSY means another user holds the device.
        let mut group = Group::open(sysfs, group_nr).map_err(|e| match e {
            Error::Io { ref source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                Error::Busy { bdf }
            }
            e => e,
        })?;
        group.attach(&container)?;
        container.set_iommu()?;
        let file = open_named(&mut group, &t, token)?;
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel fills `info` (argsz bytes).
        let r = unsafe { libc::ioctl(file.as_raw_fd(), ioctls::DEVICE_GET_INFO as _, &mut info) };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_DEVICE_GET_INFO({bdf})"),
                errno: errno(),
            });
        }
        Ok(Self {
            bdf,
            file,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
            container: std::sync::Arc::new(container),
            _group: group,
        })
    }

    /// The device's address.
    pub fn bdf(&self) -> PciAddress {
        self.bdf
    }

    /// The container (for DMA mapping).
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// The container, shared (for whoever maps memory plugged later).
    pub fn shared_container(&self) -> std::sync::Arc<Container> {
        self.container.clone()
    }

    /// Number of regions and of IRQ indexes.
    pub fn counts(&self) -> (u32, u32) {
        (self.num_regions, self.num_irqs)
    }

    /// VFIO_DEVICE_GET_REGION_INFO.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo, Error> {
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills `info` (argsz bytes; capabilities beyond
        // it are not requested).
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::DEVICE_GET_REGION_INFO as _,
                &mut info,
            )
        };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_DEVICE_GET_REGION_INFO({}, region {index})", self.bdf),
                errno: errno(),
            });
        }
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Reads `buf.len()` bytes at `off` in region `r`.
    pub fn read_region(&self, r: &RegionInfo, off: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.file
            .read_exact_at(buf, r.offset + off)
            .map_err(Error::io(format!(
                "reading region {} of {} at {off:#x}",
                r.index, self.bdf
            )))
    }

    /// Writes `buf` at `off` in region `r`.
    pub fn write_region(&self, r: &RegionInfo, off: u64, buf: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(buf, r.offset + off)
            .map_err(Error::io(format!(
                "writing region {} of {} at {off:#x}",
                r.index, self.bdf
            )))
    }

    /// Maps region `r` (it must have `VFIO_REGION_INFO_FLAG_MMAP`).
    pub fn mmap(&self, r: &RegionInfo) -> Result<Mapping, Error> {
        let len = usize::try_from(r.size).map_err(|_| Error::Ioctl {
            what: "mmap: region too large".into(),
            errno: libc::EINVAL,
        })?;
        // SAFETY: a fresh shared mapping of the device fd chosen by the
        // kernel; checked before use, unmapped by Mapping's Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Ioctl {
                what: format!("mmap of region {} of {}", r.index, self.bdf),
                errno: errno(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// VFIO_DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo, Error> {
        let mut info = vfio_irq_info {
            argsz: std::mem::size_of::<vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills `info` (argsz bytes).
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::DEVICE_GET_IRQ_INFO as _,
                &mut info,
            )
        };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_DEVICE_GET_IRQ_INFO({}, index {index})", self.bdf),
                errno: errno(),
            });
        }
        Ok(IrqInfo {
            flags: info.flags,
            count: info.count,
        })
    }

    /// Triggers eventfd `fds[i]` for vector `start + i` of IRQ `index`
    /// (-1 leaves a vector unset); an empty `fds` disables the index.
    pub fn set_irqs(&self, index: u32, start: u32, fds: &[RawFd]) -> Result<(), Error> {
        let header = std::mem::size_of::<vfio_irq_set>();
        let mut buf = vec![0u8; header + 4 * fds.len()];
        let flags = if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
        };
        for (i, v) in [buf.len() as u32, flags, index, start, fds.len() as u32]
            .iter()
            .enumerate()
        {
            buf[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
        }
        for (i, fd) in fds.iter().enumerate() {
            buf[header + 4 * i..header + 4 * i + 4].copy_from_slice(&fd.to_ne_bytes());
        }
        // SAFETY: `buf` is a vfio_irq_set header followed by `count` fds,
        // argsz bytes in all, which is what the kernel reads.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::DEVICE_SET_IRQS as _,
                buf.as_ptr(),
            )
        };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!(
                    "VFIO_DEVICE_SET_IRQS({}, index {index}, {} vectors)",
                    self.bdf,
                    fds.len()
                ),
                errno: errno(),
            });
        }
        Ok(())
    }

    /// VFIO_DEVICE_RESET.
    pub fn reset(&self) -> Result<(), Error> {
        // SAFETY: an argument-less ioctl on a device fd.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), ioctls::DEVICE_RESET as _) };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_DEVICE_RESET({})", self.bdf),
                errno: errno(),
            });
        }
        Ok(())
    }

    fn feature(&self, flags: u32, data: &[u8]) -> Result<(), i32> {
        let mut buf = vec![0u8; std::mem::size_of::<vfio_device_feature>() + data.len()];
        let argsz = buf.len() as u32;
        buf[0..4].copy_from_slice(&argsz.to_ne_bytes());
        buf[4..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..].copy_from_slice(data);
        // SAFETY: `buf` is a vfio_device_feature header and its payload,
        // argsz bytes in all.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::DEVICE_FEATURE as _,
                buf.as_ptr(),
            )
        };
        if r < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }

    /// VFIO_DEVICE_FEATURE PROBE: whether `feature` supports GET/SET.
    pub fn feature_supported(&self, feature: u32, set: bool) -> bool {
        let op = if set {
            VFIO_DEVICE_FEATURE_SET
        } else {
            vfio_bindings::bindings::vfio::VFIO_DEVICE_FEATURE_GET
        };
        self.feature(VFIO_DEVICE_FEATURE_PROBE | op | feature, &[])
            .is_ok()
    }

    /// Sets this PF's VF token (`VFIO_DEVICE_FEATURE` SET `PCI_VF_TOKEN`).
    /// The token stays with the PF after this fd closes, until vfio-pci
    /// probes the PF again.
    pub fn set_vf_token(&self, token: &VfToken) -> Result<(), Error> {
        if !self.feature_supported(VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, true) {
            return Err(Error::TokenNotSriov { bdf: self.bdf });
        }
        self.feature(
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
            token.as_bytes(),
        )
        .map_err(|errno| Error::Ioctl {
            what: format!("VFIO_DEVICE_FEATURE(SET PCI_VF_TOKEN) on {}", self.bdf),
            errno,
        })
    }

    /// Whether the token can be read back (it cannot: write-only by design).
    pub fn vf_token_readable(&self) -> bool {
        self.feature_supported(VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, false)
    }
}
