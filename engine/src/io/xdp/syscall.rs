//! Thin, checked wrappers over the syscalls the AF_XDP layer makes. Each turns a -1 into
//! `io::Error::last_os_error()`; nothing here keeps state.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::if_xdp::{
    sockaddr_xdp, xdp_mmap_offsets, xdp_statistics, xdp_umem_reg, AF_XDP, SOL_XDP,
    XDP_MMAP_OFFSETS, XDP_STATISTICS, XDP_UMEM_REG,
};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new AF_XDP socket.
pub fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; the returned fd is owned by us.
    let fd = check(unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of `size_of::<T>()` bytes for the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn getsockopt<T>(fd: RawFd, name: libc::c_int) -> io::Result<T> {
    // SAFETY: the ABI structs read here are plain integers, valid when zeroed.
    let mut value: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable `T` and `len` its size; the kernel writes at most that.
    check(unsafe { libc::getsockopt(fd, SOL_XDP, name, (&mut value as *mut T).cast(), &mut len) })?;
    if (len as usize) < size_of::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel returned a shorter AF_XDP struct than expected (kernel too old)",
        ));
    }
    Ok(value)
}

pub fn register_umem(fd: &OwnedFd, reg: &xdp_umem_reg) -> io::Result<()> {
    setsockopt(fd.as_raw_fd(), XDP_UMEM_REG, reg)
}

/// Sets the size of one of the socket's rings (`XDP_RX_RING`, `XDP_UMEM_FILL_RING`, ...).
pub fn set_ring_size(fd: &OwnedFd, ring: libc::c_int, size: u32) -> io::Result<()> {
    setsockopt(fd.as_raw_fd(), ring, &size)
}

pub fn mmap_offsets(fd: &OwnedFd) -> io::Result<xdp_mmap_offsets> {
    getsockopt(fd.as_raw_fd(), XDP_MMAP_OFFSETS)
}

pub fn statistics(fd: RawFd) -> io::Result<xdp_statistics> {
    getsockopt(fd, XDP_STATISTICS)
}

pub fn bind(
    fd: &OwnedFd,
    ifindex: u32,
    queue: u32,
    flags: u16,
    shared_umem_fd: Option<RawFd>,
) -> io::Result<()> {
    let addr = sockaddr_xdp {
        sxdp_family: AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: shared_umem_fd.map_or(0, |f| f as u32),
    };
    // SAFETY: `addr` is a valid sockaddr_xdp of the size passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const sockaddr_xdp).cast(),
            size_of::<sockaddr_xdp>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Asks the kernel to process the TX ring (copy mode and need_wakeup need this).
pub fn kick_tx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length send with no buffer and no address is a pure wakeup.
    let r = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if r >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Busy or out of buffers: the kernel will get to it; retry on the next flush.
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => Ok(()),
        _ => Err(e),
    }
}

/// Wakes the driver to consume the fill ring (need_wakeup on RX).
pub fn kick_rx(fd: RawFd) {
    // SAFETY: a zero-length, non-blocking receive into no buffer is a pure wakeup; the
    // result carries no information we need.
    unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
}

/// Waits for POLLIN on `fd` up to `timeout_ms` (-1 = forever).
pub fn poll_in(fd: RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    match check(unsafe { libc::poll(&mut p, 1, timeout_ms) }) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn if_nametoindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string alive for the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// Runs an interface ioctl on a throwaway UDP socket (in the calling thread's netns).
fn if_ioctl(
    name: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
) -> io::Result<libc::ifreq> {
    let mut req = ifreq_for(name)?;
    fill(&mut req);
    // SAFETY: plain socket creation; the fd is owned right after.
    let s =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `s` is fresh and ours.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: `req` is a valid ifreq for this request; the kernel writes within it (or
    // into the buffer its data pointer names, which the caller set up).
    check(unsafe { libc::ioctl(s.as_raw_fd(), request as _, &mut req) })?;
    Ok(req)
}

pub fn if_hwaddr(name: &str) -> io::Result<[u8; 6]> {
    let req = if_ioctl(name, libc::SIOCGIFHWADDR, |_| {})?;
    // SAFETY: SIOCGIFHWADDR filled the ifru_hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

pub fn if_mtu(name: &str) -> io::Result<u32> {
    let req = if_ioctl(name, libc::SIOCGIFMTU, |_| {})?;
    // SAFETY: SIOCGIFMTU filled the ifru_mtu member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// Number of RX queues (rx + combined channels), or `None` if the driver does not say.
pub fn if_rx_queues(name: &str) -> Option<u32> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let ptr = (&mut ch as *mut EthtoolChannels).cast::<libc::c_char>();
    if_ioctl(name, libc::SIOCETHTOOL, |req| req.ifr_ifru.ifru_data = ptr).ok()?;
    let n = ch.rx_count + ch.combined_count;
    (n > 0).then_some(n)
}

/// Addresses configured on interface `name`, or on every interface for `None` (via
/// getifaddrs, in the calling thread's netns), each once.
pub fn if_addrs(name: Option<&str>) -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    check(unsafe { libc::getifaddrs(&mut head) })?;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let n = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.is_some_and(|name| n.to_bytes() != name.as_bytes()) {
            continue;
        }
        // SAFETY: ifa_addr is non-null and at least a sockaddr; the family says which.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: the family is AF_INET, so this is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
        } else if family == libc::AF_INET6 {
            // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(*a));
    Ok(out)
}
