//! Throughput of the virtio-mem device core on the host, in one run against a
//! baseline: a naive model of the same rules on a `Vec<bool>` (one bool per
//! block, linear scans to count).
//!
//! Workload, shaped like the Linux driver: plug a 64 GiB region with 64-block
//! requests (one Linux memory block each), unplug it again with single-block
//! requests (the driver's fallback), then STATE queries of 64 blocks.
//!
//! Run: `cargo bench -p virtio --bench mem_core`

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio::mem::state::{RESP_ACK, RESP_ERROR, RESP_NACK};
use virtio::mem::{Geometry, Mem, MemBackend, Request, Response};

const MIB: u64 = 1 << 20;
const BASE: u64 = 1 << 40;
const REGION: u64 = 64 << 30;
const BLOCK: u64 = 2 * MIB;

struct Nop;
impl MemBackend for Nop {
    fn map_slot(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn unmap_slot(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
    fn populate(&self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), String> {
        Ok(())
    }
}

/// The baseline: same answers, one bool per block.
struct Naive {
    blocks: Vec<bool>,
    requested: u64,
}

impl Naive {
    fn plugged(&self) -> u64 {
        self.blocks.iter().filter(|b| **b).count() as u64 * BLOCK
    }

    fn handle(&mut self, r: Request) -> u16 {
        let range = |addr: u64, n: u16| {
            let off = addr.checked_sub(BASE)?;
            (n > 0 && off % BLOCK == 0 && off + u64::from(n) * BLOCK <= REGION)
                .then(|| ((off / BLOCK) as usize, usize::from(n)))
        };
        match r {
            Request::Plug { addr, nb_blocks } => {
                let Some((f, n)) = range(addr, nb_blocks) else {
                    return RESP_ERROR;
                };
                if self.plugged() + n as u64 * BLOCK > self.requested {
                    return RESP_NACK;
                }
                if self.blocks[f..f + n].iter().any(|b| *b) {
                    return RESP_ERROR;
                }
                self.blocks[f..f + n].fill(true);
                RESP_ACK
            }
            Request::Unplug { addr, nb_blocks } => {
                let Some((f, n)) = range(addr, nb_blocks) else {
                    return RESP_ERROR;
                };
                if !self.blocks[f..f + n].iter().all(|b| *b) {
                    return RESP_ERROR;
                }
                self.blocks[f..f + n].fill(false);
                RESP_ACK
            }
            Request::State { addr, nb_blocks } => match range(addr, nb_blocks) {
                Some((f, n)) => {
                    let c = self.blocks[f..f + n].iter().filter(|b| **b).count();
                    let _ = c;
                    RESP_ACK
                }
                None => RESP_ERROR,
            },
            _ => RESP_ACK,
        }
    }
}

fn workload() -> Vec<(&'static str, Vec<Request>, u64)> {
    let plug: Vec<Request> = (0..REGION / (64 * BLOCK))
        .map(|i| Request::Plug {
            addr: BASE + i * 64 * BLOCK,
            nb_blocks: 64,
        })
        .collect();
    let unplug: Vec<Request> = (0..REGION / BLOCK)
        .map(|i| Request::Unplug {
            addr: BASE + i * BLOCK,
            nb_blocks: 1,
        })
        .collect();
    let state: Vec<Request> = (0..REGION / (64 * BLOCK))
        .map(|i| Request::State {
            addr: BASE + i * 64 * BLOCK,
            nb_blocks: 64,
        })
        .collect();
    vec![
        ("plug 64 GiB, 64-block requests", plug, REGION),
        ("unplug 64 GiB, 1-block requests", unplug, REGION),
        ("state, 64-block requests", state, 0),
    ]
}

fn rate(n: usize, bytes: u64, t: Duration) -> (f64, f64) {
    (
        n as f64 / t.as_secs_f64(),
        bytes as f64 / t.as_secs_f64() / (1u64 << 30) as f64,
    )
}

fn main() {
    let g = Geometry {
        addr: BASE,
        region_size: REGION,
        block_size: BLOCK,
        slot_size: 128 * MIB,
        node_id: 0,
    };
    let dev = Mem::new(g, REGION, false, Arc::new(Nop), None);
    let mut naive = Naive {
        blocks: vec![false; (REGION / BLOCK) as usize],
        requested: REGION,
    };
    println!(
        "virtio-mem device core, {} GiB region of 2 MiB blocks, host CPU, single thread",
        REGION >> 30
    );
    println!();
    println!("| phase | requests | Caravel req/s | Caravel GiB/s | Vec<bool> baseline req/s | baseline GiB/s | speed-up |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, reqs, bytes) in workload() {
        // Best of 3 for each.
        let mut best = Duration::MAX;
        let mut best_naive = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for r in &reqs {
                let resp: Response = dev.shared().handle(*r);
                assert_eq!(resp.kind, RESP_ACK, "{r:?}");
            }
            best = best.min(t.elapsed());
            let t = Instant::now();
            for r in &reqs {
                assert_eq!(naive.handle(*r), RESP_ACK);
            }
            best_naive = best_naive.min(t.elapsed());
            // Restore the starting point of this phase for the next round.
            let undo: Vec<Request> = reqs
                .iter()
                .filter_map(|r| match *r {
                    Request::Plug { addr, nb_blocks } => Some(Request::Unplug { addr, nb_blocks }),
                    Request::Unplug { addr, nb_blocks } => Some(Request::Plug { addr, nb_blocks }),
                    _ => None,
                })
                .collect();
            for r in &undo {
                dev.shared().handle(*r);
                naive.handle(*r);
            }
        }
        // Leave the state as the phase does (plugged after "plug", empty after "unplug").
        for r in &reqs {
            dev.shared().handle(*r);
            naive.handle(*r);
        }
        let (rps, gbs) = rate(reqs.len(), bytes, best);
        let (nrps, ngbs) = rate(reqs.len(), bytes, best_naive);
        let gib = |v: f64| {
            if bytes == 0 {
                "-".to_string()
            } else {
                format!("{v:.0}")
            }
        };
        println!(
            "| {name} | {} | {rps:.0} | {} | {nrps:.0} | {} | {:.1}x |",
            reqs.len(),
            gib(gbs),
            gib(ngbs),
            rps / nrps
        );
    }
}
