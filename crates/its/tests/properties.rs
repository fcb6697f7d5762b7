//! Property tests over random command streams (a seeded xorshift generator;
//! every seed is reported on failure):
//!
//! 1. the model delivers exactly what a naive reference (hash maps, the rules
//!    written out plainly) predicts, command after command;
//! 2. saving and restoring into a fresh instance at any point changes nothing
//!    about the future: both deliver the same for the rest of the stream.

mod harness;

use std::collections::HashMap;

use harness::*;
use its::Command;

const NR_PES: u32 = 3;
const TABLE_ENTRIES: u32 = 8192; // one 64 KiB page of 8-byte entries
const MAX_LPI: u32 = 16384; // PROPBASER.IDbits = 13

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Mostly small IDs (collisions), sometimes out of range.
    fn id(&mut self, small: u32, big: u32) -> u32 {
        if self.below(10) == 0 {
            big
        } else {
            self.below(u64::from(small)) as u32
        }
    }
}

fn random_command(r: &mut Rng) -> Command {
    let device = r.id(5, 9000);
    let event = r.id(6, 300);
    let icid = r.id(4, 9000) as u16;
    let pe = u64::from(r.id(NR_PES + 1, 7));
    let lpi = if r.below(10) == 0 {
        [100, 20000][r.below(2) as usize]
    } else {
        8192 + r.below(8) as u32
    };
    match r.below(14) {
        0 | 1 => Command::Mapd {
            device,
            size: r.below(4) as u8 + if r.below(20) == 0 { 16 } else { 0 },
            itt: Machine::itt(device % 16),
            valid: r.below(5) != 0,
        },
        2 | 3 => Command::Mapc {
            icid,
            pe,
            valid: r.below(5) != 0,
        },
        4 | 5 => Command::Mapti {
            device,
            event,
            lpi,
            icid,
        },
        6 => Command::Mapi {
            device,
            event: 8192 + r.below(4) as u32,
            icid,
        },
        7..=9 => Command::Int { device, event },
        10 => Command::Movi {
            device,
            event,
            icid,
        },
        11 => Command::Movall {
            from: pe,
            to: u64::from(r.id(NR_PES, 5)),
        },
        12 => Command::Discard { device, event },
        _ => [
            Command::Clear { device, event },
            Command::Inv { device, event },
            Command::Invall { icid },
            Command::Sync { pe },
        ][r.below(4) as usize],
    }
}

/// The rules, written plainly.
#[derive(Default)]
struct Reference {
    devices: HashMap<u32, u8>,
    ites: HashMap<(u32, u32), (u32, u16)>,
    colls: HashMap<u16, Option<u32>>,
    targets: HashMap<u32, u32>,
}

impl Reference {
    fn lpi_refs(&self, lpi: u32) -> usize {
        self.ites.values().filter(|(l, _)| *l == lpi).count()
    }

    fn drop_ite(&mut self, key: (u32, u32)) {
        if let Some((lpi, _)) = self.ites.remove(&key) {
            if self.lpi_refs(lpi) == 0 {
                self.targets.remove(&lpi);
            }
        }
    }

    fn mapped(&self, icid: u16) -> Option<u32> {
        self.colls.get(&icid).copied().flatten()
    }

