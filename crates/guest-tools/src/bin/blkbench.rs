//! `caravel-blkbench DEVICE seq|rand BLOCK_SIZE SECONDS [JOBS]`: reads DEVICE
//! with O_DIRECT for SECONDS, sequentially or at random block-aligned
//! offsets, from JOBS threads at once (default 1; each keeps one request in
//! flight, so JOBS is the queue depth the device sees), and prints
//! `BLKBENCH mode=.. bs=.. jobs=.. ops=.. bytes=.. secs=.. mib_s=.. iops=..`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A heap buffer aligned for O_DIRECT.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + 4096];
        let start = (buf.as_ptr() as usize).next_multiple_of(4096) - buf.as_ptr() as usize;
        Self { buf, start, len }
    }

    fn slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// One job: reads until `end`, returns the number of reads.
fn job(
    f: &File,
    seq: bool,
    bs: usize,
    blocks: u64,
    seed: u64,
    end: Instant,
) -> std::io::Result<u64> {
    let mut buf = Aligned::new(bs);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let (mut ops, mut next) = (0u64, seed % blocks);
    while Instant::now() < end {
        let block = if seq {
            next = (next + 1) % blocks;
            next
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % blocks
        };
        f.read_exact_at(buf.slice(), block * bs as u64)?;
        ops += 1;
    }
    Ok(ops)
}

const USAGE: &str = "usage: caravel-blkbench DEVICE seq|rand BLOCK_SIZE SECONDS [JOBS]";

/// A positive number argument, or the usage and exit status 2.
fn number<T: std::str::FromStr + PartialOrd + Default>(arg: &str, what: &str) -> T {
    match arg.parse::<T>() {
        Ok(v) if v > T::default() => v,
        _ => {
            eprintln!("caravel-blkbench: {what} '{arg}' is not a positive number\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn run(dev: &str, seq: bool, bs: usize, secs: u64, jobs: u64) -> std::io::Result<u64> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let blocks = f.seek(SeekFrom::End(0))? / bs as u64;
    if blocks == 0 {
        return Err(std::io::Error::other(
            "the device is smaller than one block",
        ));
    }
    let f = Arc::new(f);
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..jobs)
        .map(|seed| {
            let f = f.clone();
            std::thread::spawn(move || job(&f, seq, bs, blocks, seed, end))
        })
        .collect();
    let mut ops = 0;
    for t in threads {
        ops += t
            .join()
            .map_err(|_| std::io::Error::other("a job panicked"))??;
    }
    Ok(ops)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&args.len()) || !["seq", "rand"].contains(&args[2].as_str()) {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let (dev, mode) = (&args[1], args[2].as_str());
    let bs: usize = number(&args[3], "BLOCK_SIZE");
    let secs: u64 = number(&args[4], "SECONDS");
    let jobs: u64 = args.get(5).map_or(1, |j| number(j, "JOBS"));
    let start = Instant::now();
    let ops = match run(dev, mode == "seq", bs, secs, jobs) {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("caravel-blkbench: {dev}: {e}");
            std::process::exit(1);
        }
    };
    let t = start.elapsed().as_secs_f64();
    let bytes = ops * bs as u64;
    println!(
        "BLKBENCH mode={mode} bs={bs} jobs={jobs} ops={ops} bytes={bytes} secs={t:.2} mib_s={:.1} iops={:.0}",
        bytes as f64 / t / (1 << 20) as f64,
        ops as f64 / t
    );
}
