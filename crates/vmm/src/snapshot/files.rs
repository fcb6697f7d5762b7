//! A snapshot directory: `state.json` and `memory`.
//!
//! `state.json` is one header line, then the state:
//!
//! ```text
//! {"format":"caravel-snapshot","version":1,"arch":"x86_64","crc32":"1c291ca3","bytes":53211}
//! {"config":{...},"memory":[...],"vm":{...}}
//! ```
//!
//! The header says how many bytes of state follow and their CRC-32 (IEEE),
//! so a truncated or edited file is refused before anything is parsed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use super::memory_file::SavedRegion;
use super::{memory_file, VmState, ARCH, STATE_VERSION};
use crate::config::{
    ConsoleConfig, CpusConfig, DiskConfig, LinuxPayload, MemoryConfig, NetConfig, Payload,
    RawPayload, VmConfig, VsockConfig,
};
use crate::vm::Vm;
use crate::{Error, Result};

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// Name of the guest memory file.
pub const MEMORY_FILE: &str = "memory";
const FORMAT: &str = "caravel-snapshot";

/// The part of the configuration a snapshot fixes: the VM's shape and
/// devices. Where output goes, the API socket and the sandbox are given
/// again when restoring.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedConfig {
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Boot RAM and the virtio-mem region.
    pub memory: MemoryConfig,
    /// What a guest reboot after the restore boots (none for test code).
    pub payload: Option<LinuxPayload>,
    /// virtio-blk images, reopened on restore.
    pub disks: Vec<DiskConfig>,
    /// A virtio-console device.
    pub console: bool,
    /// A virtio-rng device.
    pub rng: bool,
    /// virtio-net devices: their TAPs are reopened by name on restore.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The virtio-vsock device: its socket is bound again on restore (the
    /// guest's connections end; it is told its transport was reset).
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The virtio-balloon device (its sizes are in the device state).
    #[serde(default)]
    pub balloon: Option<crate::config::BalloonConfig>,
}

impl SavedConfig {
    /// The part of `cfg` a snapshot (or a migration) carries.
    pub fn of(cfg: &VmConfig) -> Self {
        Self {
            cpus: cfg.cpus,
            memory: cfg.memory,
            payload: match &cfg.payload {
                Payload::Linux(l) => Some(l.clone()),
                Payload::Raw(_) => None,
            },
            disks: cfg.disks.clone(),
            console: cfg.console != ConsoleConfig::Off,
            rng: cfg.rng,
            net: cfg
                .net
                .iter()
                .map(|n| {
                    // The TAP's address as it is, so that a restore that
                    // creates the TAP again keeps the guest's neighbour
                    // table right.
                    let mut n = n.clone();
                    if n.host_mac.is_none() {
                        n.host_mac = n
                            .tap
                            .as_deref()
                            .and_then(crate::tap::interface_mac)
                            .map(crate::config::MacAddr);
                    }
                    n
                })
                .collect(),
            vsock: cfg.vsock.clone(),
            balloon: cfg.balloon,
        }
    }

    /// Refuses a configuration this host cannot build: a memory shape
    /// `--memory` would not accept, or a disk image that is not here (the
    /// restored or migrated VM opens the same images). For snapshots read
    /// from files and configurations sent by a migration's source.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.memory.check().map_err(|e| format!("the VM has {e}"))?;
        match self.disks.iter().find(|d| !d.path.exists()) {
            Some(d) => Err(format!(
                "the disk image {} is missing (the VM opens the same images)",
                d.path.display()
            )),
            None => Ok(()),
        }
    }

    /// The configuration to restore with: the snapshot's shape and devices,
    /// `host`'s output, API socket, sandbox and reboot policy. A console
    /// the snapshot has but `host` turns off writes to nowhere.
    pub fn apply_to(&self, host: &VmConfig) -> VmConfig {
        let mut cfg = host.clone();
        cfg.cpus = self.cpus;
        cfg.memory = self.memory;
        cfg.payload = match &self.payload {
            Some(l) => Payload::Linux(l.clone()),
            None => Payload::Raw(RawPayload {
                segments: Vec::new(),
                entry: 0,
            }),
        };
        cfg.disks = self.disks.clone();
        cfg.devices = Vec::new();
        cfg.rng = self.rng;
        cfg.net = self.net.clone();
        cfg.vsock = self.vsock.clone();
        cfg.balloon = self.balloon;
        cfg.console = match (self.console, &host.console) {
            (false, _) => ConsoleConfig::Off,
            (true, ConsoleConfig::Off) => ConsoleConfig::File("/dev/null".into()),
            (true, c) => c.clone(),
        };
        cfg
    }
}

