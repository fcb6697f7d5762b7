//! `caravel-blkbench DEVICE seq|rand BLOCK_SIZE SECONDS`: reads DEVICE with
//! O_DIRECT for SECONDS, sequentially or at random block-aligned offsets, and
//! prints `BLKBENCH mode=.. bs=.. ops=.. bytes=.. secs=.. mib_s=.. iops=..`.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: caravel-blkbench DEVICE seq|rand BLOCK_SIZE SECONDS");
        std::process::exit(2);
    }
    let (dev, mode) = (&args[1], args[2].as_str());
    let bs: usize = args[3].parse().expect("block size");
    let secs: u64 = args[4].parse().expect("seconds");
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .expect("open device");
    let size = f.seek(SeekFrom::End(0)).expect("size");
    let blocks = size / bs as u64;
    assert!(blocks > 0, "device smaller than one block");
    let mut buf = Aligned::new(bs);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut ops, mut next) = (0u64, 0u64);
    let start = Instant::now();
    let end = Duration::from_secs(secs);
    while start.elapsed() < end {
        let block = if mode == "rand" {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % blocks
        } else {
            next = (next + 1) % blocks;
            next
        };
        f.seek(SeekFrom::Start(block * bs as u64)).expect("seek");
        f.read_exact(buf.slice()).expect("read");
        ops += 1;
    }
    let t = start.elapsed().as_secs_f64();
    let bytes = ops * bs as u64;
    println!(
        "BLKBENCH mode={mode} bs={bs} ops={ops} bytes={bytes} secs={t:.2} mib_s={:.1} iops={:.0}",
        bytes as f64 / t / (1 << 20) as f64,
        ops as f64 / t
    );
}
