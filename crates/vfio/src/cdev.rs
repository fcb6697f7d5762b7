//! The iommufd/cdev path (`/dev/vfio/devices/vfioN` + `/dev/iommu`), where
//! the token travels in `VFIO_DEVICE_BIND_IOMMUFD`. It needs Linux 6.17+
//! (earlier kernels ignore the token on this path, a hole fixed by
//! 86624ba3b522) with `CONFIG_IOMMUFD`; no Debian kernel has that, so
//! [`probe`] says why it is unavailable and the group API is used.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use vfio_bindings::bindings::vfio::{vfio_device_bind_iommufd, VFIO_DEVICE_BIND_FLAG_TOKEN};

use crate::ioctls;
use crate::pci::Sysfs;
use crate::{PciAddress, VfToken};

/// Whether the cdev path can be used for `bdf`, and its device node.
pub fn probe(sysfs: &Sysfs, bdf: PciAddress) -> Result<PathBuf, String> {
    if !sysfs.path("dev/iommu").exists() {
        return Err("no /dev/iommu (kernel without CONFIG_IOMMUFD)".into());
    }
    let dir = sysfs.device_dir(bdf).join("vfio-dev");
    let node = std::fs::read_dir(&dir)
        .map_err(|_| {
            format!(
                "no {} (kernel without CONFIG_VFIO_DEVICE_CDEV)",
                dir.display()
            )
        })?
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_str()
                .filter(|n| n.starts_with("vfio"))
                .map(String::from)
        })
        .ok_or_else(|| format!("{} lists no vfio device", dir.display()))?;
    Ok(sysfs.path("dev/vfio/devices").join(node))
}

/// The bind argument, with the token if given (`token` must outlive the call).
pub fn bind_arg(iommufd: RawFd, token: Option<&VfToken>) -> vfio_device_bind_iommufd {
    vfio_device_bind_iommufd {
        argsz: std::mem::size_of::<vfio_device_bind_iommufd>() as u32,
        flags: if token.is_some() {
            VFIO_DEVICE_BIND_FLAG_TOKEN
        } else {
            0
        },
        iommufd,
        out_devid: 0,
        token_uuid_ptr: token.map_or(0, |t| t.as_bytes().as_ptr() as u64),
    }
}

/// VFIO_DEVICE_BIND_IOMMUFD on an open cdev; returns the device ID or the
/// errno (E2BIG: a kernel without the 2025-10 struct-size fix; fall back to
/// the group API).
pub fn bind(cdev: &impl AsRawFd, iommufd: RawFd, token: Option<&VfToken>) -> Result<u32, i32> {
    let mut arg = bind_arg(iommufd, token);
    // SAFETY: the kernel reads `arg` (argsz bytes) and the 16 token bytes it
    // points to, which `token` keeps alive for the call, and writes out_devid.
    let r = unsafe { libc::ioctl(cdev.as_raw_fd(), ioctls::DEVICE_BIND_IOMMUFD as _, &mut arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(arg.out_devid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bind_argument_carries_the_token() {
        let t: VfToken = "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11".parse().unwrap();
        let a = bind_arg(7, Some(&t));
        assert_eq!(
            (a.argsz, a.flags, a.iommufd),
            (24, VFIO_DEVICE_BIND_FLAG_TOKEN, 7)
        );
        assert_eq!(a.token_uuid_ptr, t.as_bytes().as_ptr() as u64);
        let b = bind_arg(7, None);
        assert_eq!((b.flags, b.token_uuid_ptr), (0, 0));
    }

    #[test]
    fn probe_says_why_the_path_is_missing() {
        let root = std::env::temp_dir().join(format!("vfio-cdev-{}", std::process::id()));
        let e = probe(&Sysfs::at(&root), "0000:00:03.0".parse().unwrap()).unwrap_err();
        assert!(e.contains("CONFIG_IOMMUFD"), "{e}");
    }
}
