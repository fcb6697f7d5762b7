//! One VMM's control plane, as the benchmarks drive it: Caravel's API socket
//! or QEMU's QMP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use api::http::Method;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Talks to one VMM's control plane.
pub enum Control {
    /// Caravel's API socket.
    Caravel(String),
    /// A QMP connection.
    Qmp(BufReader<UnixStream>),
}

/// Caravel's `GET vm.counters` on the API socket `sock`.
fn caravel_counters(sock: &str) -> Result<serde_json::Value, String> {
    let r = api::client::request(
        Path::new(sock),
        Method::Get,
        "/api/v1/vm.counters",
        None,
        TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_slice(&r.body.unwrap_or_default()).map_err(|e| format!("vm.counters: {e}"))
}

impl Control {
    /// Connects to QEMU's QMP socket (retrying while QEMU starts).
    pub fn qmp_connect(path: &str) -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("QMP {path}: {e}")),
            }
        };
        let mut c = Self::Qmp(BufReader::new(stream));
        c.qmp(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(c)
    }

    /// One QMP command; its `return` value.
    pub fn qmp(&mut self, cmd: &str) -> Result<serde_json::Value, String> {
        let Self::Qmp(r) = self else {
            return Err("not QMP".into());
        };
        r.get_mut()
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}"))?;
            if v.get("return").is_some() {
                return Ok(v["return"].clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP error: {e}"));
            }
            // Greeting and events: skip.
        }
    }

    /// Sets total hotplugged memory to `bytes` (`boot` is the boot RAM).
    pub fn request(&mut self, bytes: u64, boot: u64) -> Result<(), String> {
        match self {
            Self::Caravel(sock) => {
                let body = serde_json::json!({ "desired_ram": boot + bytes }).to_string();
                let r = api::client::request(Path::new(sock), Method::Put, "/api/v1/vm.resize", Some(body.as_bytes()), TIMEOUT)
                    .map_err(|e| e.to_string())?;
                (r.status == 204).then_some(()).ok_or_else(|| format!("vm.resize: HTTP {}", r.status))
            }
            Self::Qmp(_) => self
                .qmp(&format!(r#"{{"execute":"qom-set","arguments":{{"path":"vm0","property":"requested-size","value":{bytes}}}}}"#))
                .map(|_| ()),
        }
    }

    /// The virtio-mem device's plugged size.
    pub fn plugged(&mut self) -> Result<u64, String> {
        match self {
            Self::Caravel(sock) => {
                let r = api::client::request(
                    Path::new(sock),
                    Method::Get,
                    "/api/v1/vm.info",
                    None,
                    TIMEOUT,
                )
                .map_err(|e| e.to_string())?;
                let v: serde_json::Value = serde_json::from_slice(&r.body.unwrap_or_default())
                    .map_err(|e| e.to_string())?;
                v["memory"]["hotplug"]["plugged_size"]
                    .as_u64()
                    .ok_or_else(|| "no plugged_size".into())
            }
            Self::Qmp(_) => self
                .qmp(r#"{"execute":"qom-get","arguments":{"path":"vm0","property":"size"}}"#)?
                .as_u64()
                .ok_or_else(|| "qom-get size: not a number".into()),
        }
    }
}

impl Control {
    /// Caravel's `vm.counters` group `group` (e.g. `pio`), as listed;
    /// nothing for QEMU.
    pub fn counter_group(&mut self, group: &str) -> Result<Vec<(String, u64)>, String> {
        let Self::Caravel(sock) = self else {
            return Ok(Vec::new());
        };
        let v = caravel_counters(sock)?;
        Ok(v[group]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect())
    }

    /// KVM's vCPU statistics `names`, summed over vCPUs, as the VMM reads
    /// them from its KVM stats fds: Caravel `GET vm.counters`, QEMU QMP
    /// `query-stats` (provider kvm, target vcpu).
    pub fn kvm_counters(&mut self, names: &[&str]) -> Result<Vec<u64>, String> {
        match self {
            Self::Caravel(sock) => {
                let v = caravel_counters(sock)?;
                Ok(names
                    .iter()
                    .map(|n| v["kvm"][*n].as_u64().unwrap_or(0))
                    .collect())
            }
            Self::Qmp(_) => {
                let list = serde_json::json!(names).to_string();
                let v = self.qmp(&format!(
                    r#"{{"execute":"query-stats","arguments":{{"target":"vcpu","providers":[{{"provider":"kvm","names":{list}}}]}}}}"#
                ))?;
                let mut totals = vec![0u64; names.len()];
                for vcpu in v.as_array().into_iter().flatten() {
                    for stat in vcpu["stats"].as_array().into_iter().flatten() {
                        if let Some(i) = names.iter().position(|n| stat["name"] == *n) {
                            totals[i] += stat["value"].as_u64().unwrap_or(0);
                        }
                    }
                }
                Ok(totals)
            }
        }
    }
}
