//! Opening a device by PCI address, with or without a VF token, and telling
//! apart what the kernel's EACCES and EINVAL mean from what was sent.
//!
//! The kernel's rules (vfio-pci `vfio_pci_core_match`/`..._match_token_uuid`):
//!
//! | opened | condition | kernel | here |
//! |---|---|---|---|
//! | VF, PF on vfio-pci | no token | EACCES | [`Error::TokenRequired`] |
//! | VF, PF on vfio-pci | wrong token | EACCES | [`Error::TokenWrong`] |
//! | VF, PF on vfio-pci | right token | fd | opened |
//! | VF, PF on another driver | token | EINVAL | [`Error::TokenPfNotVfio`] (refused before the ioctl) |
//! | VF, PF on another driver | no token | fd | opened |
//! | PF, VFs in use | no / wrong token | EACCES | [`Error::TokenRequired`] / [`Error::TokenWrong`] |
//! | PF, VFs in use | right token | fd | opened |
//! | PF, no VF in use | token | fd, and the token is set | opened |
//! | neither | token | EINVAL | [`Error::TokenNotSriov`] (refused before the ioctl) |

use std::ffi::CStr;

use crate::pci::Role;
use crate::token::device_name;
use crate::{Error, PciAddress, VfToken};

/// What is known about the device being opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The device.
    pub bdf: PciAddress,
    /// Its SR-IOV role.
    pub role: Role,
    /// For a VF, its PF's driver.
    pub pf_driver: Option<String>,
}

/// Something that hands out device fds by name (a VFIO group; a fake kernel
/// in tests).
pub trait DeviceFdSource {
    /// The device handle.
    type Fd;
    /// `VFIO_GROUP_GET_DEVICE_FD(name)`: the fd, or the errno.
    fn get_device_fd(&mut self, name: &CStr) -> Result<Self::Fd, i32>;
}

/// Refusals that need no kernel round trip.
fn precheck(t: &Target, token: Option<&VfToken>) -> Result<(), Error> {
    if token.is_none() {
        return Ok(());
    }
    match (&t.role, &t.pf_driver) {
        (Role::Plain, _) => Err(Error::TokenNotSriov { bdf: t.bdf }),
        (Role::Vf { pf }, Some(d)) if d != "vfio-pci" => Err(Error::TokenPfNotVfio {
            bdf: t.bdf,
            pf: *pf,
            driver: d.clone(),
        }),
        _ => Ok(()),
    }
}

/// The error for `errno` when `t` was opened with or without a token.
pub fn classify(errno: i32, t: &Target, sent_token: bool) -> Error {
    let pf = match t.role {
        Role::Vf { pf } => pf,
        _ => t.bdf,
    };
    match (errno, &t.role, sent_token) {
        (libc::EACCES, Role::Vf { .. } | Role::Pf { .. }, false) => {
            Error::TokenRequired { bdf: t.bdf, pf }
        }
        (libc::EACCES, Role::Vf { .. } | Role::Pf { .. }, true) => {
            Error::TokenWrong { bdf: t.bdf, pf }
        }
        (libc::EINVAL, Role::Plain, true) => Error::TokenNotSriov { bdf: t.bdf },
        (libc::EINVAL, Role::Vf { pf }, true) => Error::TokenPfNotVfio {
            bdf: t.bdf,
            pf: *pf,
            driver: t
                .pf_driver
                .clone()
                .unwrap_or_else(|| "another driver".into()),
        },
        (libc::EBUSY, ..) => Error::Busy { bdf: t.bdf },
        _ => Error::Ioctl {
            what: format!(
                "VFIO_GROUP_GET_DEVICE_FD({}{})",
                t.bdf,
                if sent_token { " vf_token=…" } else { "" }
            ),
            errno,
        },
    }
}

