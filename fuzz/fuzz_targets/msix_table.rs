//! Fuzzes MSI-X table and PBA accesses of every width and offset, mixed
//! with control writes and vector triggers: no panic, and a masked vector
//! never delivers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pci::{MsixEvent, MsixTable, Trigger};

fuzz_target!(|data: &[u8]| {
    let Some((&n, ops)) = data.split_first() else {
        return;
    };
    let mut t = MsixTable::new(u16::from(n % 33) + 1);
    for op in ops.chunks_exact(8) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let len = [1usize, 2, 4, 8][usize::from(op[3] & 3)];
        let value = &op[4..8];
        match op[0] % 6 {
            0 => {
                let mut d = vec![0u8; len];
                t.read_table(offset, &mut d);
            }
            1 => {
                let mut v = value.to_vec();
                v.resize(len, 0);
                for e in t.write_table(offset, &v) {
                    if let MsixEvent::DeliverPending(vector) = e {
                        assert!(!t.masked(vector) && !t.pending(vector));
                    }
                }
            }
            2 => {
                let mut d = vec![0u8; len];
                t.read_pba(offset, &mut d);
            }
            3 => {
                let _ = t.write_control(u16::from_le_bytes([value[0], value[1]]));
            }
            4 => {
                let v = u16::from_le_bytes([value[0], value[1]]) % 40;
                if let Trigger::Deliver { .. } = t.trigger(v) {
                    assert!(t.enabled() && !t.masked(v));
                }
            }
            _ => t.reset(),
        }
    }
});
