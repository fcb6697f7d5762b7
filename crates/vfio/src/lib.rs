//! VFIO for Caravel, with SR-IOV VF tokens.
//!
//! Since Linux 5.7 a userspace driver can own an SR-IOV physical function
//! (PF) through vfio-pci and create virtual functions (VFs); a shared-secret
//! UUID, the VF token, keeps other users off the VFs. The PF owner sets it
//! (`VFIO_DEVICE_FEATURE` + `PCI_VF_TOKEN`), every VF user presents it in the
//! device name (`"0000:00:13.0 vf_token=<uuid>"`). The kernel answers EACCES
//! both when the token is missing and when it is wrong; this crate knows
//! which one it sent and says so ([`Error::TokenRequired`],
//! [`Error::TokenWrong`]).
//!
//! * [`pci`]: PCI addresses and the sysfs view of a device (PF/VF role,
//!   driver, IOMMU group, `sriov_numvfs`), rooted anywhere for tests;
//! * [`token`]: the token type and the device-name string;
//! * [`open`]: opening a device by address with an optional token, and the
//!   errno-to-error rules (pure, tested row by row against a fake kernel);
//! * [`container`], [`device`]: the container/group API, regions, mmap,
//!   IRQs with eventfds, DMA mapping, `VFIO_DEVICE_FEATURE`;
//! * [`sriov`]: the PF owner side (bind to vfio-pci, set the token, create
//!   VFs, status), which `caravel-sriov` drives;
//! * [`cdev`]: the iommufd/cdev path's token bind, behind a runtime probe.

pub mod cdev;
pub mod container;
pub mod device;
mod error;
pub mod ioctls;
pub mod open;
pub mod pci;
pub mod sriov;
pub mod token;

pub use error::Error;
pub use pci::PciAddress;
pub use token::VfToken;
