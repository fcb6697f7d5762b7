//! Host TAP devices for virtio-net: opened (or created) by name with one
//! descriptor per queue pair, or taken from descriptors the caller passed
//! (`fd=`, as libvirt hands them over); given an IPv4 address and brought
//! up when Caravel created them. Every queue speaks the 12-byte virtio
//! header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`).
//!
//! A TAP Caravel created is not persistent: it disappears with the last
//! descriptor, so nothing is left behind when Caravel exits or a start
//! fails half-way.

use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio::net::TapQueue;

pub use virtio::net::{DEFAULT_QUEUE_SIZE, MAX_QUEUE_PAIRS};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const VNET_HDR_LEN: libc::c_int = virtio::net::HDR_LEN as libc::c_int;

/// `struct ifreq`: a name and a 24-byte union (flags, an address).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn named(name: &str) -> io::Result<Self> {
        let mut r = Self::default();
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "'{name}' is not an interface name (1 to {} bytes)",
                    libc::IFNAMSIZ - 1
                ),
            ));
        }
        r.name[..bytes.len()].copy_from_slice(bytes);
        Ok(r)
    }

    fn name(&self) -> String {
        let n = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..n]).into_owned()
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    /// Sets the union to an IPv4 `sockaddr_in`.
    fn set_ipv4(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

/// `ioctl(fd, request, &mut req)`.
fn ioctl_ifreq(fd: RawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: `req` is a valid, writable `struct ifreq` (40 bytes) for the
    // call; the TUN and SIOC requests used here read and write only it.
    if unsafe { libc::ioctl(fd, request as _, req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, request, value)` for requests that take an integer by value.
fn ioctl_value(fd: RawFd, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    if unsafe { libc::ioctl(fd, request as _, value) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, request, &mut int)`.
fn ioctl_int(fd: RawFd, request: libc::c_ulong, value: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid, writable int for the call; TUNSETVNETHDRSZ
    // and TUNSETSNDBUF read it, TUNGETFEATURES writes it.
    if unsafe { libc::ioctl(fd, request as _, value as *mut libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One queue of a TAP: a non-blocking descriptor.
pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        virtio::fd_io::set_nonblocking(fd.as_raw_fd())?;
        let mut size = VNET_HDR_LEN;
        ioctl_int(fd.as_raw_fd(), TUNSETVNETHDRSZ, &mut size)?;
        // A TAP charges the frames written to it to its socket until the
        // host has consumed them, and refuses a write (EAGAIN) past its send
        // buffer: at the default (wmem_default, about 200 KiB, three 64 KiB
        // TSO frames) a host that reads slowly makes the device drop the
        // guest's frames, and TCP crawls through the losses. Unlimited, as
        // QEMU sets it: the guest's own socket buffers bound what is in
        // flight.
        let mut sndbuf = libc::c_int::MAX;
        ioctl_int(fd.as_raw_fd(), TUNSETSNDBUF, &mut sndbuf)?;
        Ok(Self { fd })
    }
}

impl TapQueue for Tap {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        virtio::fd_io::read_fd(self.fd.as_raw_fd(), buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        virtio::fd_io::write_fd(self.fd.as_raw_fd(), frame)
    }

    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        ioctl_value(
            self.fd.as_raw_fd(),
            TUNSETOFFLOAD,
            libc::c_ulong::from(tun_flags),
        )
    }
}

/// The queues of one TAP, and what Caravel learned opening it.
pub struct OpenedTap {
    /// The interface's name.
    pub name: String,
    /// One per queue pair.
    pub queues: Vec<Tap>,
    /// Whether Caravel created the interface (it did not exist).
    pub created: bool,
    /// The TAP accepts UDP fragmentation offload.
    pub ufo: bool,
}

/// Why a TAP could not be opened: the message a user can act on.
fn explain(name: &str, what: &str, e: io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (creating or opening a TAP needs CAP_NET_ADMIN: run as root, or pass an open TAP with fd=)"
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            " (no /dev/net/tun: load the tun module, modprobe tun)"
        }
        Some(libc::EBUSY) => {
            " (another process has this TAP open; a TAP without multi-queue takes one user)"
        }
        Some(libc::EINVAL) => {
            " (it exists with other flags: several queue pairs need a multi_queue TAP, one pair a TAP without it)"
        }
        _ => "",
    };
    format!("TAP {name}: {what}: {e}{hint}")
}

/// Opens (creating it if missing) TAP `name` with `pairs` queues; a
/// created TAP gets `ip`/`mask` when given and is brought up.
pub fn open_named(
    name: &str,
    pairs: usize,
    ip: Option<(Ipv4Addr, Ipv4Addr)>,
    host_mac: Option<[u8; 6]>,
) -> Result<OpenedTap, String> {
    let mut req = IfReq::named(name).map_err(|e| e.to_string())?;
    let existed = std::path::Path::new("/sys/class/net").join(name).exists();
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if pairs > 1 {
        flags |= IFF_MULTI_QUEUE;
    }
    let mut queues = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| explain(name, "cannot open /dev/net/tun", e))?;
        let fd = OwnedFd::from(file);
        if pairs > 1 {
            let mut features: libc::c_int = 0;
            ioctl_int(fd.as_raw_fd(), TUNGETFEATURES, &mut features)
                .map_err(|e| explain(name, "TUNGETFEATURES", e))?;
            if features & libc::c_int::from(IFF_MULTI_QUEUE) == 0 {
                return Err(format!(
                    "TAP {name}: this kernel's tun has no multi-queue support: use num_queues=2"
                ));
            }
        }
        req.set_flags(flags);
        ioctl_ifreq(fd.as_raw_fd(), TUNSETIFF, &mut req)
            .map_err(|e| explain(name, "TUNSETIFF", e))?;
        queues
            .push(Tap::from_fd(fd).map_err(|e| explain(name, "TUNSETVNETHDRSZ/TUNSETSNDBUF", e))?);
    }
    let name = req.name();
    if !existed {
        if let Some(mac) = host_mac {
            set_mac(&name, mac).map_err(|e| explain(&name, "setting host_mac=", e))?;
        }
        if let Some((addr, mask)) = ip {
            configure_ipv4(&name, addr, mask).map_err(|e| explain(&name, "setting ip=", e))?;
        }
        bring_up(&name).map_err(|e| explain(&name, "bringing it up", e))?;
    } else if ip.is_some() || host_mac.is_some() {
        log::warn!(
            "--net: TAP {name} already exists; its addresses are left as they are \
             (ip=, mask= and host_mac= apply to a TAP Caravel creates)"
        );
    }
    let ufo = probe_ufo(&queues[0]);
    Ok(OpenedTap {
        name,
        queues,
        created: !existed,
        ufo,
    })
}

