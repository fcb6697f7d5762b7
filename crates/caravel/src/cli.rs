//! `caravel`'s command line, in Cloud Hypervisor's syntax where the feature is
//! the same, turned into a [`VmConfig`].

use std::path::{Path, PathBuf};

use clap::Parser;
use vmm::config::{
    AutosizeConfig, BalloonConfig, ConsoleConfig, CpusConfig, DeviceConfig, DiskConfig,
    HotplugConfig, LinuxPayload, MacAddr, MemoryConfig, NetConfig, Payload, VmConfig, VsockConfig,
};
use vmm::seccomp::SeccompMode;

use crate::options::{KeyValues, OptionError};

/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest boot RAM accepted (the guest-physical layout keeps room above it).
pub const MAX_MEMORY: u64 = 1 << 40;
/// Command line used when `--cmdline` is not given: the console on the
/// platform's UART (x86: the 16550 COM1; arm64: the PL011).
#[cfg(not(target_arch = "aarch64"))]
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Command line used when `--cmdline` is not given: the console on the
/// platform's UART (x86: the 16550 COM1; arm64: the PL011).
#[cfg(target_arch = "aarch64")]
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0";

const AFTER_HELP: &str = "\
Examples:
  caravel --kernel vmlinux --initramfs initrd.cpio.gz --cmdline \"console=ttyS0\" \\
          --cpus boot=2 --memory size=512M --api-socket /tmp/caravel.sock
  caravel-remote --api-socket /tmp/caravel.sock info
  caravel-remote --api-socket /tmp/caravel.sock pause
  caravel-remote --api-socket /tmp/caravel.sock snapshot file:///var/tmp/snap
  caravel --restore source_url=file:///var/tmp/snap,resume=on --api-socket /tmp/c2.sock

Live migration (Cloud Hypervisor's flow): start the destination without --kernel,
then have it listen and the source send:
  caravel --api-socket /tmp/dst.sock &
  caravel-remote --api-socket /tmp/dst.sock receive-migration unix:/tmp/mig.sock &
  caravel-remote --api-socket /tmp/caravel.sock send-migration unix:/tmp/mig.sock

Exit status: 0 when the guest powers off (or reboots with --no-reboot) or the
VM is shut down through the API or SIGTERM; 1 when the guest crashes (triple
fault, KVM internal error) or Caravel fails; 2 for a bad command line.";

/// Command-line arguments of `caravel`.
#[derive(Debug, Parser)]
#[command(
    name = "caravel",
    version,
    about = "Caravel: a KVM virtual machine monitor",
    long_about = "Caravel boots a Linux guest under KVM: an ELF vmlinux through its PVH entry or a \
                  bzImage through the 64-bit boot protocol, with an 8250 UART on COM1, ACPI power \
                  management and a REST control API on a Unix socket.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Kernel: an ELF vmlinux (booted through its PVH entry when it has one) or a bzImage.
    /// Without it (and without --restore) Caravel starts with no VM and waits
    /// for one to arrive through vm.receive-migration on --api-socket.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "api_socket"])]
    pub kernel: Option<PathBuf>,

    /// Start from a snapshot instead of booting (see `--help`).
    #[arg(
        long,
        value_name = "source_url=file:///DIR[,resume=on][,prefault=on]",
        conflicts_with_all = ["kernel", "initramfs", "cmdline", "cpus", "memory", "disk", "device", "net", "vsock", "rng", "balloon"],
        help = "Start from a snapshot taken with vm.snapshot (caravel-remote snapshot) \
                instead of booting: source_url=file:///DIR[,resume=on]. The VM's vCPUs, \
                memory and devices come from the snapshot (its disk images must still \
                be there); --serial, --console, --api-socket, --event-monitor, \
                --seccomp and --no-reboot are taken from this command line. The VM comes \
                up paused (resume it with caravel-remote resume) unless resume=on. Guest \
                memory is mapped from the snapshot's memory file and read as the guest \
                touches it; prefault=on copies it all in before the VM starts (always \
                so for shared=on or hugepages=on memory)."
    )]
    pub restore: Option<String>,

    /// initramfs image (cpio, optionally compressed in a format the kernel supports).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line [default: "console=ttyS0"; on arm64 "console=ttyAMA0"].
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,

    /// vCPUs: boot=N (1 to 254, and at most what the host's KVM allows).
    #[arg(long, value_name = "boot=N", default_value = "boot=1")]
    pub cpus: String,

    /// Guest RAM and its virtio-mem hotplug region (see `--help`).
    #[arg(
        long,
        value_name = "size=SIZE[,..]",
        default_value = "size=512M",
        help = "Guest RAM: size=SIZE[,hotplug_size=SIZE[,hotplug_method=virtio-mem]\
                [,hotplugged_size=SIZE][,block_size=SIZE]][,shared=on][,hugepages=on]. \
                Sizes take K, M, G or T. hotplug_size adds a virtio-mem region (a multiple \
                of 128M) resizable at run time with caravel-remote resize (the guest needs \
                memhp_default_state=online_movable on its command line to give memory back); \
                hotplug_method=virtio-mem is the default and only method; hotplugged_size is \
                plugged at boot; block_size (a power of two, default 2M) is the plug \
                granularity. shared=on backs memory with a memfd, hugepages=on with \
                hugetlbfs (2M pages)."
    )]
    pub memory: String,

    /// COM1 output: tty (stdin/stdout; raw mode on a terminal), off, or file=PATH.
    #[arg(long, value_name = "tty|off|file=PATH", default_value = "tty")]
    pub serial: String,

    /// virtio-console (the guest's hvc0): tty, off, or file=PATH. At most one of
    /// --serial and --console can be tty.
    #[arg(long, value_name = "tty|off|file=PATH", default_value = "off")]
    pub console: String,

    /// virtio-blk disks backed by raw images (see `--help`).
    #[arg(
        long,
        value_name = "path=PATH[,readonly=on]",
        help = "A virtio-blk disk backed by a raw image: path=PATH[,readonly=on][,id=SERIAL]. \
                Repeat for more disks (the guest sees vda, vdb, ...)."
    )]
    pub disk: Vec<String>,

    /// virtio-net devices on host TAPs (see `--help`).
    #[arg(
        long,
        value_name = "tap=NAME[,mac=MAC][,ip=IP,mask=MASK][,num_queues=N][,queue_size=N]",
        help = "A virtio-net device on a host TAP: tap=NAME[,mac=MAC][,host_mac=MAC][,ip=IP,mask=MASK]\
                [,num_queues=N][,queue_size=N][,id=NAME], or fd=N (fd=[N,M,...] for \
                several queue pairs) for TAPs already open in Caravel's process, opened \
                with IFF_VNET_HDR. An existing TAP is opened; a missing one is created, \
                given ip= and mask= (default 255.255.255.0) and host_mac=, brought up, and removed when \
                Caravel exits. num_queues counts receive plus transmit queues (default 2, \
                one pair; more pairs need a multi-queue TAP and use one host thread each), \
                queue_size defaults to 256. Without mac= the guest gets a random locally \
                administered address. Creating or opening a TAP needs CAP_NET_ADMIN. \
                Repeat for more devices."
    )]
    pub net: Vec<String>,

    /// A virtio-vsock device (see `--help`).
    #[arg(
        long,
        value_name = "cid=N,socket=PATH",
        help = "A virtio-vsock device: cid=N,socket=PATH[,id=NAME]. The guest's CID is N \
                (3 or more). Host programs reach a guest port by connecting to the Unix \
                socket PATH and writing \"CONNECT <port>\\n\"; Caravel answers \
                \"OK <host port>\\n\" once the guest accepts (and closes the connection if \
                nothing listens there), then the connection is the stream. A guest \
                connection to CID 2 port P reaches the listener at PATH_P. Caravel creates \
                PATH (replacing a stale socket) and removes it at exit. See docs/vsock.md."
    )]
    pub vsock: Option<String>,

    /// Host PCI devices passed through with VFIO (see `--help`).
    #[arg(
        long,
        value_name = "path=PATH[,vf_token=UUID]",
        help = "A host PCI device passed through with VFIO: \
                path=/sys/bus/pci/devices/BDF[,vf_token=UUID][,id=NAME]. The device must \
                be bound to vfio-pci; a VF of a PF that vfio-pci owns needs the token its \
                PF owner set (caravel-sriov enable --vf-token). Repeatable."
    )]
    pub device: Vec<String>,

    /// A virtio-rng device fed by the host's getrandom(2).
    #[arg(long)]
    pub rng: bool,

    /// A virtio-balloon device (see `--help`).
    #[arg(
        long,
        value_name = "size=SIZE[,deflate_on_oom=on][,free_page_reporting=on][,stats_interval=SECONDS]",
        help = "A virtio-balloon device: size=SIZE[,deflate_on_oom=on][,free_page_reporting=on]\
                [,stats_interval=SECONDS]. size is the memory asked back from the guest at boot \
                (0 for none; change it at run time with caravel-remote resize --balloon SIZE). \
                deflate_on_oom=on lets the guest take balloon pages back instead of OOM-killing; \
                free_page_reporting=on makes the guest report free memory, which Caravel returns \
                to the host at once; stats_interval=N asks the guest for its memory statistics \
                every N seconds (caravel-remote balloon-stats; 0, the default, offers none). \
                Pages of memory mapped for a --device's DMA are never returned. See \
                docs/balloon.md."
    )]
    pub balloon: Option<String>,

    /// Serve the REST control API on this Unix socket (path=PATH or just PATH).
    #[arg(long, value_name = "path=PATH")]
    pub api_socket: Option<String>,

    /// Write timestamped lifecycle events (JSON lines) to this file (path=PATH or just PATH).
    #[arg(long, value_name = "path=PATH")]
    pub event_monitor: Option<String>,

    /// Exit (status 0) when the guest reboots instead of restarting it.
    #[arg(long)]
    pub no_reboot: bool,

    /// The sandbox: a seccomp filter per thread (true), none (false), or
    /// filters that only log what they would refuse (log; the kernel's
    /// audit log shows it). See docs/security.md.
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: String,

    /// More log output (repeat for more: -v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn readable_file(flag: &'static str, path: &Path) -> Result<(), OptionError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::File::open(path)
            .map(|_| ())
            .map_err(|e| OptionError::new(flag, format!("cannot open {}: {e}", path.display()))),
        Ok(_) => Err(OptionError::new(
            flag,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(OptionError::new(
            flag,
            format!("cannot open {}: {e}", path.display()),
        )),
    }
}