/// `state.json` after its header.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// The VM's shape and devices.
    pub config: SavedConfig,
    /// Guest memory regions, in the memory file's order.
    pub memory: Vec<SavedRegion>,
    /// vCPUs, interrupt controllers, devices.
    pub vm: VmState,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    arch: String,
    crc32: String,
    bytes: u64,
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct SaveReport {
    /// Size of `state.json`.
    pub state_bytes: u64,
    /// Apparent size of `memory` (all regions).
    pub memory_size: u64,
    /// Bytes of guest memory stored (the rest are holes).
    pub memory_stored: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// The directory of a `file:///DIR` URL (Cloud Hypervisor's syntax; the
/// only scheme). `flag` names the option or field for the error.
pub fn dir_of_url(flag: &'static str, url: &str) -> Result<PathBuf> {
    let path = url.strip_prefix("file://").ok_or_else(|| {
        Error::config(
            flag,
            format!("{url:?} is not a file:///DIR URL (the only kind Caravel reads and writes)"),
        )
    })?;
    if !path.starts_with('/') {
        return Err(Error::config(
            flag,
            format!("{url:?}: the directory must be absolute (file:///path/to/dir)"),
        ));
    }
    Ok(PathBuf::from(path))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Snapshot(format!("{what}: {e}"))
}

/// Saves a paused VM into `dir` (created if missing). The files are
/// written under temporary names and renamed, so `dir` never holds half a
/// snapshot under the real names.
pub fn save(vm: &Vm, cfg: &VmConfig, dir: &Path) -> Result<SaveReport> {
    let started = Instant::now();
    if let Some(n) = cfg.net.iter().find(|n| n.tap.is_none()) {
        return Err(Error::Snapshot(format!(
            "virtio-net {} was given its TAP as fd=, which a restore cannot reopen: use tap=NAME",
            n.id.as_deref().unwrap_or("device")
        )));
    }
    let state = vm.snapshot()?;
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let memory = memory_file::regions(vm.memory());
    let snapshot = Snapshot {
        config: SavedConfig::of(cfg),
        memory,
        vm: state,
    };
    let hotplug = hotplug_runs(&snapshot);
    let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
    let file =
        File::create(&mem_tmp).map_err(io(format!("cannot create {}", mem_tmp.display())))?;
    let stored = memory_file::write(&file, vm.memory(), hotplug).map_err(Error::Snapshot)?;
    file.sync_all().map_err(io("memory file: fsync".into()))?;
    let body = serde_json::to_vec(&snapshot)
        .map_err(|e| Error::Snapshot(format!("cannot encode the state: {e}")))?;
    let header = Header {
        format: FORMAT.into(),
        version: STATE_VERSION,
        arch: ARCH.into(),
        crc32: format!("{:08x}", crc32(&body)),
        bytes: body.len() as u64,
    };
    let mut text = serde_json::to_vec(&header)
        .map_err(|e| Error::Snapshot(format!("cannot encode the header: {e}")))?;
    text.push(b'\n');
    text.extend_from_slice(&body);
    let state_tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    std::fs::write(&state_tmp, &text)
        .map_err(io(format!("cannot write {}", state_tmp.display())))?;
    std::fs::rename(&mem_tmp, dir.join(MEMORY_FILE))
        .map_err(io("cannot rename the memory file".into()))?;
    std::fs::rename(&state_tmp, dir.join(STATE_FILE))
        .map_err(io("cannot rename the state file".into()))?;
    Ok(SaveReport {
        state_bytes: text.len() as u64,
        memory_size: file.metadata().map(|m| m.len()).unwrap_or(0),
        memory_stored: stored,
        elapsed: started.elapsed(),
    })
}

fn hotplug_runs(s: &Snapshot) -> Option<(u64, &[(u64, u64)])> {
    s.vm.memory_device().map(|m| (m.addr, m.plugged.as_slice()))
}

/// Reads and checks `dir/state.json` ([`parse`]), then the memory file's
/// size and the disk images.
pub fn load(dir: &Path) -> Result<Snapshot> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?;
    let snapshot = parse(&text).map_err(|e| Error::Snapshot(format!("{}: {e}", path.display())))?;
    let mem_path = dir.join(MEMORY_FILE);
    let size = std::fs::metadata(&mem_path)
        .map_err(io(format!("cannot open {}", mem_path.display())))?
        .len();
    let want: u64 = snapshot.memory.iter().map(|r| r.size).sum();
    if size != want {
        return Err(Error::Snapshot(format!(
            "{}: {size} bytes, the state says {want}: not this snapshot's memory",
            mem_path.display()
        )));
    }
    snapshot.config.check().map_err(Error::Snapshot)?;
    Ok(snapshot)
}

