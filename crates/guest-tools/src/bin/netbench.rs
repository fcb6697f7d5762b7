//! `caravel-netbench`: TCP load from inside a test guest, against the host
//! side in `caravel-rig` (`net_bench.rs`), which listens on three ports:
//! a sink (reads and discards), a source (after a `SECS\n` line, writes
//! for that long, then closes) and an echo.
//!
//! ```text
//! caravel-netbench send HOST:PORT SECS [STREAMS]   guest -> host, to the sink
//! caravel-netbench recv HOST:PORT SECS [STREAMS]   host -> guest, from the source
//! caravel-netbench rr HOST:PORT COUNT              1-byte ping-pong with the echo
//! caravel-netbench put HOST:PORT FILE               FILE's bytes to a sink that keeps them
//! ```
//!
//! Stream `i` runs on CPU `i` (modulo the CPUs there are), so with one
//! queue pair per vCPU each stream has its own queue pair. Prints one line:
//! `NETBENCH mode=.. streams=.. bytes=.. secs=.. mib_s=..` or
//! `NETBENCH mode=rr count=.. p50_us=.. p99_us=.. mean_us=..`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
const USAGE: &str = "usage: caravel-netbench send|recv HOST:PORT SECS [STREAMS] \
                     | rr HOST:PORT COUNT | put HOST:PORT FILE";

fn pin_to_cpu(i: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write that local set.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(i % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One guest -> host stream: writes until `secs` have passed.
fn send(addr: &str, secs: f64) -> std::io::Result<u64> {
    let mut c = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; CHUNK];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut bytes = 0u64;
    while Instant::now() < end {
        c.write_all(&buf)?;
        bytes += CHUNK as u64;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    // The sink closes once it has read everything.
    let _ = c.read(&mut [0u8; 1]);
    Ok(bytes)
}

/// One host -> guest stream: asks the source for `secs` of data.
fn recv(addr: &str, secs: f64) -> std::io::Result<u64> {
    let mut c = TcpStream::connect(addr)?;
    writeln!(c, "{secs}")?;
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        match c.read(&mut buf)? {
            0 => return Ok(bytes),
            n => bytes += n as u64,
        }
    }
}

fn streams(mode: &str, addr: &str, secs: f64, n: usize) -> Result<String, String> {
    let t = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (mode, addr) = (mode.to_string(), addr.to_string());
            std::thread::spawn(move || {
                pin_to_cpu(i);
                if mode == "send" {
                    send(&addr, secs)
                } else {
                    recv(&addr, secs)
                }
            })
        })
        .collect();
    let mut bytes = 0u64;
    for h in handles {
        bytes += h
            .join()
            .map_err(|_| "a stream panicked".to_string())?
            .map_err(|e| format!("{mode} {addr}: {e}"))?;
    }
    let took = t.elapsed().as_secs_f64();
    Ok(format!(
        "NETBENCH mode={mode} streams={n} bytes={bytes} secs={took:.3} mib_s={:.2}",
        bytes as f64 / (1 << 20) as f64 / took
    ))
}

fn request_response(addr: &str, count: usize) -> Result<String, String> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("rr {addr}: {e}"))?;
    c.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut lat = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for i in 0..count {
        b[0] = i as u8;
        let t = Instant::now();
        c.write_all(&b).map_err(|e| e.to_string())?;
        c.read_exact(&mut b).map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    Ok(format!(
        "NETBENCH mode=rr count={count} p50_us={:.0} p99_us={:.0} mean_us={mean:.0}",
        pct(0.5),
        pct(0.99)
    ))
}

/// Sends `path` to `addr` in 64 KiB writes, then waits for the peer to close.
fn put(addr: &str, path: &str) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut c = TcpStream::connect(addr).map_err(|e| format!("put {addr}: {e}"))?;
    let t = Instant::now();
    let bytes = std::io::copy(
        &mut std::io::BufReader::with_capacity(CHUNK, &mut f),
        &mut c,
    )
    .map_err(|e| format!("put {addr}: {e}"))?;
    c.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let _ = c.read(&mut [0u8; 1]);
    let took = t.elapsed().as_secs_f64();
    Ok(format!(
        "NETBENCH mode=put bytes={bytes} secs={took:.3} mib_s={:.2}",
        bytes as f64 / (1 << 20) as f64 / took
    ))
}

fn run(args: &[String]) -> Result<String, String> {
    let (mode, addr) = match args {
        [m, a, ..] => (m.as_str(), a.as_str()),
        _ => return Err(USAGE.into()),
    };
    let number = |i: usize, default: Option<f64>| -> Result<f64, String> {
        match args.get(i) {
            Some(v) => v.parse::<f64>().map_err(|_| USAGE.to_string()),
            None => default.ok_or_else(|| USAGE.to_string()),
        }
    };
    match mode {
        "send" | "recv" => {
            let secs = number(2, None)?;
            let n = number(3, Some(1.0))? as usize;
            streams(mode, addr, secs, n.max(1))
        }
        "rr" => request_response(addr, (number(2, None)? as usize).max(1)),
        "put" => put(addr, args.get(2).ok_or_else(|| USAGE.to_string())?),
        _ => Err(USAGE.into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("caravel-netbench: {e}");
            std::process::exit(1);
        }
    }
}