fn parse_path(flag: &'static str, s: &str) -> Result<PathBuf, OptionError> {
    let kv = KeyValues::parse(flag, s, &["path"], Some("path"))?;
    kv.get("path")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| OptionError::new(flag, "path=PATH is required"))
}

/// Parses `--cpus`.
pub fn parse_cpus(s: &str) -> Result<CpusConfig, OptionError> {
    let kv = KeyValues::parse("--cpus", s, &["boot"], Some("boot"))?;
    let boot: u8 = kv.number("boot")?.unwrap_or(1);
    if !(1..=254).contains(&boot) {
        return Err(OptionError::new(
            "--cpus",
            format!("boot={boot} is out of range (1 to 254)"),
        ));
    }
    Ok(CpusConfig { boot_vcpus: boot })
}

/// Hotplug regions are cut in 128 MiB slots (Linux memory blocks).
const SLOT: u64 = 128 << 20;
/// Smallest virtio-mem block.
const MIN_BLOCK: u64 = 2 << 20;

/// Most headroom the autopilot takes, in percent.
const MAX_HEADROOM: u64 = 400;
/// The autopilot's default headroom, in percent.
const DEFAULT_HEADROOM: u64 = 20;

/// The autopilot part of `--memory`, for `size` bytes of boot RAM.
fn parse_autosize(
    kv: &KeyValues,
    size: u64,
    hotplug: Option<&HotplugConfig>,
) -> Result<Option<AutosizeConfig>, OptionError> {
    let flag = "--memory";
    let fmt = arch::format_size;
    if !kv.toggle("autosize")?.unwrap_or(false) {
        for k in ["min", "max", "headroom"] {
            if kv.get(k).is_some() {
                return Err(OptionError::new(flag, format!("{k}= needs autosize=on")));
            }
        }
        return Ok(None);
    }
    let Some(h) = hotplug else {
        return Err(OptionError::new(
            flag,
            "autosize=on sizes the virtio-mem region: add hotplug_size=SIZE",
        ));
    };
    let top = size + h.hotplug_size;
    let min = kv.size("min")?.unwrap_or(size);
    let max = kv.size("max")?.unwrap_or(top);
    if min < size || min > top {
        return Err(OptionError::new(
            flag,
            format!(
                "min={} must be between size ({}) and size + hotplug_size ({})",
                fmt(min),
                fmt(size),
                fmt(top)
            ),
        ));
    }
    if max < min || max > top {
        return Err(OptionError::new(
            flag,
            format!(
                "max={} must be between min ({}) and size + hotplug_size ({})",
                fmt(max),
                fmt(min),
                fmt(top)
            ),
        ));
    }
    let headroom = kv.number::<u64>("headroom")?.unwrap_or(DEFAULT_HEADROOM);
    if headroom > MAX_HEADROOM {
        return Err(OptionError::new(
            flag,
            format!(
                "headroom={headroom} is more than {MAX_HEADROOM} (percent of the memory in use)"
            ),
        ));
    }
    Ok(Some(AutosizeConfig { min, max, headroom }))
}

