//! What can go wrong, in words that say what to do.

use crate::PciAddress;

/// A VFIO failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such device in sysfs.
    #[error("{bdf}: no such PCI device (/sys/bus/pci/devices/{bdf} does not exist)")]
    NoDevice {
        /// The device.
        bdf: PciAddress,
    },
    /// The device is not bound to vfio-pci.
    #[error("{bdf} is bound to {driver}, not vfio-pci: echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe")]
    NotVfioBound {
        /// The device.
        bdf: PciAddress,
        /// Its driver, or "no driver".
        driver: String,
    },
    /// Not an SR-IOV physical function.
    #[error("{bdf} is not an SR-IOV physical function (it has no /sys/bus/pci/devices/{bdf}/sriov_totalvfs)")]
    NotPf {
        /// The device.
        bdf: PciAddress,
    },
    /// Out-of-range VF count.
    #[error("--num-vfs {n}: {pf} supports 1 to {total} VFs (sriov_totalvfs)")]
    VfCount {
        /// The PF.
        pf: PciAddress,
        /// Requested.
        n: u16,
        /// `sriov_totalvfs`
        total: u16,
    },
    /// No IOMMU group: no IOMMU.
    #[error("{bdf} has no IOMMU group: the host runs without an IOMMU (boot with intel_iommu=on or amd_iommu=on)")]
    NoIommuGroup {
        /// The device.
        bdf: PciAddress,
    },
    /// A group with a device not owned by vfio.
    #[error("IOMMU group {group} is not viable: every device in /sys/kernel/iommu_groups/{group}/devices must be bound to vfio-pci or have no driver")]
    GroupNotViable {
        /// The group.
        group: u32,
    },
    /// EACCES without a token.
    #[error("{}", token_required(bdf, pf))]
    TokenRequired {
        /// The device opened.
        bdf: PciAddress,
        /// Its PF (itself when a PF with VFs in use was opened).
        pf: PciAddress,
    },
    /// EACCES with a token.
    #[error("the VF token given for {bdf} is not the one {pf}'s owner set (a PF driver sets it with VFIO_DEVICE_FEATURE PCI_VF_TOKEN, e.g. caravel-sriov enable --vf-token)")]
    TokenWrong {
        /// The device opened.
        bdf: PciAddress,
        /// The PF whose token it is.
        pf: PciAddress,
    },
    /// A token for a VF whose PF is not vfio-pci's.
    #[error("{bdf}: vf_token given, but its PF {pf} is bound to {driver}, not vfio-pci, so there is no token to match: drop vf_token")]
    TokenPfNotVfio {
        /// The VF.
        bdf: PciAddress,
        /// Its PF.
        pf: PciAddress,
        /// The PF's driver.
        driver: String,
    },
    /// A token for a device that is neither PF nor VF.
    #[error("{bdf}: vf_token given, but {bdf} is neither an SR-IOV PF nor a VF: drop vf_token")]
    TokenNotSriov {
        /// The device.
        bdf: PciAddress,
    },
    /// The device is in use.
    #[error("{bdf} is busy: another process has it open (VFIO allows one user per device)")]
    Busy {
        /// The device.
        bdf: PciAddress,
    },
    /// vfio-pci cannot create VFs.
    #[error("vfio-pci's enable_sriov parameter is off, so writing sriov_numvfs fails: echo Y > /sys/module/vfio_pci/parameters/enable_sriov (or load vfio-pci with enable_sriov=1)")]
    SriovDisabled,
    /// The PF already has VFs.
    #[error("{pf} already has {n} VFs: echo 0 > /sys/bus/pci/devices/{pf}/sriov_numvfs first (caravel-sriov disable --pf {pf})")]
    VfsAlreadyEnabled {
        /// The PF.
        pf: PciAddress,
        /// How many.
        n: u16,
    },
    /// A sysfs or device-node operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The file and the operation.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// An ioctl failed in a way none of the above explains.
    #[error("{what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Ioctl {
        /// The ioctl and its argument.
        what: String,
        /// The errno.
        errno: i32,
    },
}

fn token_required(bdf: &PciAddress, pf: &PciAddress) -> String {
    if bdf == pf {
        format!(
            "{bdf} is an SR-IOV PF whose VFs are in use, so it opens only with the VF token it set: give vf_token=<uuid>"
        )
    } else {
        format!(
            "{bdf} is a VF of {pf}, which vfio-pci owns with a VF token: give vf_token=<uuid>, the token {pf}'s owner set"
        )
    }
}

impl Error {
    /// An I/O error on `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