/// Checks and decodes the bytes of a `state.json`: the header's format,
/// version and architecture, the state's length and checksum, then the
/// state itself. The message says what is wrong.
pub fn parse(text: &[u8]) -> std::result::Result<Snapshot, String> {
    let nl = text
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line: not a Caravel snapshot")?;
    let header: Header = serde_json::from_slice(&text[..nl])
        .map_err(|e| format!("bad header ({e}): not a Caravel snapshot"))?;
    if header.format != FORMAT {
        return Err(format!("format {:?} is not {FORMAT:?}", header.format));
    }
    if header.version != STATE_VERSION {
        return Err(format!(
            "snapshot version {} is not the {STATE_VERSION} this Caravel reads",
            header.version
        ));
    }
    if header.arch != ARCH {
        return Err(format!(
            "the snapshot was taken on {}; this is {ARCH}",
            header.arch
        ));
    }
    let body = &text[nl + 1..];
    if body.len() as u64 != header.bytes {
        return Err(format!(
            "{} bytes of state, the header says {}: truncated or edited",
            body.len(),
            header.bytes
        ));
    }
    let sum = format!("{:08x}", crc32(body));
    if sum != header.crc32 {
        return Err(format!(
            "checksum mismatch (CRC-32 {sum}, the header says {}): the file is damaged",
            header.crc32
        ));
    }
    let snapshot: Snapshot =
        serde_json::from_slice(body).map_err(|e| format!("cannot decode the state: {e}"))?;
    snapshot.vm.check_version().map_err(|e| e.to_string())?;
    Ok(snapshot)
}

/// What [`restore`] did.
#[derive(Debug, Clone, Copy)]
pub struct RestoreReport {
    /// Bytes of guest memory read from the memory file (copied, or mapped
    /// to be read when the guest touches them).
    pub memory_read: u64,
    /// Whether memory was mapped from the file rather than copied.
    pub mapped: bool,
    /// Time to read memory and restore the state.
    pub elapsed: Duration,
}