/// Takes TAP descriptors the caller opened (one per queue pair). Each is
/// duplicated, so the caller's descriptor stays usable (a guest reboot
/// builds the device again from it).
pub fn from_fds(fds: &[RawFd]) -> Result<OpenedTap, String> {
    let mut queues = Vec::with_capacity(fds.len());
    let mut name = String::new();
    for &raw in fds {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor number the user gave;
        // the result is checked, and the new descriptor is owned here.
        let dup = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(format!(
                "fd={raw}: {} (is it open in Caravel's process?)",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: `dup` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let mut req = IfReq::default();
        ioctl_ifreq(fd.as_raw_fd(), TUNGETIFF, &mut req)
            .map_err(|e| format!("fd={raw} is not a TAP ({e})"))?;
        if req.flags() & IFF_TAP == 0 || req.flags() & IFF_VNET_HDR == 0 {
            return Err(format!(
                "fd={raw} ({}) is a TUN or was opened without IFF_VNET_HDR: open it as a TAP with vnet_hdr",
                req.name()
            ));
        }
        name = req.name();
        queues.push(Tap::from_fd(fd).map_err(|e| format!("fd={raw}: {e}"))?);
    }
    let ufo = queues.first().is_some_and(probe_ufo);
    Ok(OpenedTap {
        name,
        queues,
        created: false,
        ufo,
    })
}

/// Whether the TAP accepts `TUN_F_UFO` (the kernel refuses unknown bits
/// with `EINVAL`); leaves the offloads off.
fn probe_ufo(tap: &Tap) -> bool {
    use virtio::net::tun_flags as t;
    let ok = tap
        .set_offload(t::CSUM | t::TSO4 | t::TSO6 | t::UFO)
        .is_ok();
    let _ = tap.set_offload(0);
    ok
}

/// A socket for interface ioctls.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() creates a descriptor; the result is checked and owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn configure_ipv4(name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::named(name)?;
    req.set_ipv4(addr);
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFADDR, &mut req)?;
    let mut req = IfReq::named(name)?;
    req.set_ipv4(mask);
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &mut req)
}

fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::named(name)?;
    // A `struct sockaddr`: ARPHRD_ETHER, then the address.
    req.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
    req.data[2..8].copy_from_slice(&mac);
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &mut req)
}

/// The MAC address of interface `name` (from sysfs), if it exists.
pub fn interface_mac(name: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

fn bring_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = IfReq::named(name)?;
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
    let flags = req.flags() | libc::IFF_UP as i16 | libc::IFF_RUNNING as i16;
    req.set_flags(flags);
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // No entropy source: derive one from the time and the pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_tun() -> bool {
        let ok = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .is_ok();
        if !ok {
            eprintln!("skipped: /dev/net/tun cannot be opened here");
        }
        ok
    }

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let a = random_mac();
        let b = random_mac();
        assert_eq!(a[0] & 0x03, 0x02);
        assert_ne!(a, b);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(IfReq::named("").is_err());
        assert!(IfReq::named("a-name-that-is-too-long").is_err());
        assert_eq!(IfReq::named("tap0").unwrap().name(), "tap0");
    }

    #[test]
    fn a_created_tap_has_its_address_and_disappears_with_caravel() {
        if !have_tun() {
            return;
        }
        let name = format!("cvt{}", std::process::id() % 100_000);
        let host_mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
        let tap = match open_named(
            &name,
            2,
            Some((
                Ipv4Addr::new(10, 213, 7, 1),
                Ipv4Addr::new(255, 255, 255, 0),
            )),
            Some(host_mac),
        ) {
            Ok(t) => t,
            Err(e) if e.contains("CAP_NET_ADMIN") => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(tap.created);
        assert_eq!(tap.queues.len(), 2);
        let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert_ne!(flags & libc::IFF_UP as u32, 0, "brought up");
        assert_eq!(interface_mac(&name), Some(host_mac), "host_mac= set");
        // A second user of a multi-queue TAP with other flags is refused.
        let err = open_named(&name, 1, None, None).err().unwrap();
        assert!(err.contains("multi_queue"), "{err}");
        drop(tap);
        assert!(
            !std::path::Path::new("/sys/class/net").join(&name).exists(),
            "the TAP went with its last descriptor"
        );
    }

    #[test]
    fn descriptors_that_are_not_taps_are_refused() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let err = from_fds(&[f.as_raw_fd()]).err().unwrap();
        assert!(err.contains("is not a TAP"), "{err}");
        let err = from_fds(&[987_654]).err().unwrap();
        assert!(err.starts_with("fd=987654"), "{err}");
    }
}
