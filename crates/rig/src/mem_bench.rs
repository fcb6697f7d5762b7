//! `caravel-rig --bench-mem`: virtio-mem resize latency, Caravel vs QEMU's
//! virtio-mem-pci (q35), same guest, same rig run.
//!
//! For 512 MiB and 1 GiB: from the control call (Caravel `PUT vm.resize`,
//! QEMU QMP `qom-set vm0 requested-size`) to the device's plugged size
//! reaching the request (polled every 5 ms: Caravel `vm.info`, QEMU `qom-get
//! size`), to the guest's MemTotal reflecting it (polled through the guest
//! shell), and after unplug, to the VMM's RSS having dropped by 90% of what
//! the guest had filled.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::guest::guest_cmd;
use crate::mem_scenarios::{mem_total, rss};
use crate::session::Session;
use crate::Env;

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default, Clone, Copy)]
struct Step {
    plugged: f64,
    mem_total: f64,
    rss: f64,
}

fn until<F: FnMut() -> Result<bool, String>>(mut f: F, poll: Duration) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    while !f()? {
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        std::thread::sleep(poll);
    }
    Ok(())
}

/// One resize: control call, then plugged, MemTotal and (unplug) RSS.
fn resize(
    s: &mut Session,
    c: &mut Control,
    boot_total: u64,
    bytes: u64,
    rss_target: Option<u64>,
) -> Result<Step, String> {
    let t0 = Instant::now();
    c.request(bytes, 256 * MIB)?;
    until(|| Ok(c.plugged()? == bytes), Duration::from_millis(5))?;
    let plugged = t0.elapsed().as_secs_f64();
    until(
        || Ok(mem_total(s)?.abs_diff(boot_total + bytes) <= 8 * MIB),
        Duration::from_millis(0),
    )?;
    let mem_total_t = t0.elapsed().as_secs_f64();
    let mut rss_t = 0.0;
    if let Some(target) = rss_target {
        let pid = s.pid();
        until(|| Ok(rss(pid) <= target), Duration::from_millis(5))?;
        rss_t = t0.elapsed().as_secs_f64();
    }
    Ok(Step {
        plugged,
        mem_total: mem_total_t,
        rss: rss_t,
    })
}

fn measure(
    env: &Env,
    name: &str,
    program: &str,
    args: &[String],
    control: &dyn Fn() -> Result<Control, String>,
) -> Result<Vec<(u64, Step, Step)>, String> {
    let _ = name;
    let mut s = Session::spawn(Path::new(program), args)?;
    s.expect("CARAVEL-MARKER", TIMEOUT)?;
    let mut c = control()?;
    let boot_total = mem_total(&mut s)?;
    let mut rows = vec![];
    for bytes in [512 * MIB, 1024 * MIB] {
        let plug = resize(&mut s, &mut c, boot_total, bytes, None)?;
        let before_fill = rss(s.pid());
        let fill = bytes / MIB * 7 / 8;
        guest_cmd(
            &mut s,
            &format!("dd if=/dev/zero of=/dev/null bs={fill}M count=1 2>/dev/null"),
        )?;
        let filled = rss(s.pid()).saturating_sub(before_fill);
        let target = rss(s.pid()) - filled * 9 / 10;
        let unplug = resize(&mut s, &mut c, boot_total, 0, Some(target))?;
        rows.push((bytes, plug, unplug));
    }
    let _ = env;
    s.expect("CARAVEL-READY", TIMEOUT)?;
    s.send("poweroff")?;
    let _ = s.wait(TIMEOUT);
    Ok(rows)
}

/// Runs the benchmark and prints a Markdown table.
pub fn run(env: &Env, prefix: &str) -> Result<(), String> {
    let cmdline =
        "console=ttyS0 quiet panic=-1 memhp_default_state=online_movable caravel.test=interactive";
    let sock = env.tmp.join("bench-mem.sock").display().to_string();
    let qmp = env.tmp.join("bench-qmp.sock").display().to_string();
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&qmp);
    let caravel_args: Vec<String> = [
        "--kernel",
        &env.guest("vmlinux"),
        "--initramfs",
        &env.guest("initrd.cpio.gz"),
        "--cmdline",
        cmdline,
        "--memory",
        "size=256M,hotplug_method=virtio-mem,hotplug_size=1G",
        "--api-socket",
        &format!("path={sock}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut qemu_args =
        crate::bench::qemu_guest_args(env, "q35", "256M,maxmem=1280M", 1, cmdline, &qmp);
    qemu_args.extend(
        [
            "-object",
            "memory-backend-ram,id=vmem0,size=1G",
            "-device",
            "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let sock2 = sock.clone();
    let qmp2 = qmp.clone();
    let mut results = vec![];
    results.push((
        "Caravel",
        measure(
            env,
            "caravel",
            &env.bin("caravel").display().to_string(),
            &caravel_args,
            &|| Ok(Control::Caravel(sock2.clone())),
        )?,
    ));
    if Path::new("/usr/bin/qemu-system-x86_64").exists() {
        results.push((
            "QEMU 7.2 q35 virtio-mem-pci",
            measure(
                env,
                "qemu",
                "/usr/bin/qemu-system-x86_64",
                &qemu_args,
                &|| Control::qmp_connect(&qmp2),
            )?,
        ));
    }
    println!("{prefix}");
    println!("{prefix}virtio-mem, 256 MiB boot RAM + 1 GiB region, guest onlines online_movable; seconds from the control call:");
    println!("{prefix}");
    println!("{prefix}| VMM | size | plug: device plugged | plug: guest MemTotal | unplug: device unplugged | unplug: guest MemTotal | unplug: host RSS dropped |");
    println!("{prefix}| --- | --- | --- | --- | --- | --- | --- |");
    for (name, rows) in &results {
        for (bytes, p, u) in rows {
            println!(
                "{prefix}| {name} | {} MiB | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                bytes / MIB,
                p.plugged,
                p.mem_total,
                u.plugged,
                u.mem_total,
                u.rss
            );
        }
    }
    if let [(_, c), (_, q)] = &results[..] {
        println!("{prefix}");
        for ((bytes, cp, cu), (_, qp, qu)) in c.iter().zip(q) {
            println!(
                "{prefix}Caravel/QEMU time ratio at {} MiB: plug {:.2} / {:.2}, unplug {:.2} / {:.2}, RSS {:.2} (below 1 = Caravel faster)",
                bytes / MIB,
                cp.plugged / qp.plugged,
                cp.mem_total / qp.mem_total,
                cu.plugged / qu.plugged,
                cu.mem_total / qu.mem_total,
                cu.rss / qu.rss
            );
        }
    }
    Ok(())
}
