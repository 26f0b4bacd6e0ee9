//! Thin wrappers over the libc socket calls the UDP datapath needs. The `unsafe` blocks of
//! the UDP datapath live here and in the two batch helpers (`rx::RxRing::recv`,
//! `tx::TxScratch::send`), each next to the reasoning that makes it sound.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A fresh non-blocking, close-on-exec UDP socket of the given family.
pub(super) fn udp_socket(v6: bool) -> io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: a plain syscall with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(domain, ty, libc::IPPROTO_UDP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just created and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt` with an `int` value.
pub(super) fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points at a live `c_int` and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt` of an `int` option.
pub(super) fn get_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point at live locals; len holds the value's size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Attaches a classic BPF program to the socket's SO_REUSEPORT group.
pub(super) fn attach_reuseport_cbpf(fd: &OwnedFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "cBPF program must have 1..=65535 instructions",
            )
        })?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
    // instructions and never writes through the pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn bind(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(addr);
    // SAFETY: `raw` holds a valid sockaddr of the length passed.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut storage = zeroed_storage();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is a writable sockaddr_storage and len holds its size.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    from_storage(&storage, len).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "getsockname returned an unknown address family",
        )
    })
}

/// `poll(2)` for `events`; returns Ok on readiness, timeout or EINTR alike.
pub(super) fn poll(
    fd: &OwnedFd,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let ms = match timeout {
        None => -1,
        // Round up so a sub-millisecond timeout does not become a busy poll.
        Some(t) => t
            .as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int,
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

pub(super) fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

/// Reads a socket address the kernel wrote into `storage`.
pub(super) fn from_storage(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is
            // larger than and aligned for every sockaddr type.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A socket address in the kernel's layout, ready to pass to bind/sendmsg.
#[derive(Clone, Copy)]
pub(super) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub(super) fn new(addr: &SocketAddr) -> Self {
        let mut raw = RawAddr {
            storage: zeroed_storage(),
            len: 0,
        };
        raw.set(addr);
        raw
    }

    /// Overwrites the address in place (no new storage, for the per-message scratch).
    pub(super) fn set(&mut self, addr: &SocketAddr) {
        let base = (&mut self.storage as *mut libc::sockaddr_storage).cast::<u8>();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { base.cast::<libc::sockaddr_in>().write(sin) };
                self.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { base.cast::<libc::sockaddr_in6>().write(sin6) };
                self.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
    }

    pub(super) fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub(super) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }

    pub(super) fn len(&self) -> libc::socklen_t {
        self.len
    }
}

/// Scratch `mmsghdr`/`iovec` arrays for one batched syscall. The raw pointers inside are
/// rewritten right before every call and never read otherwise, so between calls they are
/// inert bytes.
pub(super) struct MmsgScratch {
    pub(super) hdrs: Box<[libc::mmsghdr]>,
    pub(super) iovs: Box<[libc::iovec]>,
}

// SAFETY: the pointers in `hdrs`/`iovs` are only meaningful during a syscall made by the
// owner through `&mut self`; moving the scratch to another thread moves no live borrow.
unsafe impl Send for MmsgScratch {}

impl MmsgScratch {
    pub(super) fn new(n: usize) -> Self {
        // SAFETY: mmsghdr and iovec are plain old data; all-zero (null pointers, zero
        // lengths) is a valid value for both.
        let hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        MmsgScratch {
            hdrs: vec![hdr; n].into_boxed_slice(),
            iovs: vec![iov; n].into_boxed_slice(),
        }
    }
}

pub(super) fn is_would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addr_round_trips() {
        for addr in [
            "127.0.0.1:4433".parse::<SocketAddr>().unwrap(),
            "[::1]:443".parse().unwrap(),
            "[fe80::1%3]:9".parse().unwrap(),
            "[::ffff:10.0.0.1]:1".parse().unwrap(),
        ] {
            let raw = RawAddr::new(&addr);
            assert_eq!(from_storage(&raw.storage, raw.len()), Some(addr));
        }
    }

    #[test]
    fn short_or_unknown_storage_is_rejected() {
        let raw = RawAddr::new(&"[::1]:443".parse().unwrap());
        assert_eq!(from_storage(&raw.storage, 8), None);
        assert_eq!(from_storage(&zeroed_storage(), 128), None);
    }
}
