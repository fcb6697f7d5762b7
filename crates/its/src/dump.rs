//! A readable rendering of decoded ITS tables: collections, then every
//! device -> event -> LPI -> collection -> PE, then what is wrong.

use std::fmt;

use crate::tables::Decoded;

fn target(pe: Option<&Option<u32>>) -> String {
    match pe {
        Some(Some(pe)) => format!("PE {pe}"),
        Some(None) => "not mapped".into(),
        None => "missing collection".into(),
    }
}

impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "collections ({}):", self.collections.len())?;
        for (icid, pe) in &self.collections {
            writeln!(f, "  ICID {icid} -> {}", target(Some(pe)))?;
        }
        writeln!(f, "devices ({}):", self.devices.len())?;
        for (id, dev) in &self.devices {
            writeln!(
                f,
                "  device {id}: ITT {:#x}, {} EventID bits, {} of {} events mapped",
                dev.itt,
                u32::from(dev.size) + 1,
                dev.events.len(),
                dev.nr_events()
            )?;
            for (ev, ite) in &dev.events {
                writeln!(
                    f,
                    "    event {ev} -> LPI {} -> ICID {} -> {}",
                    ite.lpi,
                    ite.icid,
                    target(self.collections.get(&ite.icid))
                )?;
            }
        }
        for (title, list) in [("issues", &self.issues), ("warnings", &self.warnings)] {
            writeln!(f, "{title} ({}):", list.len())?;
            for line in list {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::tables::Decoded;
    use crate::{Device, Ite};

    #[test]
    fn renders_the_map_and_the_findings() {
        let mut d = Decoded::default();
        d.collections.insert(3, Some(1));
        d.collections.insert(4, None);
        let events = BTreeMap::from([
            (20, Ite { lpi: 8195, icid: 3 }),
            (21, Ite { lpi: 8196, icid: 4 }),
        ]);
        d.devices.insert(
            2,
            Device {
                size: 7,
                itt: 0x5_0000,
                events,
            },
        );
        d.issues
            .push("device 9 event 1: LPI 7 outside 8192..16384".into());
        assert_eq!(
            d.to_string(),
            "collections (2):\n  ICID 3 -> PE 1\n  ICID 4 -> not mapped\n\
             devices (1):\n  device 2: ITT 0x50000, 8 EventID bits, 2 of 256 events mapped\n\
             \x20   event 20 -> LPI 8195 -> ICID 3 -> PE 1\n\
             \x20   event 21 -> LPI 8196 -> ICID 4 -> not mapped\n\
             issues (1):\n  device 9 event 1: LPI 7 outside 8192..16384\nwarnings (0):\n"
        );
    }
}
