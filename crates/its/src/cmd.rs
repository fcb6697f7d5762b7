//! ITS commands: 32 bytes, four little-endian doublewords, command number in
//! `DW0[7:0]` (Arm IHI 0069, "ITS commands").

/// A decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Move an event to another collection.
    Movi {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
        /// New collection.
        icid: u16,
    },
    /// Make an event's LPI pending.
    Int {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Clear an event's LPI pending state.
    Clear {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Wait for a redistributor's effects (a no-op: everything is synchronous).
    Sync {
        /// Target PE.
        pe: u64,
    },
    /// Map (or unmap) a DeviceID to an ITT.
    Mapd {
        /// DeviceID.
        device: u32,
        /// EventID bits - 1.
        size: u8,
        /// ITT address (256-byte aligned).
        itt: u64,
        /// Map (true) or unmap.
        valid: bool,
    },
    /// Map (or unmap) a collection to a PE.
    Mapc {
        /// Collection ID.
        icid: u16,
        /// Target PE number (PTA = 0).
        pe: u64,
        /// Map (true) or unmap.
        valid: bool,
    },
    /// Map an event to an LPI in a collection (MAPI when `lpi == event`).
    Mapti {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
        /// Physical LPI INTID.
        lpi: u32,
        /// Collection ID.
        icid: u16,
    },
    /// MAPI: MAPTI with the INTID equal to the EventID.
    Mapi {
        /// DeviceID.
        device: u32,
        /// EventID (and INTID).
        event: u32,
        /// Collection ID.
        icid: u16,
    },
    /// Re-read an event's LPI configuration.
    Inv {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Re-read the configuration of every LPI of a collection's PE.
    Invall {
        /// Collection ID.
        icid: u16,
    },
    /// Move every LPI of one PE to another.
    Movall {
        /// From PE.
        from: u64,
        /// To PE.
        to: u64,
    },
    /// Remove an event's mapping.
    Discard {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// A GICv4 (virtual LPI) command; this ITS has TYPER.Virtual = 0.
    Virtual(u8),
    /// A number that is not a command.
    Unknown(u8),
}

/// Command numbers.
pub mod op {
    /// MOVI
    pub const MOVI: u8 = 0x01;
    /// INT
    pub const INT: u8 = 0x03;
    /// CLEAR
    pub const CLEAR: u8 = 0x04;
    /// SYNC
    pub const SYNC: u8 = 0x05;
    /// MAPD
    pub const MAPD: u8 = 0x08;
    /// MAPC
    pub const MAPC: u8 = 0x09;
    /// MAPTI
    pub const MAPTI: u8 = 0x0a;
    /// MAPI
    pub const MAPI: u8 = 0x0b;
    /// INV
    pub const INV: u8 = 0x0c;
    /// INVALL
    pub const INVALL: u8 = 0x0d;
    /// MOVALL
    pub const MOVALL: u8 = 0x0e;
    /// DISCARD
    pub const DISCARD: u8 = 0x0f;
}

fn dev(dw: &[u64; 4]) -> u32 {
    (dw[0] >> 32) as u32
}

fn event(dw: &[u64; 4]) -> u32 {
    dw[1] as u32
}

fn icid(dw: &[u64; 4]) -> u16 {
    dw[2] as u16
}

fn rdbase(v: u64) -> u64 {
    (v >> 16) & 0xf_ffff_ffff
}

impl Command {
    /// Decodes 32 bytes.
    pub fn decode(b: &[u8; 32]) -> Self {
        let mut dw = [0u64; 4];
        for (i, d) in dw.iter_mut().enumerate() {
            *d = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        }
        let n = dw[0] as u8;
        match n {
            op::MOVI => Self::Movi {
                device: dev(&dw),
                event: event(&dw),
                icid: icid(&dw),
            },
            op::INT => Self::Int {
                device: dev(&dw),
                event: event(&dw),
            },
            op::CLEAR => Self::Clear {
                device: dev(&dw),
                event: event(&dw),
            },
            op::SYNC => Self::Sync { pe: rdbase(dw[2]) },
            op::MAPD => Self::Mapd {
                device: dev(&dw),
                size: (dw[1] & 0x1f) as u8,
                itt: dw[2] & 0x000f_ffff_ffff_ff00,
                valid: dw[2] >> 63 == 1,
            },
            op::MAPC => Self::Mapc {
                icid: icid(&dw),
                pe: rdbase(dw[2]),
                valid: dw[2] >> 63 == 1,
            },
            op::MAPTI => Self::Mapti {
                device: dev(&dw),
                event: event(&dw),
                lpi: (dw[1] >> 32) as u32,
                icid: icid(&dw),
            },
            op::MAPI => Self::Mapi {
                device: dev(&dw),
                event: event(&dw),
                icid: icid(&dw),
            },
            op::INV => Self::Inv {
                device: dev(&dw),
                event: event(&dw),
            },
            op::INVALL => Self::Invall { icid: icid(&dw) },
            op::MOVALL => Self::Movall {
                from: rdbase(dw[2]),
                to: rdbase(dw[3]),
            },
            op::DISCARD => Self::Discard {
                device: dev(&dw),
                event: event(&dw),
            },
            n if n & 0xe0 == 0x20 => Self::Virtual(n),
            n => Self::Unknown(n),
        }
    }

    /// Encodes the command (what a driver writes to the queue).
    pub fn encode(&self) -> [u8; 32] {
        let mut dw = [0u64; 4];
        let de = |d: u32, n: u8| (u64::from(d) << 32) | u64::from(n);
        match *self {
            Self::Movi {
                device,
                event,
                icid,
            } => dw = [de(device, op::MOVI), u64::from(event), u64::from(icid), 0],
            Self::Int { device, event } => dw = [de(device, op::INT), u64::from(event), 0, 0],
            Self::Clear { device, event } => dw = [de(device, op::CLEAR), u64::from(event), 0, 0],
            Self::Sync { pe } => dw = [u64::from(op::SYNC), 0, pe << 16, 0],
            Self::Mapd {
                device,
                size,
                itt,
                valid,
            } => {
                dw = [
                    de(device, op::MAPD),
                    u64::from(size & 0x1f),
                    (itt & 0x000f_ffff_ffff_ff00) | (u64::from(valid) << 63),
                    0,
                ]
            }
            Self::Mapc { icid, pe, valid } => {
                dw = [
                    u64::from(op::MAPC),
                    0,
                    u64::from(icid) | ((pe & 0xf_ffff_ffff) << 16) | (u64::from(valid) << 63),
                    0,
                ]
            }
            Self::Mapti {
                device,
                event,
                lpi,
                icid,
            } => {
                dw = [
                    de(device, op::MAPTI),
                    u64::from(event) | (u64::from(lpi) << 32),
                    u64::from(icid),
                    0,
                ]
            }
            Self::Mapi {
                device,
                event,
                icid,
            } => dw = [de(device, op::MAPI), u64::from(event), u64::from(icid), 0],
            Self::Inv { device, event } => dw = [de(device, op::INV), u64::from(event), 0, 0],
            Self::Invall { icid } => dw = [u64::from(op::INVALL), 0, u64::from(icid), 0],
            Self::Movall { from, to } => dw = [u64::from(op::MOVALL), 0, from << 16, to << 16],
            Self::Discard { device, event } => {
                dw = [de(device, op::DISCARD), u64::from(event), 0, 0]
            }
            Self::Virtual(n) | Self::Unknown(n) => dw[0] = u64::from(n),
        }
        let mut b = [0u8; 32];
        for (i, d) in dw.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// The command number.
    pub fn number(&self) -> u8 {
        self.encode()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips() {
        let cmds = [
            Command::Movi {
                device: 7,
                event: 255,
                icid: 3,
            },
            Command::Int {
                device: 0xffff,
                event: 0xffff_ffff,
            },
            Command::Clear {
                device: 2,
                event: 20,
            },
            Command::Sync { pe: 3 },
            Command::Mapd {
                device: 2,
                size: 7,
                itt: 0x4000_0100,
                valid: true,
            },
            Command::Mapd {
                device: 2,
                size: 0,
                itt: 0,
                valid: false,
            },
            Command::Mapc {
                icid: 0xffff,
                pe: 1,
                valid: true,
            },
            Command::Mapti {
                device: 2,
                event: 20,
                lpi: 8195,
                icid: 3,
            },
            Command::Mapi {
                device: 1,
                event: 9000,
                icid: 0,
            },
            Command::Inv {
                device: 2,
                event: 20,
            },
            Command::Invall { icid: 3 },
            Command::Movall { from: 1, to: 2 },
            Command::Discard {
                device: 2,
                event: 20,
            },
            Command::Virtual(0x2a),
            Command::Unknown(0x99),
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()), c, "{c:?}");
        }
    }

    #[test]
    fn field_positions_match_the_architecture() {
        // MAPTI dev 2, event 20 -> 8195 col 3, laid out by hand.
        let mut b = [0u8; 32];
        b[0] = 0x0a;
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b[8..12].copy_from_slice(&20u32.to_le_bytes());
        b[12..16].copy_from_slice(&8195u32.to_le_bytes());
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(
            Command::decode(&b),
            Command::Mapti {
                device: 2,
                event: 20,
                lpi: 8195,
                icid: 3
            }
        );
        // MAPC: ICID in DW2[15:0], RDbase in DW2[51:16], V in DW2[63].
        let m = Command::Mapc {
            icid: 3,
            pe: 3,
            valid: true,
        }
        .encode();
        assert_eq!(
            u64::from_le_bytes(m[16..24].try_into().unwrap()),
            (1 << 63) | (3 << 16) | 3
        );
    }
}