/// Parses `--memory`.
pub fn parse_memory(s: &str) -> Result<MemoryConfig, OptionError> {
    let flag = "--memory";
    let kv = KeyValues::parse(
        flag,
        s,
        &[
            "size",
            "hotplug_method",
            "hotplug_size",
            "hotplugged_size",
            "block_size",
            "shared",
            "hugepages",
            "autosize",
            "min",
            "max",
            "headroom",
        ],
        None,
    )?;
    let size = kv
        .size("size")?
        .ok_or_else(|| OptionError::new(flag, "size=SIZE is required, e.g. size=512M"))?;
    let fmt = arch::format_size;
    if size < MIN_MEMORY {
        return Err(OptionError::new(
            flag,
            format!("size={} is too small (at least 16M)", fmt(size)),
        ));
    }
    if size > MAX_MEMORY {
        return Err(OptionError::new(
            flag,
            format!("size={} does not fit (at most 1T)", fmt(size)),
        ));
    }
    let hugepages = kv.toggle("hugepages")?.unwrap_or(false);
    let page = if hugepages { 2 << 20 } else { 4096 };
    if size % page != 0 {
        return Err(OptionError::new(
            flag,
            format!(
                "size={size} is not a multiple of the page size ({})",
                fmt(page)
            ),
        ));
    }
    let hotplug_size = kv.size("hotplug_size")?;
    let hotplug = match hotplug_size {
        None => {
            for k in ["hotplug_method", "hotplugged_size", "block_size"] {
                if kv.get(k).is_some() {
                    return Err(OptionError::new(
                        flag,
                        format!("{k}= needs hotplug_size=SIZE"),
                    ));
                }
            }
            None
        }
        Some(hs) => {
            match kv.get("hotplug_method") {
                None | Some("virtio-mem") => {}
                Some(other) => {
                    return Err(OptionError::new(flag, format!("hotplug_method={other} is not supported; Caravel hotplugs memory with hotplug_method=virtio-mem")))
                }
            }
            let block = kv.size("block_size")?.unwrap_or(MIN_BLOCK);
            if !block.is_power_of_two() || block < MIN_BLOCK {
                return Err(OptionError::new(
                    flag,
                    format!(
                        "block_size={} must be a power of two of at least 2M",
                        fmt(block)
                    ),
                ));
            }
            let granule = block.max(SLOT);
            if hs == 0 || hs % granule != 0 {
                return Err(OptionError::new(flag, format!("hotplug_size={} must be a non-zero multiple of {} (the larger of 128M and block_size)", fmt(hs), fmt(granule))));
            }
            if hs > MAX_MEMORY {
                return Err(OptionError::new(
                    flag,
                    format!("hotplug_size={} does not fit (at most 1T)", fmt(hs)),
                ));
            }
            let plugged = kv.size("hotplugged_size")?.unwrap_or(0);
            if plugged > hs || plugged % block != 0 {
                return Err(OptionError::new(flag, format!("hotplugged_size={} must be a multiple of block_size ({}) and at most hotplug_size ({})", fmt(plugged), fmt(block), fmt(hs))));
            }
            Some(HotplugConfig {
                hotplug_size: hs,
                hotplugged_size: plugged,
                block_size: block,
            })
        }
    };
    let autosize = parse_autosize(&kv, size, hotplug.as_ref())?;
    Ok(MemoryConfig {
        size,
        shared: kv.toggle("shared")?.unwrap_or(false),
        hugepages,
        hotplug,
        autosize,
    })
}

/// Parses one `--net` (Cloud Hypervisor's keys). A missing MAC is drawn
/// here, so `vm.info` and a snapshot show the one the guest has.
pub fn parse_net(s: &str) -> Result<NetConfig, OptionError> {
    const FLAG: &str = "--net";
    // fd=[3,4]: the list's commas are not option separators.
    let mut flat = String::with_capacity(s.len());
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth > 0 => {
                flat.push(';');
                continue;
            }
            _ => {}
        }
        flat.push(c);
    }
    let kv = KeyValues::parse(
        FLAG,
        &flat,
        &[
            "tap",
            "fd",
            "mac",
            "host_mac",
            "ip",
            "mask",
            "num_queues",
            "queue_size",
            "id",
        ],
        Some("tap"),
    )?;
    let tap = kv.get("tap").map(str::to_string);
    let fds: Vec<i32> = match kv.get("fd") {
        None => Vec::new(),
        Some(v) => v
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(';')
            .map(|n| {
                n.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|&n| n >= 0)
                    .ok_or_else(|| {
                        OptionError::new(FLAG, format!("fd={v}: a descriptor number or [N,M,...]"))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    match (&tap, fds.is_empty()) {
        (Some(_), false) => {
            return Err(OptionError::new(
                FLAG,
                "tap= and fd= exclude each other: name a TAP or pass its descriptors",
            ))
        }
        (None, true) => {
            return Err(OptionError::new(
                FLAG,
                "tap=NAME (or fd=N for an open TAP) is required",
            ))
        }
        (Some(t), _) if t.is_empty() || t.len() > 15 || t.contains('/') => {
            return Err(OptionError::new(
                FLAG,
                format!("tap={t}: an interface name is 1 to 15 bytes without '/'"),
            ))
        }
        _ => {}
    }
    let mac = match kv.get("mac") {
        Some(m) => m
            .parse::<MacAddr>()
            .map_err(|e| OptionError::new(FLAG, format!("mac={e}")))?,
        None => MacAddr(vmm::tap::random_mac()),
    };
    let host_mac = kv
        .get("host_mac")
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| OptionError::new(FLAG, format!("host_mac={e}")))
        })
        .transpose()?;
    if host_mac.is_some() && !fds.is_empty() {
        return Err(OptionError::new(
            FLAG,
            "host_mac= sets up a TAP Caravel creates: with fd= the TAP is already set up",
        ));
    }
    let ipv4 = |key: &str| -> Result<Option<std::net::Ipv4Addr>, OptionError> {
        kv.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    OptionError::new(FLAG, format!("{key}={v} is not an IPv4 address"))
                })
            })
            .transpose()
    };
    let ip = ipv4("ip")?;
    let mut mask = ipv4("mask")?;
    match (ip, mask) {
        (None, Some(_)) => return Err(OptionError::new(FLAG, "mask= needs ip=")),
        (Some(_), None) => mask = Some(std::net::Ipv4Addr::new(255, 255, 255, 0)),
        _ => {}
    }
    if ip.is_some() && !fds.is_empty() {
        return Err(OptionError::new(
            FLAG,
            "ip= configures a TAP Caravel creates: with fd= the TAP is already set up",
        ));
    }
    // fd=[N,M]: one pair per descriptor unless num_queues says otherwise.
    let default_queues = (2 * fds.len().max(1)).min(usize::from(u16::MAX)) as u16;
    let num_queues = kv.number::<u16>("num_queues")?.unwrap_or(default_queues);
    let max = 2 * vmm::tap::MAX_QUEUE_PAIRS;
    if num_queues < 2 || num_queues % 2 != 0 || num_queues > max {
        return Err(OptionError::new(
            FLAG,
            format!("num_queues={num_queues}: an even number from 2 to {max} (receive + transmit per pair)"),
        ));
    }
    if !fds.is_empty() && fds.len() != usize::from(num_queues / 2) {
        return Err(OptionError::new(
            FLAG,
            format!(
                "{} descriptors for num_queues={num_queues}: give one TAP queue per pair",
                fds.len()
            ),
        ));
    }
    let queue_size = kv
        .number::<u16>("queue_size")?
        .unwrap_or(vmm::tap::DEFAULT_QUEUE_SIZE);
    if !queue_size.is_power_of_two() || !(64..=32768).contains(&queue_size) {
        return Err(OptionError::new(
            FLAG,
            format!("queue_size={queue_size}: a power of two from 64 to 32768"),
        ));
    }
    Ok(NetConfig {
        tap,
        fds,
        mac,
        host_mac,
        ip,
        mask,
        num_queues,
        queue_size,
        id: kv.get("id").map(str::to_string),
    })
}