/// Opens `t` through `src`, presenting `token` if given.
pub fn open_named<S: DeviceFdSource>(
    src: &mut S,
    t: &Target,
    token: Option<&VfToken>,
) -> Result<S::Fd, Error> {
    precheck(t, token)?;
    src.get_device_fd(&device_name(t.bdf, token))
        .map_err(|errno| classify(errno, t, token.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's token rules for one PF and its VFs, as vfio-pci has them.
    struct FakeKernel {
        pf: PciAddress,
        pf_on_vfio: bool,
        token: Option<[u8; 16]>,
        vf_users: u32,
        sriov: Vec<PciAddress>,
    }

    impl FakeKernel {
        fn new(pf_on_vfio: bool) -> Self {
            Self {
                pf: addr("0000:00:03.0"),
                pf_on_vfio,
                token: None,
                vf_users: 0,
                sriov: vec![addr("0000:00:13.0"), addr("0000:00:13.2")],
            }
        }

        /// VFIO_DEVICE_FEATURE SET PCI_VF_TOKEN on the PF.
        fn set_token(&mut self, t: &VfToken) {
            self.token = Some(*t.as_bytes());
        }
    }

    impl DeviceFdSource for FakeKernel {
        type Fd = PciAddress;
        fn get_device_fd(&mut self, name: &CStr) -> Result<PciAddress, i32> {
            let name = name.to_str().map_err(|_| libc::EINVAL)?;
            let mut words = name.split(' ').filter(|w| !w.is_empty());
            let bdf: PciAddress = words
                .next()
                .ok_or(libc::EINVAL)?
                .parse()
                .map_err(|_| libc::ENODEV)?;
            let token = match words.next() {
                None => None,
                Some(w) => Some(
                    w.strip_prefix("vf_token=")
                        .and_then(|u| u.parse::<VfToken>().ok())
                        .ok_or(libc::EINVAL)?,
                ),
            };
            let matches = |t: &Option<VfToken>, k: &Option<[u8; 16]>| match (t, k) {
                (Some(t), Some(k)) => t.as_bytes() == k,
                _ => false,
            };
            if bdf == self.pf {
                if self.vf_users > 0 && !matches(&token, &self.token) {
                    return Err(libc::EACCES);
                }
                if let (Some(t), 0) = (&token, self.vf_users) {
                    self.token = Some(*t.as_bytes());
                }
                return Ok(bdf);
            }
            if self.sriov.contains(&bdf) {
                if !self.pf_on_vfio {
                    return if token.is_some() {
                        Err(libc::EINVAL)
                    } else {
                        Ok(bdf)
                    };
                }
                if !matches(&token, &self.token) {
                    return Err(libc::EACCES);
                }
                self.vf_users += 1;
                return Ok(bdf);
            }
            if token.is_some() {
                return Err(libc::EINVAL);
            }
            Ok(bdf)
        }
    }

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn vf(k: &FakeKernel, i: usize) -> Target {
        Target {
            bdf: k.sriov[i],
            role: Role::Vf { pf: k.pf },
            pf_driver: Some(if k.pf_on_vfio { "vfio-pci" } else { "igb" }.into()),
        }
    }

    fn pf(k: &FakeKernel) -> Target {
        Target {
            bdf: k.pf,
            role: Role::Pf { total_vfs: 7 },
            pf_driver: None,
        }
    }

    const T1: &str = "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11";
    const T2: &str = "5d1e8f0a-2b3c-4d5e-8f90-a1b2c3d4e5f6";

    fn tok(s: &str) -> VfToken {
        s.parse().unwrap()
    }

    #[test]
    fn every_row_of_the_token_table() {
        let mut k = FakeKernel::new(true);
        k.set_token(&tok(T1));
        let (v0, p) = (vf(&k, 0), pf(&k));
        assert!(matches!(
            open_named(&mut k, &v0, None),
            Err(Error::TokenRequired { .. })
        ));
        assert!(matches!(
            open_named(&mut k, &v0, Some(&tok(T2))),
            Err(Error::TokenWrong { .. })
        ));
        assert_eq!(open_named(&mut k, &v0, Some(&tok(T1))).unwrap(), v0.bdf);
        // PF with a VF in use: only the right token.
        assert!(
            matches!(open_named(&mut k, &p, None), Err(Error::TokenRequired { bdf, pf }) if bdf == pf)
        );
        assert!(matches!(
            open_named(&mut k, &p, Some(&tok(T2))),
            Err(Error::TokenWrong { .. })
        ));
        assert!(open_named(&mut k, &p, Some(&tok(T1))).is_ok());
        // PF with no VF in use: a token given on open sets it.
        let mut k = FakeKernel::new(true);
        let p = pf(&k);
        assert!(open_named(&mut k, &p, Some(&tok(T2))).is_ok());
        assert_eq!(k.token, Some(*tok(T2).as_bytes()));
        assert!(
            open_named(&mut k, &p, None).is_ok(),
            "no VF in use, no token needed"
        );
        // PF not on vfio-pci: VFs open without a token, and a token is refused.
        let mut k = FakeKernel::new(false);
        let v0 = vf(&k, 0);
        assert!(open_named(&mut k, &v0, None).is_ok());
        let e = open_named(&mut k, &v0, Some(&tok(T1))).unwrap_err();
        assert!(
            matches!(e, Error::TokenPfNotVfio { ref driver, .. } if driver == "igb"),
            "{e}"
        );
        // Neither PF nor VF.
        let plain = Target {
            bdf: addr("0000:00:04.0"),
            role: Role::Plain,
            pf_driver: None,
        };
        assert!(open_named(&mut k, &plain, None).is_ok());
        assert!(matches!(
            open_named(&mut k, &plain, Some(&tok(T1))),
            Err(Error::TokenNotSriov { .. })
        ));
    }

    #[test]
    fn the_kernel_selftests_cases() {
        // init_token_match: the PF owner sets T1; same token opens, others do not.
        let mut k = FakeKernel::new(true);
        k.set_token(&tok(T1));
        let v1 = vf(&k, 1);
        assert!(open_named(&mut k, &v1, Some(&tok(T1))).is_ok());
        assert!(matches!(
            open_named(&mut k, &v1, Some(&tok(T2))),
            Err(Error::TokenWrong { .. })
        ));
        assert!(matches!(
            open_named(&mut k, &v1, None),
            Err(Error::TokenRequired { .. })
        ));
        // pf_early_close: the token lives in the PF's driver data, not its fd.
        let mut k = FakeKernel::new(true);
        let p = pf(&k);
        open_named(&mut k, &p, None).unwrap();
        k.set_token(&tok(T1));
        drop(p); // the PF fd closes
        let (v0, v1) = (vf(&k, 0), vf(&k, 1));
        assert!(open_named(&mut k, &v0, Some(&tok(T1))).is_ok());
        // override_token: SET while a VF is open is accepted; later opens need the new one.
        k.set_token(&tok(T2));
        assert!(matches!(
            open_named(&mut k, &v1, Some(&tok(T1))),
            Err(Error::TokenWrong { .. })
        ));
        assert!(open_named(&mut k, &v1, Some(&tok(T2))).is_ok());
    }

    #[test]
    fn kernel_answers_map_to_what_was_sent() {
        let t = Target {
            bdf: addr("0000:00:13.0"),
            role: Role::Vf {
                pf: addr("0000:00:03.0"),
            },
            pf_driver: Some("vfio-pci".into()),
        };
        assert!(matches!(
            classify(libc::EACCES, &t, false),
            Error::TokenRequired { .. }
        ));
        assert!(matches!(
            classify(libc::EACCES, &t, true),
            Error::TokenWrong { .. }
        ));
        assert!(matches!(
            classify(libc::EBUSY, &t, true),
            Error::Busy { .. }
        ));
        let msg = classify(libc::ENODEV, &t, true).to_string();
        assert!(
            msg.contains("vf_token=…") && !msg.contains("0b7c"),
            "never prints the token: {msg}"
        );
        let e = classify(libc::EACCES, &t, false).to_string();
        assert!(
            e.contains("give vf_token=<uuid>") && e.contains("0000:00:03.0"),
            "{e}"
        );
    }
}
