//! The VF token: a UUID shared by an SR-IOV PF's userspace driver and the
//! users of its VFs, and the device-name string that carries it.

use std::ffi::CString;
use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::PciAddress;

/// A VF token. Its 16 bytes are in string order (RFC 4122), as the kernel's
/// `uuid_parse` and `VFIO_DEVICE_FEATURE_PCI_VF_TOKEN` expect. It is never
/// printed in full by `Debug`, since whoever knows it can open the VFs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VfToken(Uuid);

impl VfToken {
    /// The 16 bytes the feature ioctl takes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// A random token (for PF drivers that pick their own).
    pub fn random() -> std::io::Result<Self> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))?;
        Ok(Self(uuid::Builder::from_random_bytes(b).into_uuid()))
    }
}

impl FromStr for VfToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // The kernel parses exactly the 36-character hyphenated form.
        if s.len() != 36 {
            return Err(format!(
                "`{s}` is not a UUID like 0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11 (36 characters)"
            ));
        }
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| format!("`{s}` is not a UUID: {e}"))
    }
}

impl fmt::Display for VfToken {
    /// The hyphenated lowercase form the kernel parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

impl fmt::Debug for VfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VfToken(…)")
    }
}

/// The name `VFIO_GROUP_GET_DEVICE_FD` takes: the PCI address, then
/// ` vf_token=<uuid>` when a token is presented.
pub fn device_name(bdf: PciAddress, token: Option<&VfToken>) -> CString {
    let s = match token {
        Some(t) => format!("{bdf} vf_token={t}"),
        None => bdf.to_string(),
    };
    CString::new(s).expect("no NUL in a PCI address or UUID")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11";

    #[test]
    fn names_carry_the_token_in_the_kernels_format() {
        let bdf: PciAddress = "0000:00:13.2".parse().unwrap();
        assert_eq!(device_name(bdf, None).to_str().unwrap(), "0000:00:13.2");
        let t: VfToken = T.parse().unwrap();
        let name = device_name(bdf, Some(&t));
        assert_eq!(name.to_str().unwrap(), format!("0000:00:13.2 vf_token={T}"));
        assert!(name.as_bytes().len() <= 64);
    }

    #[test]
    fn tokens_parse_strictly_and_stay_secret_in_debug() {
        let t: VfToken = T.to_uppercase().parse().unwrap();
        assert_eq!(t.to_string(), T, "printed lowercase");
        assert_eq!(t.as_bytes()[0], 0x0b, "string order, not GUID order");
        assert_eq!(format!("{t:?}"), "VfToken(…)");
        for bad in [
            "",
            "0b7c5f5e6a0b4a1f9f3a6f1f0c2d9e11",
            "{0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11}",
            "zb7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11",
        ] {
            assert!(bad.parse::<VfToken>().is_err(), "{bad}");
        }
        assert_ne!(VfToken::random().unwrap(), VfToken::random().unwrap());
    }
}