/// Most seconds between balloon statistics requests.
const MAX_STATS_INTERVAL: u64 = 3600;

/// Parses `--balloon` for a VM with `memory`.
pub fn parse_balloon(s: &str, memory: &MemoryConfig) -> Result<BalloonConfig, OptionError> {
    const FLAG: &str = "--balloon";
    let kv = KeyValues::parse(
        FLAG,
        s,
        &[
            "size",
            "deflate_on_oom",
            "free_page_reporting",
            "stats_interval",
        ],
        Some("size"),
    )?;
    let size = kv
        .size("size")?
        .ok_or_else(|| OptionError::new(FLAG, "size=SIZE is required (0 for an empty balloon)"))?;
    let total = memory.size + memory.hotplug.map_or(0, |h| h.hotplug_size);
    if size >= total {
        return Err(OptionError::new(
            FLAG,
            format!(
                "size={} is not less than the guest's memory ({}): use a smaller size",
                arch::format_size(size),
                arch::format_size(total)
            ),
        ));
    }
    let stats_interval = kv.number::<u64>("stats_interval")?.unwrap_or(0);
    if stats_interval > MAX_STATS_INTERVAL {
        return Err(OptionError::new(
            FLAG,
            format!("stats_interval={stats_interval} is more than an hour: use 0 to {MAX_STATS_INTERVAL} seconds"),
        ));
    }
    Ok(BalloonConfig {
        size,
        deflate_on_oom: kv.toggle("deflate_on_oom")?.unwrap_or(false),
        free_page_reporting: kv.toggle("free_page_reporting")?.unwrap_or(false),
        stats_interval,
    })
}

/// Parses `--vsock`.
pub fn parse_vsock(s: &str) -> Result<VsockConfig, OptionError> {
    const FLAG: &str = "--vsock";
    let kv = KeyValues::parse(FLAG, s, &["cid", "socket", "id"], None)?;
    let cid = kv
        .number::<u64>("cid")?
        .ok_or_else(|| OptionError::new(FLAG, "cid=N is required (the guest's CID, 3 or more)"))?;
    if !vmm::config::valid_guest_cid(cid) {
        return Err(OptionError::new(
            FLAG,
            format!(
                "cid={cid} is reserved (0-2 are the hypervisor, loopback and host): use 3 to {}",
                u32::MAX - 1
            ),
        ));
    }
    let socket = kv
        .get("socket")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            OptionError::new(FLAG, "socket=PATH is required (the host's Unix socket)")
        })?;
    // sun_path holds 107 bytes; guest connections go to PATH_<port>, up to
    // 11 more.
    if socket.as_os_str().len() > 107 - 11 {
        return Err(OptionError::new(
            FLAG,
            format!(
                "socket={} is too long for a Unix socket with its _<port> suffix (at most 96 bytes): use a shorter path",
                socket.display()
            ),
        ));
    }
    Ok(VsockConfig {
        cid,
        socket,
        id: kv.get("id").map(str::to_string),
    })
}

/// Parses one `--disk`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, OptionError> {
    let kv = KeyValues::parse("--disk", s, &["path", "readonly", "id"], Some("path"))?;
    let path = kv
        .get("path")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| OptionError::new("--disk", "path=PATH is required"))?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(OptionError::new(
                "--disk",
                format!("{} is not a regular file (raw images only)", path.display()),
            ))
        }
        Err(e) => {
            return Err(OptionError::new(
                "--disk",
                format!("cannot open {}: {e}", path.display()),
            ))
        }
    }
    let id = kv.get("id").map(str::to_string);
    if id.as_ref().is_some_and(|i| i.len() > 20) {
        return Err(OptionError::new(
            "--disk",
            "id= is at most 20 bytes (virtio-blk serial)",
        ));
    }
    Ok(DiskConfig {
        path,
        readonly: kv.toggle("readonly")?.unwrap_or(false),
        id,
    })
}