/// Fills `vm` (built with [`Vm::new_for_restore`] from the snapshot's
/// configuration) with the snapshot in `dir`: memory, then state.
///
/// Private anonymous guest memory is mapped from the memory file (pages
/// come in when the guest touches them) unless `prefault`; shared (memfd)
/// and hugetlbfs memory, and `prefault`, copy the file's data in.
pub fn restore(vm: &Vm, snapshot: &Snapshot, dir: &Path, prefault: bool) -> Result<RestoreReport> {
    let started = Instant::now();
    let mem_path = dir.join(MEMORY_FILE);
    let file = File::open(&mem_path).map_err(io(format!("cannot open {}", mem_path.display())))?;
    let m = &snapshot.config.memory;
    let mapped = !prefault && !m.shared && !m.hugepages;
    let hotplug = hotplug_runs(snapshot);
    let read = if mapped {
        memory_file::map(&file, vm.memory(), &snapshot.memory, hotplug)
    } else {
        memory_file::read(&file, vm.memory(), &snapshot.memory, hotplug)
    }
    .map_err(Error::Snapshot)?;
    vm.restore_state(&snapshot.vm)?;
    Ok(RestoreReport {
        memory_read: read,
        mapped,
        elapsed: started.elapsed(),
    })
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The balloon and the autopilot travel in a snapshot's (and a
    /// migration's) configuration, whatever the restoring command line says.
    #[test]
    fn the_balloon_and_the_autopilot_travel_with_the_vm() {
        let mut cfg = VmConfig::new(Payload::Raw(RawPayload {
            segments: Vec::new(),
            entry: 0,
        }));
        cfg.memory.hotplug = Some(crate::config::HotplugConfig {
            hotplug_size: 1 << 30,
            hotplugged_size: 0,
            block_size: 2 << 20,
        });
        cfg.memory.autosize = Some(crate::config::AutosizeConfig {
            min: 512 << 20,
            max: 1 << 30,
            headroom: 30,
        });
        cfg.balloon = Some(crate::config::BalloonConfig {
            size: 64 << 20,
            deflate_on_oom: true,
            free_page_reporting: true,
            stats_interval: 2,
        });
        let json = serde_json::to_string(&SavedConfig::of(&cfg)).unwrap();
        let saved: SavedConfig = serde_json::from_str(&json).unwrap();
        saved.check().unwrap();
        let host = VmConfig::new(Payload::Raw(RawPayload {
            segments: Vec::new(),
            entry: 0,
        }));
        let restored = saved.apply_to(&host);
        assert_eq!(restored.balloon, cfg.balloon);
        assert_eq!(restored.memory.autosize, cfg.memory.autosize);
        // A snapshot of an older Caravel, without the balloon, still reads.
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("balloon");
        let old: SavedConfig = serde_json::from_value(v).unwrap();
        assert_eq!(old.balloon, None);
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn urls_are_file_urls_with_absolute_paths() {
        assert_eq!(
            dir_of_url("--restore", "file:///tmp/snap").unwrap(),
            PathBuf::from("/tmp/snap")
        );
        let e = dir_of_url("--restore", "/tmp/snap")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--restore: \"/tmp/snap\" is not a file:///DIR URL"),
            "{e}"
        );
        let e = dir_of_url("destination_url", "file://snap")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be absolute"), "{e}");
    }

    fn write_state(dir: &Path, header: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), format!("{header}\n{body}")).unwrap();
    }

    fn header(version: u32, arch: &str, body: &str) -> String {
        format!(
            r#"{{"format":"caravel-snapshot","version":{version},"arch":"{arch}","crc32":"{:08x}","bytes":{}}}"#,
            crc32(body.as_bytes()),
            body.len()
        )
    }

    fn load_err(dir: &Path) -> String {
        match load(dir) {
            Ok(_) => panic!("a bad snapshot was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_refusal_names_its_reason() {
        let dir = std::env::temp_dir().join(format!("caravel-snapfiles-{}", std::process::id()));
        let body = "{}";
        write_state(&dir, &header(99, ARCH, body), body);
        assert!(load_err(&dir).contains("snapshot version 99 is not the 1"));
        let other = if ARCH == "x86_64" {
            "aarch64"
        } else {
            "x86_64"
        };
        write_state(&dir, &header(1, other, body), body);
        assert!(load_err(&dir).contains(&format!("taken on {other}; this is {ARCH}")));
        write_state(&dir, &header(1, ARCH, body), "{} ");
        assert!(load_err(&dir).contains("truncated or edited"));
        write_state(&dir, &header(1, ARCH, body), "[]");
        assert!(load_err(&dir).contains("checksum mismatch"));
        write_state(&dir, "not json", body);
        assert!(load_err(&dir).contains("not a Caravel snapshot"));
        write_state(&dir, &header(1, ARCH, body), body);
        assert!(load_err(&dir).contains("cannot decode the state"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load_err(&dir).contains("cannot read"));
    }
}
