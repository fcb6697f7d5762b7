//! PCI addresses and what sysfs says about a device: its SR-IOV role, its
//! driver, its IOMMU group, its VFs. Every path hangs off a root (`/` on a
//! real system) so tests can build a fake sysfs tree.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

/// A PCI address `DDDD:BB:DD.F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Segment (domain).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device, 0..=31.
    pub device: u8,
    /// Function, 0..=7.
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = String;
    /// `DDDD:BB:DD.F`, or `BB:DD.F` in segment 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a PCI address like 0000:00:03.0");
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, rest) = match parts.as_slice() {
            [d, b, r] => (u16::from_str_radix(d, 16).map_err(|_| bad())?, b, r),
            [b, r] => (0, b, r),
            _ => return Err(bad()),
        };
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |v: &str, n: usize| {
            (v.len() <= n && !v.is_empty())
                .then(|| u8::from_str_radix(v, 16).ok())
                .flatten()
        };
        let (Some(bus), Some(device), Some(function)) = (hex(bus, 2), hex(dev, 2), hex(func, 1))
        else {
            return Err(bad());
        };
        if device > 31 || function > 7 {
            return Err(bad());
        }
        Ok(Self {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What a device is in SR-IOV terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A physical function that can have `total_vfs` VFs.
    Pf {
        /// `sriov_totalvfs`
        total_vfs: u16,
    },
    /// A virtual function of `pf`.
    Vf {
        /// Its PF.
        pf: PciAddress,
    },
    /// Neither.
    Plain,
}

/// A PCI device as sysfs shows it.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }
}

fn read_trim(p: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(p).map(|s| s.trim().to_string())
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

impl Sysfs {
    /// sysfs under `root` (`/` normally; a temporary tree in tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `/sys/bus/pci/devices/BDF`
    pub fn device_dir(&self, bdf: PciAddress) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(bdf.to_string())
    }

    /// A path under the root (`sys/module/...`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `/dev/vfio/N` under the root.
    pub fn group_node(&self, group: u32) -> PathBuf {
        self.root.join("dev/vfio").join(group.to_string())
    }

    /// `/dev/vfio/vfio` under the root.
    pub fn container_node(&self) -> PathBuf {
        self.root.join("dev/vfio/vfio")
    }

    /// Whether the device exists.
    pub fn exists(&self, bdf: PciAddress) -> bool {
        self.device_dir(bdf).exists()
    }

    /// PF, VF or neither.
    pub fn role(&self, bdf: PciAddress) -> Role {
        let dir = self.device_dir(bdf);
        if let Some(pf) = link_name(&dir.join("physfn")).and_then(|n| n.parse().ok()) {
            return Role::Vf { pf };
        }
        match read_trim(&dir.join("sriov_totalvfs"))
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(total_vfs) => Role::Pf { total_vfs },
            None => Role::Plain,
        }
    }

    /// The bound driver's name.
    pub fn driver(&self, bdf: PciAddress) -> Option<String> {
        link_name(&self.device_dir(bdf).join("driver"))
    }

    /// The IOMMU group number.
    pub fn iommu_group(&self, bdf: PciAddress) -> Option<u32> {
        link_name(&self.device_dir(bdf).join("iommu_group"))?
            .parse()
            .ok()
    }

    /// `vendor:device` IDs.
    pub fn ids(&self, bdf: PciAddress) -> Option<(u16, u16)> {
        let dir = self.device_dir(bdf);
        let id = |f: &str| {
            read_trim(&dir.join(f))
                .ok()
                .and_then(|v| u16::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        };
        Some((id("vendor")?, id("device")?))
    }

    /// `sriov_numvfs`
    pub fn num_vfs(&self, bdf: PciAddress) -> Option<u16> {
        read_trim(&self.device_dir(bdf).join("sriov_numvfs"))
            .ok()?
            .parse()
            .ok()
    }

    /// The PF's VFs (`virtfnN` links), in order.
    pub fn vfs(&self, pf: PciAddress) -> Vec<PciAddress> {
        let dir = self.device_dir(pf);
        let mut vfs: Vec<(u32, PciAddress)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n: u32 = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("virtfn")?
                    .parse()
                    .ok()?;
                Some((n, link_name(&e.path())?.parse().ok()?))
            })
            .collect();
        vfs.sort_unstable();
        vfs.into_iter().map(|(_, a)| a).collect()
    }

    /// Every device with an SR-IOV capability.
    pub fn pfs(&self) -> Vec<PciAddress> {
        let mut out: Vec<PciAddress> = std::fs::read_dir(self.root.join("sys/bus/pci/devices"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|a| matches!(self.role(*a), Role::Pf { .. }))
            .collect();
        out.sort_unstable();
        out
    }

    /// vfio-pci's `enable_sriov` module parameter (None: vfio-pci not loaded).
    pub fn vfio_enable_sriov(&self) -> Option<bool> {
        read_trim(
            &self
                .root
                .join("sys/module/vfio_pci/parameters/enable_sriov"),
        )
        .ok()
        .map(|v| v == "Y" || v == "1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a: PciAddress = "0000:00:13.2".parse().unwrap();
        assert_eq!((a.bus, a.device, a.function), (0, 0x13, 2));
        assert_eq!(a.to_string(), "0000:00:13.2");
        assert_eq!(
            "3:1f.7".parse::<PciAddress>().unwrap().to_string(),
            "0000:03:1f.7"
        );
        assert_eq!(
            "10000:00:00.0".parse::<PciAddress>().map_err(|_| ()),
            Err(())
        );
        for bad in [
            "",
            "00:20.0",
            "00:00.8",
            "0000:00:03",
            "0000:100:00.0",
            "x:00:00.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }
}