    /// Returns the delivery an INT (or nothing) causes.
    fn apply(&mut self, c: Command) -> Vec<(u32, u32)> {
        // MAPI is MAPTI with the INTID equal to the EventID.
        let c = match c {
            Command::Mapi {
                device,
                event,
                icid,
            } => Command::Mapti {
                device,
                event,
                lpi: event,
                icid,
            },
            c => c,
        };
        match c {
            Command::Mapd {
                device,
                size,
                valid,
                ..
            } => {
                if device >= TABLE_ENTRIES || (valid && size > 15) {
                    return vec![];
                }
                let keys: Vec<_> = self
                    .ites
                    .keys()
                    .filter(|(d, _)| *d == device)
                    .copied()
                    .collect();
                for k in keys {
                    self.drop_ite(k);
                }
                self.devices.remove(&device);
                if valid {
                    self.devices.insert(device, size);
                }
            }
            Command::Mapc { icid, pe, valid } => {
                if pe >= u64::from(NR_PES) {
                    return vec![];
                }
                if !valid {
                    if self.ites.values().any(|(_, i)| *i == icid) {
                        self.colls.insert(icid, None);
                    } else {
                        self.colls.remove(&icid);
                    }
                } else if self.colls.contains_key(&icid) || u32::from(icid) < TABLE_ENTRIES {
                    self.colls.insert(icid, Some(pe as u32));
                    let lpis: Vec<u32> = self
                        .ites
                        .values()
                        .filter(|(_, i)| *i == icid)
                        .map(|(l, _)| *l)
                        .collect();
                    for l in lpis {
                        self.targets.insert(l, pe as u32);
                    }
                }
            }
            Command::Mapti {
                device,
                event,
                lpi,
                icid,
            } => {
                let Some(&size) = self.devices.get(&device) else {
                    return vec![];
                };
                if u64::from(event) >= 1 << (size + 1)
                    || !(8192..MAX_LPI).contains(&lpi)
                    || self.ites.contains_key(&(device, event))
                {
                    return vec![];
                }
                if let std::collections::hash_map::Entry::Vacant(e) = self.colls.entry(icid) {
                    if u32::from(icid) >= TABLE_ENTRIES {
                        return vec![];
                    }
                    e.insert(None);
                }
                self.ites.insert((device, event), (lpi, icid));
                if let Some(pe) = self.mapped(icid) {
                    self.targets.insert(lpi, pe);
                }
            }
            Command::Int { device, event } => {
                if let Some(&(lpi, icid)) = self.ites.get(&(device, event)) {
                    if self.mapped(icid).is_some() {
                        if let Some(&pe) = self.targets.get(&lpi) {
                            return vec![(pe, lpi)];
                        }
                    }
                }
            }
            Command::Movi {
                device,
                event,
                icid,
            } => {
                if let Some(&(lpi, old)) = self.ites.get(&(device, event)) {
                    if let (Some(_), Some(pe)) = (self.mapped(old), self.mapped(icid)) {
                        self.ites.insert((device, event), (lpi, icid));
                        self.targets.insert(lpi, pe);
                    }
                }
            }
            Command::Movall { from, to } if from < u64::from(NR_PES) && to < u64::from(NR_PES) => {
                for t in self.targets.values_mut().filter(|t| u64::from(**t) == from) {
                    *t = to as u32;
                }
            }
            Command::Discard { device, event } => self.drop_ite((device, event)),
            _ => {}
        }
        vec![]
    }
}

fn machine() -> Machine {
    let mut m = Machine::new(NR_PES as usize);
    m.enable_defaults();
    for lpi in 8192..8200 {
        m.set_config(lpi, LPI_PROP_DEFAULT);
    }
    m
}

#[test]
fn random_streams_match_a_naive_reference() {
    for seed in 1..=300u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut m = machine();
        let mut reference = Reference::default();
        for step in 0..200 {
            let c = random_command(&mut r);
            m.cmd(c);
            let want = reference.apply(c);
            let got = m.delivered();
            assert_eq!(
                got,
                want,
                "seed {seed}, step {step}, {c:?}; drops: {:?}",
                m.its.dropped().last()
            );
        }
    }
}

#[test]
fn save_and_restore_anywhere_changes_nothing_about_the_future() {
    for seed in 1..=100u64 {
        let mut r = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
        let mut m = machine();
        let cut = r.below(150) as usize;
        let stream: Vec<Command> = (0..200).map(|_| random_command(&mut r)).collect();
        for c in &stream[..cut] {
            m.cmd(*c);
        }
        m.delivered();
        let mut copy = m.migrate();
        assert_eq!(
            copy.its.devices(),
            m.its.devices(),
            "seed {seed}: devices restored"
        );
        assert_eq!(
            copy.its.collections(),
            m.its.collections(),
            "seed {seed}: collections restored"
        );
        for (i, c) in stream[cut..].iter().enumerate() {
            m.cmd(*c);
            copy.cmd(*c);
            assert_eq!(
                copy.delivered(),
                m.delivered(),
                "seed {seed}, step {} after the restore: {c:?}",
                i
            );
        }
    }
}
