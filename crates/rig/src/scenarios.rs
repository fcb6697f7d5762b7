//! The scenarios. Each returns a one-line detail on success or an explanation.

use std::time::Duration;

use crate::session::Session;
use crate::Env;

/// A named scenario.
pub struct Scenario {
    /// TAP test name.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(&Env) -> Result<String, String>,
}

/// Every scenario, in run order.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "boot-vmlinux-pvh-2cpus",
        run: boot_vmlinux,
    },
    Scenario {
        name: "boot-bzimage-2cpus",
        run: boot_bzimage,
    },
    Scenario {
        name: "reboot-restarts-then-poweroff",
        run: reboot_then_poweroff,
    },
    Scenario {
        name: "no-reboot-exits-on-reboot",
        run: no_reboot,
    },
    Scenario {
        name: "api-info-ping-shutdown",
        run: api_info_shutdown,
    },
    Scenario {
        name: "not-a-kernel-exits-2",
        run: not_a_kernel,
    },
];

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn caravel_args(env: &Env, kernel: &str, test: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--kernel".into(),
        env.guest(kernel),
        "--initramfs".into(),
        env.guest("initrd.cpio.gz"),
        "--cmdline".into(),
        format!("console=ttyS0 quiet panic=-1 caravel.test={test}"),
        "--memory".into(),
        "size=256M".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

fn expect_exit(s: &mut Session, code: i32) -> Result<Duration, String> {
    let (status, t) = s.wait(BOOT_TIMEOUT)?;
    if status.code() != Some(code) {
        return Err(format!(
            "exit status {status}, expected {code}\n{}",
            s.tail()
        ));
    }
    Ok(t)
}

fn boot_and_count_cpus(env: &Env, kernel: &str) -> Result<String, String> {
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, kernel, "marker", &["--cpus", "boot=2"]),
    )?;
    let (line, t_marker) = s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    if field(&line, "cpus=") != Some("2") {
        return Err(format!("guest saw {line:?}, expected cpus=2"));
    }
    let t_exit = expect_exit(&mut s, 0)?;
    Ok(format!(
        "marker at {:.2} s (guest uptime {}), exit 0 at {:.2} s",
        t_marker.as_secs_f64(),
        field(&line, "uptime=").unwrap_or("?"),
        t_exit.as_secs_f64()
    ))
}

fn boot_vmlinux(env: &Env) -> Result<String, String> {
    boot_and_count_cpus(env, "vmlinux")
}

fn boot_bzimage(env: &Env) -> Result<String, String> {
    boot_and_count_cpus(env, "bzImage")
}

fn reboot_then_poweroff(env: &Env) -> Result<String, String> {
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, "vmlinux", "interactive", &[]),
    )?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("reboot")?;
    s.expect("CARAVEL-GOT reboot", BOOT_TIMEOUT)?;
    let (_, t2) = s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("poweroff")?;
    let t = expect_exit(&mut s, 0)?;
    let boots = s
        .transcript
        .iter()
        .filter(|l| l.contains("CARAVEL-MARKER"))
        .count();
    if boots != 2 {
        return Err(format!("{boots} boots seen, expected 2\n{}", s.tail()));
    }
    Ok(format!(
        "second boot's marker at {:.2} s, exit 0 at {:.2} s",
        t2.as_secs_f64(),
        t.as_secs_f64()
    ))
}

fn no_reboot(env: &Env) -> Result<String, String> {
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(env, "vmlinux", "interactive", &["--no-reboot"]),
    )?;
    s.expect("CARAVEL-READY", BOOT_TIMEOUT)?;
    s.send("reboot")?;
    let t = expect_exit(&mut s, 0)?;
    let boots = s
        .transcript
        .iter()
        .filter(|l| l.contains("CARAVEL-MARKER"))
        .count();
    if boots != 1 {
        return Err(format!("{boots} boots seen, expected 1"));
    }
    Ok(format!("exit 0 at {:.2} s", t.as_secs_f64()))
}

fn remote(env: &Env, sock: &str, cmd: &str) -> Result<String, String> {
    let out = std::process::Command::new(env.bin("caravel-remote"))
        .args(["--api-socket", sock, cmd])
        .output()
        .map_err(|e| format!("cannot run caravel-remote: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "caravel-remote {cmd} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn api_info_shutdown(env: &Env) -> Result<String, String> {
    let sock = env.tmp.join("rig-api.sock").display().to_string();
    let _ = std::fs::remove_file(&sock);
    let mut s = Session::spawn(
        &env.bin("caravel"),
        &caravel_args(
            env,
            "vmlinux",
            "idle",
            &["--api-socket", &format!("path={sock}"), "--cpus", "boot=2"],
        ),
    )?;
    s.expect("CARAVEL-MARKER", BOOT_TIMEOUT)?;
    let info: serde_json::Value = serde_json::from_str(&remote(env, &sock, "info")?)
        .map_err(|e| format!("vm.info is not JSON: {e}"))?;
    if info["state"] != "Running"
        || info["config"]["cpus"]["boot_vcpus"] != 2
        || info["memory_actual_size"] != 256u64 << 20
    {
        return Err(format!("unexpected vm.info: {info}"));
    }
    let ping: serde_json::Value = serde_json::from_str(&remote(env, &sock, "ping")?)
        .map_err(|e| format!("vmm.ping is not JSON: {e}"))?;
    if ping["pid"] != s.pid() {
        return Err(format!(
            "vmm.ping pid {} is not caravel's {}",
            ping["pid"],
            s.pid()
        ));
    }
    remote(env, &sock, "shutdown")?;
    let t = expect_exit(&mut s, 0)?;
    if std::path::Path::new(&sock).exists() {
        return Err("the API socket was left behind".into());
    }
    Ok(format!(
        "info state=Running, shutdown -> exit 0 at {:.2} s",
        t.as_secs_f64()
    ))
}

fn not_a_kernel(env: &Env) -> Result<String, String> {
    let mut args = caravel_args(env, "initrd.cpio.gz", "marker", &[]);
    args[1] = env.guest("initrd.cpio.gz");
    let mut s = Session::spawn(&env.bin("caravel"), &args)?;
    expect_exit(&mut s, 2)?;
    let err = s.stderr();
    if !err.contains("--kernel") || !err.contains("not a Linux kernel") {
        return Err(format!("error does not name --kernel: {err}"));
    }
    Ok(err.lines().next().unwrap_or("").to_string())
}
