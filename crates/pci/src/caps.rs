//! Capability layouts.

/// PCI Express capability ID.
pub const CAP_ID_PCIE: u8 = 0x10;
/// MSI-X capability ID.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Vendor-specific capability ID (virtio's structures use it).
pub const CAP_ID_VENDOR: u8 = 0x09;

/// Device/port type: root complex integrated endpoint (a function directly on
/// the host bridge's bus, as all of Caravel's are).
const PCIE_TYPE_RC_INTEGRATED_ENDPOINT: u16 = 0x9;

/// A PCI Express capability (version 2, 0x3c bytes) for an endpoint directly
/// on the root complex. Its presence tells the guest that extended
/// configuration space (from 0x100, through ECAM) exists.
/// Returns `(body, write mask)`.
pub fn pcie_endpoint_capability() -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![0u8; 0x3c];
    b[0] = CAP_ID_PCIE;
    let caps: u16 = 2 | (PCIE_TYPE_RC_INTEGRATED_ENDPOINT << 4);
    b[2..4].copy_from_slice(&caps.to_le_bytes());
    // Device capabilities: 128-byte max payload, function-level reset.
    b[4..8].copy_from_slice(&(1u32 << 28).to_le_bytes());
    // Device capabilities 2: completion timeout disable supported, ARI forwarding no.
    b[0x24..0x28].copy_from_slice(&(1u32 << 4).to_le_bytes());
    let mut w = vec![0u8; 0x3c];
    // Device control: error reporting, relaxed ordering, payload, no-snoop (not FLR: bit 15).
    w[8] = 0xff;
    w[9] = 0x7f;
    // Device status: error bits are write-1-to-clear; treated as read-only zero here.
    // Device control 2: completion timeout value/disable.
    w[0x28] = 0x1f;
    (b, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcie_capability_identifies_an_integrated_endpoint() {
        let (b, w) = pcie_endpoint_capability();
        assert_eq!(b.len(), 0x3c);
        assert_eq!(w.len(), b.len());
        assert_eq!(b[0], CAP_ID_PCIE);
        let caps = u16::from_le_bytes([b[2], b[3]]);
        assert_eq!(caps & 0xf, 2, "capability version 2");
        assert_eq!((caps >> 4) & 0xf, 9, "RC integrated endpoint");
    }
}
