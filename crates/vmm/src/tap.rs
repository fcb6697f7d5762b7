//! Host TAP devices for virtio-net: opened (or created) by name with one
//! descriptor per queue pair, or taken from descriptors the caller passed
//! (`fd=`, as libvirt hands them over); given an IPv4 address and brought
//! up when Caravel created them. Every queue speaks the 12-byte virtio
//! header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`).
//!
//! A TAP Caravel created is not persistent: it disappears with the last
//! descriptor, so nothing is left behind when Caravel exits or a start
//! fails half-way.
//!
//! Queues are multi-queue (`IFF_MULTI_QUEUE`) even for one pair when the
//! kernel has it, so that a live migration's destination on the same host
//! can hold its own queues of the TAP while the source still holds its:
//! the destination parks them (`TUNSETQUEUE` detach: no frames are steered
//! to them) until the guest runs there ([`ParkedQueue`]).

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
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_ATTACH_QUEUE: i16 = 0x0200;
const IFF_DETACH_QUEUE: i16 = 0x0400;
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

impl Tap {
    /// Takes this queue out of the TAP's traffic until
    /// [`ParkedQueue::attach`]: a migration's destination holds its queues
    /// while the source's guest still runs on its own.
    pub fn park(&self, tap: &str) -> Result<ParkedQueue, String> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| explain(tap, "duplicating a queue", e))?;
        set_queue(&fd, IFF_DETACH_QUEUE).map_err(|e| {
            explain(
                tap,
                "detaching a queue until the migrated guest runs (TUNSETQUEUE)",
                e,
            )
        })?;
        Ok(ParkedQueue {
            fd,
            tap: tap.to_string(),
        })
    }
}

/// A queue of a TAP that a migration's destination holds, detached from
/// the TAP's traffic (frames go to the source's queues meanwhile).
pub struct ParkedQueue {
    /// The same open TAP queue as the device's (a duplicate).
    fd: OwnedFd,
    tap: String,
}

impl ParkedQueue {
    /// Puts the queue back into the TAP's traffic: the guest runs here now.
    pub fn attach(&self) -> Result<(), String> {
        set_queue(&self.fd, IFF_ATTACH_QUEUE)
            .map_err(|e| explain(&self.tap, "attaching a queue (TUNSETQUEUE)", e))
    }
}