/// Parses one `--device`.
pub fn parse_device(s: &str) -> Result<DeviceConfig, OptionError> {
    let kv = KeyValues::parse("--device", s, &["path", "vf_token", "id"], Some("path"))?;
    let path = kv
        .get("path")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| OptionError::new("--device", "path=/sys/bus/pci/devices/BDF is required"))?;
    let bdf = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<vfio::PciAddress>().ok())
        .ok_or_else(|| {
            OptionError::new(
                "--device",
                format!("path={} does not end in a PCI address; use path=/sys/bus/pci/devices/0000:BB:DD.F", path.display()),
            )
        })?;
    let vf_token = kv
        .get("vf_token")
        .map(|t| {
            t.parse::<vfio::VfToken>()
                .map_err(|e| OptionError::new("--device", format!("vf_token: {e}")))
        })
        .transpose()?;
    Ok(DeviceConfig {
        path,
        bdf,
        vf_token,
        id: kv.get("id").map(str::to_string),
    })
}

/// Parses `--seccomp` (Cloud Hypervisor's values).
pub fn parse_seccomp(s: &str) -> Result<SeccompMode, OptionError> {
    match s {
        "true" | "on" => Ok(SeccompMode::Enforce),
        "false" | "off" => Ok(SeccompMode::Off),
        "log" => Ok(SeccompMode::Log),
        other => Err(OptionError::new(
            "--seccomp",
            format!("'{other}' is not true, false or log"),
        )),
    }
}

/// Parses `--serial` or `--console`.
pub fn parse_console(flag: &'static str, s: &str) -> Result<ConsoleConfig, OptionError> {
    match s {
        "tty" => Ok(ConsoleConfig::Tty),
        "off" | "null" => Ok(ConsoleConfig::Off),
        _ => {
            let kv = KeyValues::parse(flag, s, &["file"], None).map_err(|_| {
                OptionError::new(flag, format!("'{s}' is not tty, off or file=PATH"))
            })?;
            match kv.get("file") {
                Some(p) if !p.is_empty() => Ok(ConsoleConfig::File(p.into())),
                _ => Err(OptionError::new(flag, "file=PATH needs a path")),
            }
        }
    }
}

/// `--restore`: where the snapshot is and whether to resume at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOption {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// `resume=on`.
    pub resume: bool,
    /// `prefault=on`: copy guest memory in before the VM starts.
    pub prefault: bool,
}

/// Parses `--restore source_url=file:///DIR[,resume=on]`.
pub fn parse_restore(s: &str) -> Result<RestoreOption, OptionError> {
    let flag = "--restore";
    let kv = KeyValues::parse(
        flag,
        s,
        &["source_url", "resume", "prefault"],
        Some("source_url"),
    )?;
    let url = kv
        .get("source_url")
        .ok_or_else(|| OptionError::new(flag, "source_url=file:///DIR is required"))?;
    let dir = vmm::snapshot::files::dir_of_url(flag, url).map_err(|e| {
        OptionError::new(
            flag,
            e.to_string().trim_start_matches("--restore: ").to_string(),
        )
    })?;
    Ok(RestoreOption {
        dir,
        resume: kv.toggle("resume")?.unwrap_or(false),
        prefault: kv.toggle("prefault")?.unwrap_or(false),
    })
}

impl Args {
    /// Whether this caravel starts without a VM and waits for a migration
    /// (no `--kernel`, no `--restore`).
    pub fn incoming(&self) -> bool {
        self.kernel.is_none() && self.restore.is_none()
    }

    /// `--restore`, checked.
    pub fn restore(&self) -> Result<Option<RestoreOption>, OptionError> {
        self.restore.as_deref().map(parse_restore).transpose()
    }

