//! The PF owner's side of SR-IOV with vfio-pci: bind a PF to vfio-pci, set
//! its VF token, create VFs (bound to vfio-pci), remove them, and report.
//! `caravel-sriov` is a thin command line over this.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::device::Device;
use crate::pci::{Role, Sysfs};
use crate::{Error, PciAddress, VfToken};

/// How long VFs may take to appear and bind (short in unit tests).
const VF_WAIT: Duration = Duration::from_millis(if cfg!(test) { 200 } else { 10_000 });

/// A VF as `status` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VfStatus {
    /// Address.
    pub bdf: PciAddress,
    /// Bound driver.
    pub driver: Option<String>,
    /// IOMMU group.
    pub iommu_group: Option<u32>,
    /// `vendor:device`.
    pub id: Option<String>,
}

/// A PF and its VFs (never the token: it is write-only by design).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PfStatus {
    /// Address.
    pub pf: PciAddress,
    /// Bound driver.
    pub driver: Option<String>,
    /// IOMMU group.
    pub iommu_group: Option<u32>,
    /// `vendor:device`.
    pub id: Option<String>,
    /// `sriov_totalvfs`
    pub total_vfs: u16,
    /// `sriov_numvfs`
    pub num_vfs: u16,
    /// vfio-pci's `enable_sriov` (null: vfio-pci not loaded).
    pub vfio_enable_sriov: Option<bool>,
    /// The VFs.
    pub vfs: Vec<VfStatus>,
}

fn id(sysfs: &Sysfs, bdf: PciAddress) -> Option<String> {
    sysfs.ids(bdf).map(|(v, d)| format!("{v:04x}:{d:04x}"))
}

/// The status of PF `pf`.
pub fn status(sysfs: &Sysfs, pf: PciAddress) -> Result<PfStatus, Error> {
    let total_vfs = match sysfs.role(pf) {
        Role::Pf { total_vfs } => total_vfs,
        _ if !sysfs.exists(pf) => return Err(Error::NoDevice { bdf: pf }),
        _ => return Err(Error::NotPf { bdf: pf }),
    };
    Ok(PfStatus {
        pf,
        driver: sysfs.driver(pf),
        iommu_group: sysfs.iommu_group(pf),
        id: id(sysfs, pf),
        total_vfs,
        num_vfs: sysfs.num_vfs(pf).unwrap_or(0),
        vfio_enable_sriov: sysfs.vfio_enable_sriov(),
        vfs: sysfs
            .vfs(pf)
            .into_iter()
            .map(|bdf| VfStatus {
                bdf,
                driver: sysfs.driver(bdf),
                iommu_group: sysfs.iommu_group(bdf),
                id: id(sysfs, bdf),
            })
            .collect(),
    })
}

/// Every SR-IOV PF on the system.
pub fn status_all(sysfs: &Sysfs) -> Vec<PfStatus> {
    sysfs
        .pfs()
        .into_iter()
        .filter_map(|pf| status(sysfs, pf).ok())
        .collect()
}

fn write(sysfs: &Sysfs, rel: &str, value: &str) -> Result<(), std::io::Error> {
    std::fs::write(sysfs.path(rel), value)
}

fn write_ctx(sysfs: &Sysfs, rel: &str, value: &str) -> Result<(), Error> {
    write(sysfs, rel, value).map_err(Error::io(format!("writing {value:?} to /{rel}")))
}

