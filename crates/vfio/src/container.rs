//! The type-1 IOMMU container and IOMMU groups (the group API that every
//! kernel with vfio-pci has; see [`crate::cdev`] for iommufd).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};

use vfio_bindings::bindings::vfio::{
    vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, VFIO_TYPE1v2_IOMMU,
    VFIO_API_VERSION, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE,
};

use crate::ioctls;
use crate::open::DeviceFdSource;
use crate::pci::Sysfs;
use crate::Error;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn rw(path: &std::path::Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io(format!("opening {}", path.display())))
}

/// `/dev/vfio/vfio` with the type-1 v2 IOMMU.
#[derive(Debug)]
pub struct Container {
    file: File,
}

impl Container {
    /// Opens the container and checks the API version and type-1 v2 support.
    pub fn open(sysfs: &Sysfs) -> Result<Self, Error> {
        let file = rw(&sysfs.container_node())?;
        // SAFETY: an argument-less ioctl on a VFIO container fd.
        let v = unsafe { libc::ioctl(file.as_raw_fd(), ioctls::GET_API_VERSION as _) };
        if v != VFIO_API_VERSION as i32 {
            return Err(Error::Ioctl {
                what: format!("VFIO_GET_API_VERSION (got {v})"),
                errno: libc::EINVAL,
            });
        }
        // SAFETY: the argument is passed by value.
        let ok = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                ioctls::CHECK_EXTENSION as _,
                VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        };
        if ok != 1 {
            return Err(Error::Ioctl {
                what: "VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)".into(),
                errno: libc::ENOTSUP,
            });
        }
        Ok(Self { file })
    }

    /// Selects the type-1 v2 IOMMU (after the first group is attached).
    pub fn set_iommu(&self) -> Result<(), Error> {
        // SAFETY: the argument is passed by value.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::SET_IOMMU as _,
                VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(Error::Ioctl {
                what: "VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)".into(),
                errno: errno(),
            });
        }
        Ok(())
    }

    /// Maps `size` bytes at host address `host` for device DMA at `iova`.
    ///
    /// # Safety
    ///
    /// `host..host + size` must stay mapped in this process until it is
    /// unmapped with [`Container::unmap_dma`] or the container is closed: the
    /// device may read and write it at any time.
    pub unsafe fn map_dma(&self, iova: u64, size: u64, host: u64) -> Result<(), Error> {
        let map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: host,
            iova,
            size,
        };
        // SAFETY: the kernel reads `map` (argsz bytes); the caller keeps the
        // mapped host range valid (see above).
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), ioctls::IOMMU_MAP_DMA as _, &map) };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_IOMMU_MAP_DMA(iova {iova:#x}, {size:#x} bytes)"),
                errno: errno(),
            });
        }
        Ok(())
    }

    /// Unmaps `size` bytes at `iova`.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), Error> {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: the kernel reads and updates `unmap` (argsz bytes).
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::IOMMU_UNMAP_DMA as _,
                &mut unmap,
            )
        };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_IOMMU_UNMAP_DMA(iova {iova:#x})"),
                errno: errno(),
            });
        }
        Ok(())
    }
}

/// An IOMMU group (`/dev/vfio/N`).
#[derive(Debug)]
pub struct Group {
    file: File,
    number: u32,
}

impl Group {
    /// Opens group `number` and checks that it is viable.
    pub fn open(sysfs: &Sysfs, number: u32) -> Result<Self, Error> {
        let file = rw(&sysfs.group_node(number))?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel fills `status` (argsz bytes).
        let r =
            unsafe { libc::ioctl(file.as_raw_fd(), ioctls::GROUP_GET_STATUS as _, &mut status) };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_GROUP_GET_STATUS(group {number})"),
                errno: errno(),
            });
        }
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::GroupNotViable { group: number });
        }
        Ok(Self { file, number })
    }

    /// Puts the group in `container`.
    pub fn attach(&self, container: &Container) -> Result<(), Error> {
        let fd: libc::c_int = container.file.as_raw_fd();
        // SAFETY: the kernel reads one int (the container fd).
        let r =
            unsafe { libc::ioctl(self.file.as_raw_fd(), ioctls::GROUP_SET_CONTAINER as _, &fd) };
        if r < 0 {
            return Err(Error::Ioctl {
                what: format!("VFIO_GROUP_SET_CONTAINER(group {})", self.number),
                errno: errno(),
            });
        }
        Ok(())
    }
}

impl DeviceFdSource for Group {
    type Fd = File;
    fn get_device_fd(&mut self, name: &CStr) -> Result<File, i32> {
        // SAFETY: the kernel reads the NUL-terminated string `name`.
        let fd = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioctls::GROUP_GET_DEVICE_FD as _,
                name.as_ptr(),
            )
        };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}
