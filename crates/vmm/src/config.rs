//! What to run: the VM configuration as plain data.
//!
//! The CLI (crate `caravel`) builds it; `vm.info` reports it as JSON with the
//! field names of Cloud Hypervisor's `VmConfig` where the feature is the same.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmConfig {
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// What the guest boots.
    pub payload: Payload,
    /// Where COM1 goes.
    pub serial: ConsoleConfig,
    /// virtio-console (`hvc0`); `Off` means no device.
    pub console: ConsoleConfig,
    /// virtio-blk devices.
    pub disks: Vec<DiskConfig>,
    /// VFIO passthrough devices.
    pub devices: Vec<DeviceConfig>,
    /// virtio-net devices on host TAPs.
    pub net: Vec<NetConfig>,
    /// A virtio-vsock device with its host end on Unix sockets.
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// A virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
    /// Control API socket.
    pub api_socket: Option<PathBuf>,
    /// Event log file (JSON lines with timestamps).
    pub event_monitor: Option<PathBuf>,
    /// A guest reboot ends Caravel (exit 0) instead of restarting the VM.
    pub no_reboot: bool,
    /// The sandbox: a seccomp filter per thread kind (`--seccomp`).
    pub seccomp: crate::seccomp::SeccompMode,
}

/// `--cpus`
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Deserialize)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u8,
}

/// `--memory`
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Deserialize)]
pub struct MemoryConfig {
    /// Boot RAM in bytes.
    pub size: u64,
    /// Back guest memory with a memfd mapped shared.
    pub shared: bool,
    /// Back guest memory with hugetlbfs pages.
    pub hugepages: bool,
    /// A virtio-mem hotplug region.
    #[serde(flatten)]
    pub hotplug: Option<HotplugConfig>,
    /// The memory autopilot (`autosize=on`), sizing the hotplug region
    /// from the balloon's statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autosize: Option<AutosizeConfig>,
}

/// `--memory ...,autosize=on[,min=SIZE][,max=SIZE][,headroom=PCT]`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Deserialize)]
pub struct AutosizeConfig {
    /// Least total RAM (boot plus plugged).
    pub min: u64,
    /// Most total RAM.
    pub max: u64,
    /// Slack above the guest's memory in use, in percent of it.
    pub headroom: u64,
}

impl MemoryConfig {
    /// Refuses a shape Caravel cannot build (what `--memory` enforces, for
    /// configurations that arrive from elsewhere: a migration's source).
    pub fn check(&self) -> Result<(), String> {
        const MAX: u64 = 1 << 40;
        let page = if self.hugepages { 2 << 20 } else { 4096 };
        if self.size < 16 << 20 || self.size > MAX || !self.size.is_multiple_of(page) {
            return Err(format!(
                "boot memory of {} bytes (16 MiB to 1 TiB, page-aligned)",
                self.size
            ));
        }
        if let Some(h) = &self.hotplug {
            let block_ok = h.block_size.is_power_of_two() && h.block_size >= 2 << 20;
            let region_ok = h.hotplug_size > 0
                && h.hotplug_size <= MAX
                && h.hotplug_size.is_multiple_of(h.slot_size());
            let plugged_ok = h.hotplugged_size <= h.hotplug_size
                && block_ok
                && h.hotplugged_size.is_multiple_of(h.block_size);
            if !(block_ok && region_ok && plugged_ok) {
                return Err(format!("a virtio-mem region of {h:?}"));
            }
        }
        if let Some(a) = &self.autosize {
            let top = self.size + self.hotplug.map_or(0, |h| h.hotplug_size);
            if self.hotplug.is_none() || a.min < self.size || a.min > a.max || a.max > top {
                return Err(format!("an autosize of {a:?}"));
            }
        }
        Ok(())
    }

    /// Boot RAM of `size` bytes, private anonymous, no hotplug.
    pub fn boot_only(size: u64) -> Self {
        Self {
            size,
            shared: false,
            hugepages: false,
            hotplug: None,
            autosize: None,
        }
    }
}

/// The virtio-mem part of `--memory` (`hotplug_method=virtio-mem`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Deserialize)]
pub struct HotplugConfig {
    /// Size of the hotplug region (a multiple of the slot size).
    pub hotplug_size: u64,
    /// Bytes requested at boot.
    pub hotplugged_size: u64,
    /// virtio-mem block size (a power of two, at least 2 MiB).
    pub block_size: u64,
}

/// Linux's memory block size on x86_64 guests, the granularity of KVM
/// memslots in the hotplug region.
pub const HOTPLUG_SLOT_SIZE: u64 = 128 << 20;

impl HotplugConfig {
    /// KVM slot size: a Linux memory block, or a block if blocks are larger.
    pub fn slot_size(&self) -> u64 {
        self.block_size.max(HOTPLUG_SLOT_SIZE)
    }
}

/// `--disk`
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Deserialize)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Read-only to the guest (`VIRTIO_BLK_F_RO`).
    pub readonly: bool,
    /// Serial reported by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes).
    pub id: Option<String>,
}

pub use virtio::vsock::valid_guest_cid;

/// `--vsock`: a virtio-vsock device (Cloud Hypervisor's and Firecracker's
/// hybrid model: host programs connect to `socket` and write
/// `CONNECT <port>`; guest connections to the host's port P reach
/// `<socket>_P`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Deserialize)]
pub struct VsockConfig {
    /// The guest's context ID (3 to 2^32-2).
    pub cid: u64,
    /// The Unix socket Caravel listens on for host connections (created
    /// at start, removed at exit).
    pub socket: PathBuf,
    /// Name in `vm.info` and logs.
    pub id: Option<String>,
}

