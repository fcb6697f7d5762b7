//! `caravel-memhog`: a guest working set of anonymous memory, for the
//! balloon and memory autopilot scenarios.
//!
//! * `caravel-memhog hold MIB`: maps and writes MIB MiB, prints
//!   `MEMHOG held=MIB`, and exits (freeing it).
//! * `caravel-memhog ramp STEP_MIB STEP_MS SIZE:SECONDS...`: moves the
//!   working set to each SIZE (MiB) in turn, STEP_MIB every STEP_MS
//!   milliseconds, then holds it SECONDS; prints `MEMHOG t=.. ws=..` at
//!   every change and `MEMHOG done` at the end.

use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// One mapped and written chunk of anonymous memory, unmapped on drop.
struct Chunk {
    addr: *mut libc::c_void,
    len: usize,
}

impl Chunk {
    fn new(len: usize) -> Option<Self> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return None;
        }
        let pages = addr.cast::<u8>();
        for off in (0..len).step_by(4096) {
            // SAFETY: `off` is inside the mapping just made, which is writable.
            unsafe { pages.add(off).write_volatile(1) };
        }
        Some(Self { addr, len })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by Chunk::new and is unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn usage() -> ! {
    eprintln!("usage: caravel-memhog hold MIB | ramp STEP_MIB STEP_MS SIZE:SECONDS...");
    std::process::exit(2)
}

fn number(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| usage())
}

fn ramp(step: usize, every: Duration, targets: &[(usize, u64)]) {
    let start = Instant::now();
    let mut chunks: Vec<Chunk> = Vec::new();
    let ws = |c: &[Chunk]| c.iter().map(|c| c.len).sum::<usize>() / MIB;
    for &(size, hold) in targets {
        while ws(&chunks) != size {
            let now = ws(&chunks);
            if now < size {
                let Some(c) = Chunk::new(step.min(size - now) * MIB) else {
                    println!("MEMHOG mmap failed at ws={now}");
                    std::process::exit(1);
                };
                chunks.push(c);
            } else {
                // Shrink: drop the last chunk (split one that is too big).
                let last = chunks.pop().map_or(0, |c| c.len / MIB);
                let keep = last.saturating_sub(step.min(now - size));
                if keep > 0 {
                    chunks.push(Chunk::new(keep * MIB).unwrap_or_else(|| std::process::exit(1)));
                }
            }
            println!(
                "MEMHOG t={:.1} ws={}",
                start.elapsed().as_secs_f64(),
                ws(&chunks)
            );
            std::thread::sleep(every);
        }
        std::thread::sleep(Duration::from_secs(hold));
    }
    println!("MEMHOG done t={:.1}", start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hold") if args.len() == 2 => {
            let mib = number(&args[1]);
            match Chunk::new(mib * MIB) {
                Some(_c) => println!("MEMHOG held={mib}"),
                None => {
                    println!("MEMHOG mmap failed");
                    std::process::exit(1)
                }
            }
        }
        Some("ramp") if args.len() >= 4 => {
            let step = number(&args[1]).max(1);
            let every = Duration::from_millis(number(&args[2]) as u64);
            let targets: Vec<(usize, u64)> = args[3..]
                .iter()
                .map(|t| match t.split_once(':') {
                    Some((s, h)) => (number(s), number(h) as u64),
                    None => usage(),
                })
                .collect();
            ramp(step, every, &targets);
        }
        _ => usage(),
    }
}
