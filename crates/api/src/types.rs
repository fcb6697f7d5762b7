//! JSON bodies of the API.

use serde::{Deserialize, Serialize};

/// `GET /api/v1/vmm.ping` (Cloud Hypervisor's `VmmPingResponse`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmmPingResponse {
    /// Build identifier.
    pub build_version: String,
    /// Release version.
    pub version: String,
    /// VMM process ID.
    pub pid: i64,
    /// Compiled-in optional features.
    pub features: Vec<String>,
}

/// Lifecycle state reported by `vm.info`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum VmState {
    /// Being built (or rebuilt after a reset).
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs stopped by `vm.pause`, each with its last exit completed.
    Paused,
    /// Stopping.
    Shutdown,
}

/// `GET /api/v1/vm.info` (Cloud Hypervisor's `VmInfoResponse`, plus Caravel fields).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmInfoResponse {
    /// The VM's configuration as given at start.
    pub config: serde_json::Value,
    /// Lifecycle state.
    pub state: VmState,
    /// RAM the guest has now (boot RAM plus plugged hotplug memory), bytes.
    pub memory_actual_size: u64,
    /// How many times the VM has booted (1 + guest-initiated reboots).
    pub boot_count: u64,
    /// The VM's PCI devices.
    pub devices: Vec<DeviceInfo>,
    /// Boot RAM and the hotplug region.
    pub memory: MemoryInfo,
    /// The last (or current) live migration of this VMM, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationInfo>,
}

/// Where a live migration is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Connecting, checking the stream header and the VM's shape.
    Setup,
    /// Sending (or receiving) memory while the guest runs.
    Precopy,
    /// The guest is paused: the last pages and the state are moving.
    Stopped,
    /// Done: the guest runs on the destination.
    Completed,
    /// Failed: the guest runs where it ran before (`error` says why).
    Failed,
}

/// Progress of a live migration (`vm.info`'s `migration`, and the body of
/// `vm.send-migration`'s answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrationInfo {
    /// `source` or `destination`.
    pub role: String,
    /// Where it is.
    pub phase: MigrationPhase,
    /// Passes over memory so far (1: the first full pass).
    pub iterations: u32,
    /// Guest memory bytes sent (received) so far.
    pub memory_bytes: u64,
    /// Bytes on the wire so far (frames, headers and state included).
    pub stream_bytes: u64,
    /// Bytes dirtied during the last pass (what the next pass sends).
    pub dirty_bytes: u64,
    /// Bytes per second the guest dirtied during the last pass.
    pub dirty_rate: u64,
    /// Bytes per second the last pass sent.
    pub throughput: u64,
    /// Milliseconds since the migration started.
    pub total_ms: u64,
    /// Milliseconds the guest was paused (once it has been).
    pub downtime_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// `PUT /api/v1/vm.send-migration` (Cloud Hypervisor's `SendMigrationData`,
/// plus Caravel's knobs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmSendMigrationData {
    /// `unix:/path` or `tcp:HOST:PORT`.
    pub destination_url: String,
    /// Same-host migration: guest memory (shared=on) is handed over as
    /// file descriptors over the unix: socket instead of being copied.
    #[serde(default)]
    pub local: bool,
    /// The pause the guest may see, in milliseconds (default 300): pre-copy
    /// ends when what is left to send fits it.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Most passes over memory before the guest is paused anyway (default 30).
    #[serde(default)]
    pub max_iterations: Option<u32>,
}

/// `PUT /api/v1/vm.receive-migration` (Cloud Hypervisor's `ReceiveMigrationData`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmReceiveMigrationData {
    /// `unix:/path` or `tcp:HOST:PORT` to listen on.
    pub receiver_url: String,
}