/// `--balloon`: a virtio-balloon device (Cloud Hypervisor's names; the
/// statistics interval is Firecracker's `stats_polling_interval_s`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Deserialize)]
pub struct BalloonConfig {
    /// Bytes asked back from the guest at boot (changed at run time with
    /// `vm.resize`'s `desired_balloon`).
    pub size: u64,
    /// The guest deflates the balloon instead of OOM-killing.
    pub deflate_on_oom: bool,
    /// The guest reports free pages, which the host discards.
    pub free_page_reporting: bool,
    /// Seconds between requests for the guest's memory statistics; 0: no
    /// statistics.
    #[serde(default)]
    pub stats_interval: u64,
}

impl BalloonConfig {
    /// The device's options.
    pub fn options(&self) -> virtio::balloon::BalloonOptions {
        virtio::balloon::BalloonOptions {
            deflate_on_oom: self.deflate_on_oom,
            free_page_reporting: self.free_page_reporting,
            stats_interval: std::time::Duration::from_secs(self.stats_interval),
        }
    }
}

/// `--net`: a virtio-net device on a host TAP (Cloud Hypervisor's names).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Deserialize)]
pub struct NetConfig {
    /// The TAP's name: opened if it exists, created (and removed with
    /// Caravel) if not. `None` with `fds`.
    pub tap: Option<String>,
    /// TAP descriptors the caller opened, one per queue pair (never saved:
    /// a restore cannot reopen them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<i32>,
    /// The guest's MAC address (random, locally administered, when not given).
    pub mac: MacAddr,
    /// MAC address of a TAP Caravel creates (the host's end); random when
    /// not given. A snapshot records the one in use, so that a restore
    /// creates the TAP again with the address the guest's neighbour
    /// table holds.
    #[serde(default)]
    pub host_mac: Option<MacAddr>,
    /// IPv4 address given to a TAP Caravel creates.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Its netmask.
    pub mask: Option<std::net::Ipv4Addr>,
    /// Receive plus transmit queues: 2 per queue pair.
    pub num_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Name in `vm.info` and logs.
    pub id: Option<String>,
}

impl NetConfig {
    /// Queue pairs (one TAP queue and one worker each).
    pub fn pairs(&self) -> usize {
        usize::from(self.num_queues / 2)
    }
}

/// A MAC address, written `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s} is not a MAC address (six hex bytes: 52:54:00:12:34:56)");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "{s} is a multicast address: a NIC needs a unicast one (even first byte)"
            ));
        }
        Ok(Self(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `--device`: a host PCI device passed through with VFIO.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `/sys/bus/pci/devices/BDF`
    pub path: PathBuf,
    /// The device's address (from the path).
    #[serde(skip)]
    pub bdf: vfio::PciAddress,
    /// The VF token to present (never serialized: `vm.info` must not show it).
    #[serde(skip)]
    pub vf_token: Option<vfio::VfToken>,
    /// Name in `vm.info`.
    pub id: Option<String>,
}

/// What the guest runs.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Payload {
    /// A Linux kernel.
    Linux(LinuxPayload),
    /// Raw code for tests: bytes copied to fixed addresses, entered in 64-bit
    /// long mode (flat segments, identity-mapped 0-4 GiB) at `entry` on vCPU 0.
    Raw(RawPayload),
}

/// `--kernel`, `--initramfs`, `--cmdline`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinuxPayload {
    /// vmlinux (ELF, PVH entry) or bzImage.
    pub kernel: PathBuf,
    /// initramfs image.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// A test payload.
#[derive(Debug, Clone, Serialize)]
pub struct RawPayload {
    /// `(guest-physical address, bytes)` to copy.
    #[serde(skip)]
    pub segments: Vec<(u64, Vec<u8>)>,
    /// Entry point of vCPU 0.
    pub entry: u64,
}

/// Where a console device's output goes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "file")]
pub enum ConsoleConfig {
    /// Disabled: the device exists but output is dropped.
    Off,
    /// Caravel's stdin/stdout (raw mode when stdin is a terminal).
    Tty,
    /// Appended to a file.
    File(PathBuf),
}

impl VmConfig {
    /// A configuration with the given payload and defaults elsewhere
    /// (1 vCPU, 512 MiB, serial off).
    pub fn new(payload: Payload) -> Self {
        Self {
            cpus: CpusConfig { boot_vcpus: 1 },
            memory: MemoryConfig::boot_only(512 << 20),
            payload,
            serial: ConsoleConfig::Off,
            console: ConsoleConfig::Off,
            disks: Vec::new(),
            devices: Vec::new(),
            net: Vec::new(),
            vsock: None,
            rng: false,
            balloon: None,
            api_socket: None,
            event_monitor: None,
            no_reboot: false,
            seccomp: crate::seccomp::SeccompMode::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_cloud_hypervisor_names() {
        let mut c = VmConfig::new(Payload::Linux(LinuxPayload {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
        }));
        c.serial = ConsoleConfig::File("/tmp/s".into());
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["cpus"]["boot_vcpus"], 1);
        assert_eq!(v["memory"]["size"], 512u64 << 20);
        assert_eq!(v["payload"]["kernel"], "/k");
        assert_eq!(v["payload"]["cmdline"], "console=ttyS0");
        assert_eq!(v["serial"]["mode"], "file");
        assert_eq!(v["serial"]["file"], "/tmp/s");
    }
}