/// `TUNSETQUEUE` with `flags` (attach or detach this descriptor's queue).
fn set_queue(fd: &OwnedFd, flags: i16) -> io::Result<()> {
    let mut req = IfReq::default();
    req.set_flags(flags);
    ioctl_ifreq(fd.as_raw_fd(), TUNSETQUEUE, &mut req)
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
            " (it exists with other flags: several queue pairs need a multi_queue TAP)"
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
    let mut queues = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| explain(name, "cannot open /dev/net/tun", e))?;
        let fd = OwnedFd::from(file);
        if i == 0 {
            let mut features: libc::c_int = 0;
            ioctl_int(fd.as_raw_fd(), TUNGETFEATURES, &mut features)
                .map_err(|e| explain(name, "TUNGETFEATURES", e))?;
            if features & libc::c_int::from(IFF_MULTI_QUEUE) != 0 {
                flags |= IFF_MULTI_QUEUE;
            } else if pairs > 1 {
                return Err(format!(
                    "TAP {name}: this kernel's tun has no multi-queue support: use num_queues=2"
                ));
            }
        }
        req.set_flags(flags);
        match ioctl_ifreq(fd.as_raw_fd(), TUNSETIFF, &mut req) {
            // One pair on a TAP made without multi_queue (ip tuntap add
            // ... without it): take it as it is.
            Err(e)
                if pairs == 1
                    && flags & IFF_MULTI_QUEUE != 0
                    && e.raw_os_error() == Some(libc::EINVAL) =>
            {
                flags &= !IFF_MULTI_QUEUE;
                req.set_flags(flags);
                ioctl_ifreq(fd.as_raw_fd(), TUNSETIFF, &mut req)
            }
            r => r,
        }
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
        // A second holder (a migration's destination) opens it too.
        let second = open_named(&name, 1, None, None).unwrap();
        assert!(!second.created);
        drop(second);
        drop(tap);
        assert!(
            !std::path::Path::new("/sys/class/net").join(&name).exists(),
            "the TAP went with its last descriptor"
        );
    }

    /// A TAP named for this test and `tag`, created with one pair.
    fn one_pair_tap(tag: &str) -> Option<(String, OpenedTap)> {
        if !have_tun() {
            return None;
        }
        let name = format!("cv{tag}{}", std::process::id() % 100_000);
        match open_named(&name, 1, None, None) {
            Ok(t) => Some((name, t)),
            Err(e) if e.contains("CAP_NET_ADMIN") => {
                eprintln!("skipped: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends IPv4/UDP frames out of interface `name` as the host stack
    /// would (a packet socket), each its own flow (source port `i`), so the
    /// TAP spreads them over the queues that take traffic.
    fn host_sends(name: &str, count: u16) {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: a NUL-terminated name; the call only reads it.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "{name} has an index");
        // SAFETY: plain socket creation; the result is checked and owned.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(raw >= 0, "AF_PACKET: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        for i in 0..count {
            let mut f = [0u8; 60];
            f[..6].fill(0xff); // broadcast
            f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4
            f[14] = 0x45;
            f[16..18].copy_from_slice(&46u16.to_be_bytes());
            f[22] = 64;
            f[23] = 17; // UDP
            f[26..30].copy_from_slice(&[10, 213, 8, 1]);
            f[30..34].copy_from_slice(&[10, 213, 8, 2]);
            f[34..36].copy_from_slice(&(1000 + i).to_be_bytes());
            f[36..38].copy_from_slice(&9u16.to_be_bytes());
            f[38..40].copy_from_slice(&26u16.to_be_bytes());
            // SAFETY: `f` and `addr` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(n, 60, "sendto: {}", io::Error::last_os_error());
        }
    }

    /// Frames waiting on a queue (read until it would block).
    fn drain(q: &mut Tap) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while q.read_frame(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_second_holder_parks_its_queue_until_it_attaches() {
        let Some((name, mut source)) = one_pair_tap("p") else {
            return;
        };
        let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/tun_flags")).unwrap();
        let flags = i16::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert_ne!(flags & IFF_MULTI_QUEUE, 0, "one pair is multi-queue too");
        let mut dest = open_named(&name, 1, None, None).unwrap();
        let parked = dest.queues[0].park(&name).unwrap();
        // While parked, every frame the host sends goes to the source.
        drain(&mut source.queues[0]);
        host_sends(&name, 64);
        assert_eq!(drain(&mut dest.queues[0]), 0, "a parked queue gets nothing");
        assert!(drain(&mut source.queues[0]) > 0);
        // Attached, it takes its share.
        parked.attach().unwrap();
        host_sends(&name, 64);
        let (s, d) = (drain(&mut source.queues[0]), drain(&mut dest.queues[0]));
        assert!(
            d > 0 && s > 0,
            "64 flows over two queues: source {s}, destination {d}"
        );
        // Attaching an attached queue is refused: the state is the kernel's.
        assert!(parked.attach().is_err());
        // The source goes; the TAP stays with the destination.
        drop(source);
        assert!(std::path::Path::new("/sys/class/net").join(&name).exists());
        drop(parked);
        drop(dest);
        assert!(!std::path::Path::new("/sys/class/net").join(&name).exists());
    }

    #[test]
    fn one_pair_takes_a_tap_made_without_multi_queue() {
        if !have_tun() {
            return;
        }
        let name = format!("cvs{}", std::process::id() % 100_000);
        // Another program's TAP, without IFF_MULTI_QUEUE.
        let other = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut req = IfReq::named(&name).unwrap();
        req.set_flags(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        if let Err(e) = ioctl_ifreq(other.as_raw_fd(), TUNSETIFF, &mut req) {
            eprintln!("skipped: TUNSETIFF: {e}");
            return;
        }
        // Multi-queue is refused there (EINVAL), so Caravel asks without
        // it; the TAP is busy (one user), and the message says so.
        let err = open_named(&name, 1, None, None).err().unwrap();
        assert!(err.contains("another process has this TAP open"), "{err}");
        // Several pairs cannot use it at all.
        let err = open_named(&name, 2, None, None).err().unwrap();
        assert!(err.contains("multi_queue TAP"), "{err}");
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