/// Binds `bdf` to vfio-pci (driver_override, unbind, drivers_probe).
pub fn bind_vfio(sysfs: &Sysfs, bdf: PciAddress) -> Result<(), Error> {
    if sysfs.driver(bdf).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    if !sysfs.path("sys/bus/pci/drivers/vfio-pci").exists() {
        return Err(Error::Io {
            what: "vfio-pci is not loaded: modprobe vfio-pci enable_sriov=1".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    let dev = format!("sys/bus/pci/devices/{bdf}");
    write_ctx(sysfs, &format!("{dev}/driver_override"), "vfio-pci")?;
    if sysfs.driver(bdf).is_some() {
        write_ctx(sysfs, &format!("{dev}/driver/unbind"), &bdf.to_string())?;
    }
    match write(sysfs, "sys/bus/pci/drivers_probe", &bdf.to_string()) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let n = sysfs.num_vfs(bdf).unwrap_or(0);
            return Err(Error::VfsAlreadyEnabled { pf: bdf, n });
        }
        r => r.map_err(Error::io(format!(
            "writing {bdf} to /sys/bus/pci/drivers_probe"
        )))?,
    }
    match sysfs.driver(bdf) {
        Some(d) if d == "vfio-pci" => Ok(()),
        d => Err(Error::NotVfioBound {
            bdf,
            driver: d.unwrap_or_else(|| "no driver".into()),
        }),
    }
}

/// Makes sure vfio-pci may create VFs (turns `enable_sriov` on if needed).
fn ensure_enable_sriov(sysfs: &Sysfs) -> Result<(), Error> {
    match sysfs.vfio_enable_sriov() {
        Some(true) => Ok(()),
        Some(false) => write(sysfs, "sys/module/vfio_pci/parameters/enable_sriov", "Y")
            .map_err(|_| Error::SriovDisabled),
        None => Err(Error::SriovDisabled),
    }
}

/// Sets the VF token through the PF's device fd (the default step of
/// [`enable`]; the token outlives the fd).
pub fn set_token_via_feature(sysfs: &Sysfs, pf: PciAddress, token: &VfToken) -> Result<(), Error> {
    let dev = Device::open(sysfs, pf, None)?;
    dev.set_vf_token(token)
}

/// `caravel-sriov enable`: binds `pf` to vfio-pci, sets `token`, creates
/// `num_vfs` VFs and checks they came up bound to vfio-pci. `set_token` is
/// [`set_token_via_feature`] except in tests.
pub fn enable(
    sysfs: &Sysfs,
    pf: PciAddress,
    num_vfs: u16,
    token: &VfToken,
    set_token: impl FnOnce(&Sysfs, PciAddress, &VfToken) -> Result<(), Error>,
) -> Result<PfStatus, Error> {
    let before = status(sysfs, pf)?;
    if num_vfs == 0 || num_vfs > before.total_vfs {
        return Err(Error::Io {
            what: format!(
                "--num-vfs {num_vfs}: {pf} supports 1 to {} VFs (sriov_totalvfs)",
                before.total_vfs
            ),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    if before.num_vfs > 0 {
        return Err(Error::VfsAlreadyEnabled {
            pf,
            n: before.num_vfs,
        });
    }
    bind_vfio(sysfs, pf)?;
    ensure_enable_sriov(sysfs)?;
    set_token(sysfs, pf, token)?;
    let numvfs = format!("sys/bus/pci/devices/{pf}/sriov_numvfs");
    if let Err(e) = write(sysfs, &numvfs, &num_vfs.to_string()) {
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => Error::SriovDisabled,
            Some(libc::EBUSY) => Error::VfsAlreadyEnabled { pf, n: sysfs.num_vfs(pf).unwrap_or(0) },
            Some(libc::ENOMEM) => Error::Io {
                what: format!("writing {num_vfs} to /{numvfs}: not enough MMIO or bus numbers for the VFs (boot with pci=realloc)"),
                source: e,
            },
            _ => Error::Io { what: format!("writing {num_vfs} to /{numvfs}"), source: e },
        });
    }
    let deadline = Instant::now() + VF_WAIT;
    loop {
        let s = status(sysfs, pf)?;
        let bound = s
            .vfs
            .iter()
            .filter(|v| v.driver.as_deref() == Some("vfio-pci"))
            .count();
        if s.vfs.len() == usize::from(num_vfs) && bound == s.vfs.len() {
            return Ok(s);
        }
        if Instant::now() > deadline {
            let odd: Vec<String> = s
                .vfs
                .iter()
                .filter(|v| v.driver.as_deref() != Some("vfio-pci"))
                .map(|v| format!("{} ({})", v.bdf, v.driver.as_deref().unwrap_or("no driver")))
                .collect();
            return Err(Error::Io {
                what: format!(
                    "{pf}: {} of {num_vfs} VFs appeared; not on vfio-pci: {} (echo vfio-pci > .../driver_override, then drivers_probe)",
                    s.vfs.len(),
                    odd.join(", ")
                ),
                source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `caravel-sriov disable`: removes the PF's VFs.
pub fn disable(sysfs: &Sysfs, pf: PciAddress) -> Result<PfStatus, Error> {
    status(sysfs, pf)?;
    let numvfs = format!("sys/bus/pci/devices/{pf}/sriov_numvfs");
    write(sysfs, &numvfs, "0").map_err(Error::io(format!("writing 0 to /{numvfs}")))?;
    status(sysfs, pf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A fake sysfs: PF 0000:00:03.0 (8086:10c9, 7 VFs possible) and `vfs`
    /// VFs 0000:00:13.{0,2,..} on vfio-pci.
    fn fake(name: &str, pf_driver: Option<&str>, vfs: u16, enable_sriov: Option<&str>) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("caravel-sysfs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let devs = root.join("sys/bus/pci/devices");
        let drivers = root.join("sys/bus/pci/drivers");
        std::fs::create_dir_all(&devs).unwrap();
        std::fs::create_dir_all(root.join("sys/kernel/iommu_groups")).unwrap();
        let dev = |bdf: &str, id: (&str, &str), driver: Option<&str>, group: u32| -> PathBuf {
            let d = devs.join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("0x{}\n", id.0)).unwrap();
            std::fs::write(d.join("device"), format!("0x{}\n", id.1)).unwrap();
            if let Some(drv) = driver {
                std::fs::create_dir_all(drivers.join(drv)).unwrap();
                symlink(drivers.join(drv), d.join("driver")).unwrap();
            }
            let g = root.join(format!("sys/kernel/iommu_groups/{group}"));
            std::fs::create_dir_all(&g).unwrap();
            symlink(&g, d.join("iommu_group")).unwrap();
            d
        };
        let pf = dev("0000:00:03.0", ("8086", "10c9"), pf_driver, 3);
        std::fs::write(pf.join("sriov_totalvfs"), "7\n").unwrap();
        std::fs::write(pf.join("sriov_numvfs"), format!("{vfs}\n")).unwrap();
        for i in 0..vfs {
            let bdf = format!("0000:00:13.{}", 2 * i);
            let v = dev(&bdf, ("8086", "10ca"), Some("vfio-pci"), 4 + u32::from(i));
            symlink(&pf, v.join("physfn")).unwrap();
            symlink(&v, pf.join(format!("virtfn{i}"))).unwrap();
        }
        dev("0000:00:04.0", ("1af4", "1042"), Some("virtio-pci"), 9);
        if let Some(v) = enable_sriov {
            let p = root.join("sys/module/vfio_pci/parameters");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("enable_sriov"), format!("{v}\n")).unwrap();
        }
        root
    }

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn done(root: &Path) {
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn status_reports_pf_vfs_drivers_and_groups_but_no_token() {
        let root = fake("status", Some("vfio-pci"), 2, Some("Y"));
        let sysfs = Sysfs::at(&root);
        assert_eq!(
            sysfs.role(a("0000:00:13.2")),
            Role::Vf {
                pf: a("0000:00:03.0")
            }
        );
        assert_eq!(sysfs.role(a("0000:00:04.0")), Role::Plain);
        let s = status(&sysfs, a("0000:00:03.0")).unwrap();
        assert_eq!(
            (s.total_vfs, s.num_vfs, s.vfio_enable_sriov),
            (7, 2, Some(true))
        );
        assert_eq!(
            s.vfs.iter().map(|v| v.bdf.to_string()).collect::<Vec<_>>(),
            ["0000:00:13.0", "0000:00:13.2"]
        );
        assert_eq!(s.vfs[1].iommu_group, Some(5));
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""id":"8086:10ca""#) && !json.contains("token"),
            "{json}"
        );
        assert_eq!(status_all(&sysfs).len(), 1);
        assert!(status(&sysfs, a("0000:00:04.0"))
            .unwrap_err()
            .to_string()
            .contains("not an SR-IOV physical function"));
        assert!(matches!(
            status(&sysfs, a("0000:00:05.0")),
            Err(Error::NoDevice { .. })
        ));
        done(&root);
    }

    #[test]
    fn enable_refuses_with_the_fix_before_touching_anything() {
        let t: VfToken = "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11".parse().unwrap();
        let never = |_: &Sysfs, _: PciAddress, _: &VfToken| -> Result<(), Error> {
            panic!("token set too early")
        };
        let root = fake("enable", Some("vfio-pci"), 2, Some("Y"));
        let sysfs = Sysfs::at(&root);
        let e = enable(&sysfs, a("0000:00:03.0"), 8, &t, never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("supports 1 to 7 VFs"), "{e}");
        let e = enable(&sysfs, a("0000:00:03.0"), 2, &t, never)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already has 2 VFs") && e.contains("caravel-sriov disable"),
            "{e}"
        );
        done(&root);
        // vfio-pci not loaded: the PF is on its kernel driver and there is no vfio-pci.
        let root = fake("novfio", Some("igb"), 0, None);
        let e = enable(&Sysfs::at(&root), a("0000:00:03.0"), 2, &t, never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("modprobe vfio-pci"), "{e}");
        done(&root);
    }

    #[test]
    fn enable_sets_the_token_then_writes_numvfs() {
        let t: VfToken = "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11".parse().unwrap();
        // enable_sriov off and not writable (a file the fake makes read-only).
        let root = fake("param", Some("vfio-pci"), 0, Some("N"));
        let param = root.join("sys/module/vfio_pci/parameters");
        std::fs::remove_file(param.join("enable_sriov")).unwrap();
        std::fs::create_dir(param.join("enable_sriov")).unwrap(); // reads fail: "not loaded"
        let e = enable(
            &Sysfs::at(&root),
            a("0000:00:03.0"),
            2,
            &t,
            |_, _, _| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(e, Error::SriovDisabled), "{e}");
        assert!(e
            .to_string()
            .contains("echo Y > /sys/module/vfio_pci/parameters/enable_sriov"));
        done(&root);
        // Writable N: turned on; the token step runs; numvfs is written; no
        // VF appears in a fake sysfs, so enable reports what it saw.
        let root = fake("param2", Some("vfio-pci"), 0, Some("N"));
        let sysfs = Sysfs::at(&root);
        let mut token_set = false;
        let e = enable(&sysfs, a("0000:00:03.0"), 2, &t, |_, pf, tok| {
            token_set = pf == a("0000:00:03.0") && tok == &t;
            Ok(())
        })
        .unwrap_err();
        assert!(token_set);
        assert_eq!(sysfs.vfio_enable_sriov(), Some(true));
        assert_eq!(sysfs.num_vfs(a("0000:00:03.0")), Some(2));
        assert!(e.to_string().contains("0 of 2 VFs appeared"), "{e}");
        done(&root);
    }
}