    /// Without `--kernel`, the VM comes from a migration's source: options
    /// that shape the VM are refused by name.
    fn check_incoming(&self) -> Result<(), OptionError> {
        let given: [(&'static str, bool); 10] = [
            ("--initramfs", self.initramfs.is_some()),
            ("--cmdline", self.cmdline.is_some()),
            // (clap fills in their defaults: only other values are seen)
            ("--cpus", self.cpus != "boot=1"),
            ("--memory", self.memory != "size=512M"),
            ("--disk", !self.disk.is_empty()),
            ("--device", !self.device.is_empty()),
            ("--net", !self.net.is_empty()),
            ("--vsock", self.vsock.is_some()),
            ("--rng", self.rng),
            ("--balloon", self.balloon.is_some()),
        ];
        match given.iter().find(|(_, g)| *g) {
            Some((flag, _)) => Err(OptionError::new(
                flag,
                "a caravel without --kernel receives its VM through vm.receive-migration, \
                 and the VM's shape and devices come from the source: drop this option \
                 (or give --kernel to boot a VM here)",
            )),
            None => Ok(()),
        }
    }

    /// Checks every option and builds the VM configuration. With
    /// `--restore` the payload is empty: the snapshot brings the VM.
    pub fn to_config(&self) -> Result<VmConfig, OptionError> {
        let kernel =
            match (&self.kernel, &self.restore, &self.api_socket) {
                (Some(k), _, _) => k.clone(),
                (None, Some(_), _) => PathBuf::new(),
                (None, None, Some(_)) => {
                    self.check_incoming()?;
                    PathBuf::new()
                }
                (None, None, None) => return Err(OptionError::new(
                    "--kernel",
                    "a kernel is required (or --restore, or --api-socket to receive a migration)",
                )),
            };
        if self.kernel.is_some() {
            readable_file("--kernel", &kernel)?;
        }
        if let Some(p) = &self.initramfs {
            readable_file("--initramfs", p)?;
        }
        let cmdline = self
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        if cmdline.len() >= arch::CMDLINE_MAX_SIZE {
            return Err(OptionError::new(
                "--cmdline",
                format!(
                    "{} bytes is too long (at most {})",
                    cmdline.len(),
                    arch::CMDLINE_MAX_SIZE - 1
                ),
            ));
        }
        let serial = parse_console("--serial", &self.serial)?;
        let console = parse_console("--console", &self.console)?;
        if serial == ConsoleConfig::Tty && console == ConsoleConfig::Tty {
            return Err(OptionError::new("--console", "tty is already taken by --serial; use --serial off (or file=PATH) with --console tty"));
        }
        let memory = parse_memory(&self.memory)?;
        let balloon = self
            .balloon
            .as_deref()
            .map(|b| parse_balloon(b, &memory))
            .transpose()?;
        if memory.autosize.is_some() && balloon.is_none_or(|b| b.stats_interval == 0) {
            return Err(OptionError::new(
                "--memory",
                "autosize=on steers by the guest's memory statistics: add --balloon \
                 size=0,stats_interval=1 (with free_page_reporting=on the free memory \
                 in between goes back to the host too)",
            ));
        }
        Ok(VmConfig {
            cpus: parse_cpus(&self.cpus)?,
            memory,
            payload: Payload::Linux(LinuxPayload {
                kernel,
                initramfs: self.initramfs.clone(),
                cmdline,
            }),
            serial,
            console,
            disks: self
                .disk
                .iter()
                .map(|d| parse_disk(d))
                .collect::<Result<_, _>>()?,
            devices: self
                .device
                .iter()
                .map(|d| parse_device(d))
                .collect::<Result<_, _>>()?,
            net: self
                .net
                .iter()
                .map(|n| parse_net(n))
                .collect::<Result<_, _>>()?,
            vsock: self.vsock.as_deref().map(parse_vsock).transpose()?,
            rng: self.rng,
            balloon,
            api_socket: self
                .api_socket
                .as_deref()
                .map(|s| parse_path("--api-socket", s))
                .transpose()?,
            event_monitor: self
                .event_monitor
                .as_deref()
                .map(|s| parse_path("--event-monitor", s))
                .transpose()?,
            no_reboot: self.no_reboot,
            seccomp: parse_seccomp(&self.seccomp)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut v = vec!["caravel", "--kernel", "/proc/self/exe"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v)
    }

    fn err(extra: &[&str]) -> String {
        args(extra).unwrap().to_config().unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap().to_config().unwrap();
        assert_eq!(c.cpus.boot_vcpus, 1);
        assert_eq!(c.memory.size, 512 << 20);
        assert_eq!(c.serial, ConsoleConfig::Tty);
        assert!(!c.no_reboot && c.api_socket.is_none());
        let Payload::Linux(p) = c.payload else {
            panic!()
        };
        assert_eq!(p.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn full_command_line() {
        let c = args(&[
            "--cpus",
            "boot=2",
            "--memory",
            "size=1G",
            "--serial",
            "file=/tmp/x",
            "--api-socket",
            "path=/tmp/a.sock",
            "--event-monitor",
            "/tmp/ev",
            "--cmdline",
            "quiet",
            "--no-reboot",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!((c.cpus.boot_vcpus, c.memory.size), (2, 1 << 30));
        assert_eq!(c.serial, ConsoleConfig::File("/tmp/x".into()));
        assert_eq!(c.api_socket.as_deref(), Some(Path::new("/tmp/a.sock")));
        assert_eq!(c.event_monitor.as_deref(), Some(Path::new("/tmp/ev")));
        assert!(c.no_reboot);
    }

    #[test]
    fn devices_take_a_sysfs_path_and_an_optional_token() {
        let c = args(&[
            "--device",
            "path=/sys/bus/pci/devices/0000:00:13.2,vf_token=0B7C5F5E-6a0b-4a1f-9f3a-6f1f0c2d9e11,id=nic",
            "--device",
            "/sys/bus/pci/devices/0000:00:04.0",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].bdf.to_string(), "0000:00:13.2");
        assert_eq!(
            c.devices[0].vf_token.map(|t| t.to_string()).as_deref(),
            Some("0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11")
        );
        assert_eq!(c.devices[0].id.as_deref(), Some("nic"));
        assert!(c.devices[1].vf_token.is_none());
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            !json.contains("0b7c5f5e"),
            "the token never reaches vm.info: {json}"
        );
        assert!(err(&["--device", "path=/dev/vfio/12"])
            .starts_with("--device: path=/dev/vfio/12 does not end in a PCI address"));
        assert!(err(&[
            "--device",
            "path=/sys/bus/pci/devices/0000:00:13.2,vf_token=xyz"
        ])
        .starts_with("--device: vf_token: `xyz` is not a UUID"));
        assert!(
            err(&["--device", "vf_token=0b7c5f5e-6a0b-4a1f-9f3a-6f1f0c2d9e11"])
                .starts_with("--device: path=")
        );
        assert!(
            err(&["--device", "path=/sys/bus/pci/devices/0000:00:13.2,rom=off"])
                .starts_with("--device: unknown key 'rom'")
        );
    }

    #[test]
    fn every_error_names_its_flag() {
        assert!(err(&["--cpus", "boot=0"]).starts_with("--cpus: boot=0 is out of range"));
        assert!(err(&["--cpus", "boot=300"]).starts_with("--cpus: boot=300 is not a valid number"));
        assert!(err(&["--cpus", "max=4"]).starts_with("--cpus: unknown key 'max'"));
        assert!(err(&["--memory", "size=1M"]).starts_with("--memory: size=1M is too small"));
        assert!(err(&["--memory", "size=2T"]).starts_with("--memory: size=2T does not fit"));
        assert!(err(&["--memory", "size=16777217"])
            .starts_with("--memory: size=16777217 is not a multiple of the page size (4K)"));
        assert!(err(&["--memory", "size=12Q"]).starts_with("--memory: size=12Q: "));
        assert!(err(&["--memory", "hotplug=1G"]).starts_with("--memory: unknown key"));
        assert!(err(&["--memory", "size=256M,hotplug_size=100M"])
            .starts_with("--memory: hotplug_size=100M must be a non-zero multiple of 128M"));
        assert!(
            err(&["--memory", "size=256M,hotplug_size=1G,block_size=3M"])
                .starts_with("--memory: block_size=3M must be a power of two")
        );
        assert!(
            err(&["--memory", "size=256M,hotplug_size=1G,block_size=1M"])
                .starts_with("--memory: block_size=1M must be a power of two of at least 2M")
        );
        assert!(
            err(&["--memory", "size=256M,hotplug_size=1152M,block_size=256M"])
                .starts_with("--memory: hotplug_size=1152M must be a non-zero multiple of 256M")
        );
        assert!(
            err(&["--memory", "size=256M,hotplug_size=1G,hotplugged_size=2G"])
                .starts_with("--memory: hotplugged_size=2G must be")
        );
        assert!(
            err(&["--memory", "size=256M,hotplug_size=1G,hotplugged_size=3M"])
                .starts_with("--memory: hotplugged_size=3M must be a multiple of block_size")
        );
        assert!(err(&["--memory", "size=256M,hotplugged_size=2M"])
            .starts_with("--memory: hotplugged_size= needs hotplug_size=SIZE"));
        assert!(
            err(&["--memory", "size=256M,hotplug_size=1G,hotplug_method=acpi"])
                .contains("hotplug_method=virtio-mem")
        );
        assert!(err(&["--memory", "size=255M,hugepages=on"])
            .starts_with("--memory: size=267386880 is not a multiple of the page size (2M)"));
        assert!(err(&["--memory", "size=256M,shared=maybe"])
            .starts_with("--memory: shared=maybe: use on or off"));
        assert!(
            err(&["--serial", "pty"]).starts_with("--serial: 'pty' is not tty, off or file=PATH")
        );
        assert!(err(&["--serial", "file="]).starts_with("--serial: file=PATH needs a path"));
        assert!(err(&["--api-socket", "path="]).starts_with("--api-socket: path=PATH is required"));
        assert!(err(&["--initramfs", "/nonexistent/initrd"])
            .starts_with("--initramfs: cannot open /nonexistent/initrd"));
        assert!(err(&["--initramfs", "/"]).starts_with("--initramfs: / is not a regular file"));
        let long = "x".repeat(3000);
        assert!(err(&["--cmdline", &long]).starts_with("--cmdline: 3000 bytes is too long"));
        let e = Args::try_parse_from(["caravel", "--kernel", "/nonexistent"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("--kernel: cannot open /nonexistent"));
    }

    #[test]
    fn memory_hotplug() {
        let c = args(&[
            "--memory",
            "size=256M,hotplug_method=virtio-mem,hotplug_size=1G,hotplugged_size=512M,shared=on",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(c.memory.size, 256 << 20);
        assert!(c.memory.shared && !c.memory.hugepages);
        assert_eq!(
            c.memory.hotplug,
            Some(HotplugConfig {
                hotplug_size: 1 << 30,
                hotplugged_size: 512 << 20,
                block_size: 2 << 20
            })
        );
        let c = args(&[
            "--memory",
            "size=1G,hotplug_size=2G,block_size=256M,hugepages=on",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(c.memory.hotplug.unwrap().block_size, 256 << 20);
        assert!(c.memory.hugepages);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["memory"]["hotplug_size"],
            2u64 << 30,
            "Cloud Hypervisor's field names, flattened"
        );
    }

    #[test]
    fn devices() {
        let c = args(&[
            "--disk",
            "path=/proc/self/exe,readonly=on,id=boot",
            "--disk",
            "/proc/self/exe",
            "--rng",
            "--console",
            "file=/tmp/c",
            "--serial",
            "off",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[0].readonly && !c.disks[1].readonly);
        assert_eq!(c.disks[0].id.as_deref(), Some("boot"));
        assert!(c.rng);
        assert_eq!(c.console, ConsoleConfig::File("/tmp/c".into()));
        assert!(
            err(&["--console", "tty"]).starts_with("--console: tty is already taken by --serial")
        );
        assert!(err(&["--disk", "path=/nonexistent.img"])
            .starts_with("--disk: cannot open /nonexistent.img"));
        assert!(err(&["--disk", "path=/tmp"]).starts_with("--disk: /tmp is not a regular file"));
        assert!(err(&["--disk", "path=/proc/self/exe,readonly=maybe"])
            .starts_with("--disk: readonly=maybe: use on or off"));
        assert!(
            err(&["--disk", "path=/proc/self/exe,id=123456789012345678901"])
                .starts_with("--disk: id= is at most 20 bytes")
        );
        assert!(err(&["--disk", "readonly=on"]).starts_with("--disk: path=PATH is required"));
    }

    #[test]
    fn autosize_takes_bounds_and_needs_a_region_and_balloon_statistics() {
        let b = ["--balloon", "size=0,stats_interval=1"];
        let mem = |m: &str| {
            let mut v = vec!["--memory", m];
            v.extend_from_slice(&b);
            v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let ok = |m: &str| {
            let a = mem(m);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            args(&a).unwrap().to_config().unwrap().memory.autosize
        };
        assert_eq!(
            ok("size=256M,hotplug_size=1G,autosize=on"),
            Some(AutosizeConfig {
                min: 256 << 20,
                max: 1280 << 20,
                headroom: 20
            })
        );
        assert_eq!(
            ok("size=256M,hotplug_size=1G,autosize=on,min=512M,max=1G,headroom=50"),
            Some(AutosizeConfig {
                min: 512 << 20,
                max: 1 << 30,
                headroom: 50
            })
        );
        assert_eq!(ok("size=256M,hotplug_size=1G"), None);
        for (m, want) in [
            (
                "size=256M,autosize=on",
                "--memory: autosize=on sizes the virtio-mem region",
            ),
            (
                "size=256M,hotplug_size=1G,min=512M",
                "--memory: min= needs autosize=on",
            ),
            (
                "size=256M,hotplug_size=1G,autosize=on,min=128M",
                "--memory: min=128M must be between",
            ),
            (
                "size=256M,hotplug_size=1G,autosize=on,max=2G",
                "--memory: max=2G must be between",
            ),
            (
                "size=256M,hotplug_size=1G,autosize=on,min=1G,max=512M",
                "--memory: max=512M must be between",
            ),
            (
                "size=256M,hotplug_size=1G,autosize=on,headroom=500",
                "--memory: headroom=500 is more",
            ),
        ] {
            let a = mem(m);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let e = err(&a);
            assert!(e.starts_with(want), "{m}: {e}");
        }
        for extra in [&[][..], &["--balloon", "size=0"][..]] {
            let mut a = vec!["--memory", "size=256M,hotplug_size=1G,autosize=on"];
            a.extend_from_slice(extra);
            assert!(err(&a).contains("add --balloon size=0,stats_interval=1"));
        }
    }

    #[test]
    fn balloon_takes_cloud_hypervisors_keys() {
        let c = args(&[
            "--memory",
            "size=1G",
            "--balloon",
            "size=256M,deflate_on_oom=on,free_page_reporting=on,stats_interval=2",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(
            c.balloon,
            Some(BalloonConfig {
                size: 256 << 20,
                deflate_on_oom: true,
                free_page_reporting: true,
                stats_interval: 2
            })
        );
        let c = args(&["--balloon", "0"]).unwrap().to_config().unwrap();
        assert_eq!(c.balloon.unwrap().size, 0);
        assert!(!c.balloon.unwrap().free_page_reporting);
        for (opt, want) in [
            ("deflate_on_oom=on", "--balloon: size=SIZE is required"),
            ("size=512M", "--balloon: size=512M is not less than"),
            (
                "size=1M,stats_interval=4000",
                "--balloon: stats_interval=4000 is more",
            ),
            (
                "size=1M,free_page_reporting=yes",
                "--balloon: free_page_reporting=yes: use on or off",
            ),
            ("size=1M,num_pages=3", "--balloon"),
        ] {
            let e = err(&["--balloon", opt]);
            assert!(e.starts_with(want), "{opt}: {e}");
        }
    }

    #[test]
    fn vsock_takes_cloud_hypervisors_keys_and_refuses_reserved_cids() {
        let c = args(&["--vsock", "cid=3,socket=/run/v.sock,id=vs"])
            .unwrap()
            .to_config()
            .unwrap();
        let v = c.vsock.unwrap();
        assert_eq!(
            (v.cid, v.socket.to_str(), v.id.as_deref()),
            (3, Some("/run/v.sock"), Some("vs"))
        );
        let long = format!("cid=3,socket=/{}", "a".repeat(100));
        for (opt, want) in [
            ("socket=/x", "--vsock: cid=N is required"),
            ("cid=2,socket=/x", "--vsock: cid=2 is reserved"),
            (
                "cid=4294967295,socket=/x",
                "--vsock: cid=4294967295 is reserved",
            ),
            ("cid=3", "--vsock: socket=PATH is required"),
            (long.as_str(), "--vsock: socket=/aaa"),
        ] {
            let e = err(&["--vsock", opt]);
            assert!(e.starts_with(want), "{opt}: {e}");
        }
        assert!(err(&["--vsock", "cid=3,socket=/x,port=5"]).starts_with("--vsock"));
    }

    #[test]
    fn net_devices_take_cloud_hypervisors_keys() {
        let c = args(&[
            "--net",
            "tap=tap7,mac=52:54:00:12:34:56,host_mac=52:54:00:00:00:01,ip=192.168.7.1,num_queues=4,queue_size=512,id=lan",
            "--net",
            "fd=[5,6]",
            "--net",
            "fd=[9],num_queues=2",
            "--net",
            "mytap",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        let n = &c.net[0];
        assert_eq!(n.tap.as_deref(), Some("tap7"));
        assert_eq!(n.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(
            n.host_mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(n.ip, Some("192.168.7.1".parse().unwrap()));
        assert_eq!(
            n.mask,
            Some("255.255.255.0".parse().unwrap()),
            "default mask"
        );
        assert_eq!((n.num_queues, n.pairs(), n.queue_size), (4, 2, 512));
        assert_eq!(n.id.as_deref(), Some("lan"));
        assert_eq!(c.net.len(), 4);
        assert_eq!(c.net[1].num_queues, 4, "fd=[5,6]: a pair per descriptor");
        assert_eq!(c.net[2].fds, vec![9]);
        assert_eq!(
            c.net[3].tap.as_deref(),
            Some("mytap"),
            "tap= is the default key"
        );
        let random = c.net[3].mac.0;
        assert_eq!(random[0] & 3, 2, "locally administered unicast");
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["net"][0]["mac"], "52:54:00:12:34:56");
        assert_eq!(v["net"][0]["num_queues"], 4);
    }

    #[test]
    fn bad_net_options_name_the_flag_and_the_fix() {
        for (value, expected) in [
            (
                "tap=t,mac=52:54:00:12:34",
                "--net: mac=52:54:00:12:34 is not a MAC address",
            ),
            (
                "tap=t,mac=01:00:00:00:00:01",
                "--net: mac=01:00:00:00:00:01 is a multicast",
            ),
            ("tap=t,num_queues=3", "--net: num_queues=3: an even number"),
            (
                "tap=t,num_queues=34",
                "--net: num_queues=34: an even number",
            ),
            (
                "tap=t,queue_size=100",
                "--net: queue_size=100: a power of two",
            ),
            ("tap=t,mask=255.0.0.0", "--net: mask= needs ip="),
            (
                "tap=t,ip=300.1.1.1",
                "--net: ip=300.1.1.1 is not an IPv4 address",
            ),
            ("tap=t,fd=3", "--net: tap= and fd= exclude each other"),
            (
                "mac=52:54:00:12:34:56",
                "--net: tap=NAME (or fd=N for an open TAP) is required",
            ),
            (
                "fd=[3,4],num_queues=2",
                "--net: 2 descriptors for num_queues=2",
            ),
            ("fd=x", "--net: fd=x: a descriptor number"),
            (
                "fd=3,ip=10.0.0.1",
                "--net: ip= configures a TAP Caravel creates",
            ),
            (
                "fd=3,host_mac=52:54:00:00:00:01",
                "--net: host_mac= sets up a TAP Caravel creates",
            ),
            (
                "tap=t,host_mac=zz",
                "--net: host_mac=zz is not a MAC address",
            ),
            (
                "tap=a-name-much-too-long",
                "--net: tap=a-name-much-too-long: an interface name",
            ),
            ("tap=t,speed=10", "--net: unknown key 'speed'"),
        ] {
            let e = err(&["--net", value]);
            assert!(e.starts_with(expected), "{value}: {e}");
        }
    }

    #[test]
    fn clap_rejects_missing_kernel_and_unknown_flags() {
        assert!(Args::try_parse_from(["caravel"]).is_err());
        assert!(args(&["--frobnicate"]).is_err());
    }

    #[test]
    fn without_a_kernel_an_api_socket_waits_for_a_migration_and_vm_options_are_refused() {
        let a = Args::try_parse_from(["caravel", "--api-socket", "/tmp/d.sock"]).unwrap();
        assert!(a.incoming());
        let c = a.to_config().unwrap();
        assert_eq!(c.api_socket.as_deref(), Some(Path::new("/tmp/d.sock")));
        for (flag, value) in [
            ("--memory", "size=1G"),
            ("--cpus", "boot=2"),
            ("--disk", "path=/x"),
            ("--net", "tap=t0"),
        ] {
            let a = Args::try_parse_from(["caravel", "--api-socket", "/tmp/d.sock", flag, value])
                .unwrap();
            let e = a.to_config().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "{flag}: a caravel without --kernel receives its VM"
                )),
                "{e}"
            );
        }
        // With a kernel nothing changes.
        assert!(!args(&[]).unwrap().incoming());
    }

    #[test]
    fn seccomp_is_on_by_default_with_cloud_hypervisors_values() {
        let mode = |extra: &[&str]| args(extra).unwrap().to_config().unwrap().seccomp;
        assert_eq!(mode(&[]), SeccompMode::Enforce);
        assert_eq!(mode(&["--seccomp", "false"]), SeccompMode::Off);
        assert_eq!(mode(&["--seccomp", "log"]), SeccompMode::Log);
        assert_eq!(mode(&["--seccomp", "true"]), SeccompMode::Enforce);
        assert!(err(&["--seccomp", "strict"])
            .starts_with("--seccomp: 'strict' is not true, false or log"));
    }
}