/// Guest memory in `vm.info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Boot RAM in bytes.
    pub boot_size: u64,
    /// The virtio-mem device, if configured.
    pub hotplug: Option<HotplugInfo>,
    /// The virtio-balloon device, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonInfo>,
    /// The memory autopilot (`autosize=on`): `min`, `max`, `headroom`,
    /// `target` (total RAM asked for now), `last` (the last decision:
    /// `requested`, `total`, `used`, `reason`), `last_ms_ago`, `samples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autosize: Option<serde_json::Value>,
}

/// The virtio-balloon device's state in `vm.info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BalloonInfo {
    /// Bytes the host asks the guest to give (`num_pages`).
    pub size: u64,
    /// Bytes the guest says are in the balloon (`actual`).
    pub actual: u64,
    /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` offered.
    pub deflate_on_oom: bool,
    /// `VIRTIO_BALLOON_F_PAGE_REPORTING` offered.
    pub free_page_reporting: bool,
    /// Seconds between statistics requests (0: none).
    pub stats_interval: u64,
    /// Whether the guest's driver has started the device.
    pub driver_active: bool,
}

/// `GET /api/v1/vm.balloon-stats` (Firecracker's `BalloonStats`, plus the
/// age of the figures). Statistics the guest did not send are absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BalloonStats {
    /// Target size in 4 KiB pages.
    pub target_pages: u64,
    /// Pages in the balloon.
    pub actual_pages: u64,
    /// Target size in MiB.
    pub target_mib: u64,
    /// MiB in the balloon.
    pub actual_mib: u64,
    /// Milliseconds since the guest sent these figures.
    pub age_ms: u64,
    /// The guest's figures.
    #[serde(flatten)]
    pub guest: std::collections::BTreeMap<String, u64>,
}

/// The virtio-mem device's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HotplugInfo {
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Size of the region.
    pub region_size: u64,
    /// Plug granularity.
    pub block_size: u64,
    /// How much of the region the guest may use now.
    pub usable_region_size: u64,
    /// What the host asks the guest to plug.
    pub requested_size: u64,
    /// What the guest has plugged.
    pub plugged_size: u64,
    /// Whether the guest's driver has started the device.
    pub driver_active: bool,
}

/// `GET /api/v1/vm.counters` (Cloud Hypervisor's shape: counters by group).
/// Caravel's group is `kvm`: KVM's vCPU statistics, summed over vCPUs.
pub type VmCounters = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

/// Parses a request body that must be a JSON object: serde would also take a
/// struct from a JSON array (`[402653184, null, null]`), which no client
/// means.
pub fn from_json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("the body must be a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// `PUT /api/v1/vm.resize` (Cloud Hypervisor's `VmResize`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmResizeRequest {
    /// Total guest RAM wanted: boot RAM plus hotplugged memory, in bytes.
    pub desired_ram: Option<u64>,
    /// Not supported by Caravel.
    pub desired_vcpus: Option<u32>,
    /// Bytes the balloon should hold (`--balloon`'s size at run time).
    pub desired_balloon: Option<u64>,
}

/// `PUT /api/v1/vm.snapshot` (Cloud Hypervisor's `VmSnapshotConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshotConfig {
    /// `file:///DIR`: the directory the snapshot is written to.
    pub destination_url: String,
}

/// A device in `vm.info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Name, e.g. `virtio-blk0`.
    pub id: String,
    /// PCI address, e.g. `0000:00:01.0`.
    pub pci_bdf: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_body_must_be_an_object() {
        let ok: VmResizeRequest = from_json_object(br#"{"desired_ram": 402653184}"#).unwrap();
        assert_eq!(ok.desired_ram, Some(402_653_184));
        // serde alone takes a struct from an array: refused here.
        assert!(serde_json::from_slice::<VmResizeRequest>(b"[402653184,null,null]").is_ok());
        let err = from_json_object::<VmResizeRequest>(b"[402653184,null,null]").unwrap_err();
        assert!(err.contains("JSON object"), "{err}");
        assert!(from_json_object::<VmResizeRequest>(br#"{"desired_ram": 1, "x": 2}"#).is_err());
        assert!(from_json_object::<VmResizeRequest>(b"").is_err());
    }
}
