//! The kernel's neighbour table, read when we must send to a peer whose MAC we have not
//! seen (the client role's first packet). Lookups are rare and rate-limited by the
//! caller, never on the per-packet path.
//!
//! One rtnetlink dump (RTM_GETNEIGH) for both families, in the calling thread's network
//! namespace: no `/proc` text to parse and no `ip` child process on a worker thread.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::wire::net::MacAddr;

/// Longest wait for the kernel's answer (it answers at once; this bounds a stuck socket).
const NETLINK_TIMEOUT: Duration = Duration::from_millis(200);
/// Largest dump accepted: ~100 bytes an entry, so some 40,000 neighbours.
const MAX_DUMP_BYTES: usize = 4 << 20;

// linux/netlink.h and linux/neighbour.h.
const NLMSG_HDR_LEN: usize = 16;
const NDMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// States whose link-layer address can be used (NUD_VALID without NUD_NOARP's zeros).
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80; // REACHABLE STALE DELAY PROBE PERMANENT

/// The MAC address the kernel has for `ip`, if it has a usable entry (on interface
/// `ifindex` only, if given: a link-local address names a different host on every link).
pub fn lookup(ip: IpAddr, ifindex: Option<u32>) -> Option<MacAddr> {
    match dump(ip) {
        Ok(table) => find(&table, ip, ifindex),
        Err(e) => {
            tracing::debug!(%ip, "neighbour table dump failed: {e}");
            None
        }
    }
}

/// Dumps the neighbour table of `ip`'s family: the raw netlink messages.
fn dump(ip: IpAddr) -> io::Result<Vec<u8>> {
    let family = match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    } as u8;
    let fd = netlink_socket()?;
    let mut req = [0u8; NLMSG_HDR_LEN + NDMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR_LEN + NDMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETNEIGH.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    req[NLMSG_HDR_LEN] = family;
    // SAFETY: a valid socket and a buffer of `req.len()` bytes; to the kernel (address
    // implied by the unconnected netlink socket's default, pid 0).
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n != req.len() as isize {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: a valid socket and a live buffer of `buf.len()` bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let chunk = &buf[..n as usize];
        match last_type(chunk) {
            Some(NLMSG_DONE) | None => {
                out.extend_from_slice(chunk);
                return Ok(out);
            }
            Some(NLMSG_ERROR) => return Err(io::Error::other("netlink error answer")),
            Some(_) => out.extend_from_slice(chunk),
        }
        if out.len() > MAX_DUMP_BYTES {
            return Err(io::Error::other("neighbour table too large"));
        }
    }
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is checked and then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: NETLINK_TIMEOUT.as_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// Netlink messages in `buf`: (type, payload after the header).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let body = &rest[NLMSG_HDR_LEN..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((kind, body))
    })
}

fn last_type(buf: &[u8]) -> Option<u16> {
    messages(buf).last().map(|(kind, _)| kind)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The usable link-layer address for `ip` (on `ifindex`, if given) in a dump.
fn find(dump: &[u8], ip: IpAddr, ifindex: Option<u32>) -> Option<MacAddr> {
    let want: &[u8] = match &ip {
        IpAddr::V4(v4) => &v4.octets(),
        IpAddr::V6(v6) => &v6.octets(),
    };
    let want = want.to_vec();
    messages(dump)
        .filter(|(kind, _)| *kind == libc::RTM_NEWNEIGH)
        .find_map(|(_, body)| {
            let state = u16::from_ne_bytes(body.get(8..10)?.try_into().ok()?);
            if state & NUD_USABLE == 0 {
                return None;
            }
            let index = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
            if ifindex.is_some_and(|want| want != index) {
                return None;
            }
            let mut dst = None;
            let mut lladdr = None;
            for (kind, value) in attributes(body.get(NDMSG_LEN..)?) {
                match kind {
                    libc::NDA_DST => dst = Some(value),
                    libc::NDA_LLADDR => lladdr = Some(value),
                    _ => {}
                }
            }
            if dst? != want.as_slice() {
                return None;
            }
            let mac: MacAddr = lladdr?.try_into().ok()?;
            (mac != [0; 6]).then_some(mac)
        })
}

/// Route attributes (`struct rtattr`: u16 length, u16 type, value, padded to 4).
fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(0..2)?.try_into().ok()?));
        if len < 4 || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest[2..4].try_into().ok()?);
        let value = &rest[4..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn neigh(family: u8, state: u16, dst: &[u8], mac: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; NDMSG_LEN];
        body[0] = family;
        body[8..10].copy_from_slice(&state.to_ne_bytes());
        body.extend(attr(libc::NDA_DST, dst));
        body.extend(attr(libc::NDA_LLADDR, mac));
        message(libc::RTM_NEWNEIGH, &body)
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    #[test]
    fn finds_usable_entries_of_a_dump() {
        let v6: IpAddr = "fd99::2".parse().unwrap();
        let v4: IpAddr = "10.99.0.2".parse().unwrap();
        let IpAddr::V6(v6b) = v6 else { unreachable!() };
        let mut dump = Vec::new();
        // A failed entry for the same address first: skipped.
        dump.extend(neigh(10, 0x20, &v6b.octets(), &[0; 6]));
        dump.extend(neigh(10, 0x04, &v6b.octets(), &[2, 0, 0, 0, 0, 2]));
        dump.extend(neigh(
            2,
            0x80,
            &[10, 99, 0, 2],
            &[2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee],
        ));
        dump.extend(message(NLMSG_DONE, &[0; 4]));
        assert_eq!(find(&dump, v6, None), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(
            find(&dump, v4, None),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        );
        assert_eq!(find(&dump, "10.99.0.9".parse().unwrap(), None), None);
        // Entries of another interface do not count when one is named.
        assert!(find(&dump, v4, Some(0)).is_some());
        assert_eq!(find(&dump, v4, Some(3)), None);
        assert_eq!(last_type(&dump), Some(NLMSG_DONE));
        // Truncated or garbage input ends the walk instead of reading past it.
        for cut in 0..dump.len() {
            let _ = find(&dump[..cut], v4, None);
        }
        assert_eq!(find(&[0xff; 64], v4, None), None);
    }

    proptest::proptest! {
        /// Any bytes, or a valid dump with bytes overwritten: never a panic, and a hit is
        /// always an entry that names the address.
        #[test]
        fn arbitrary_dumps_are_walked_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((0usize..256, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let v4: IpAddr = "10.99.0.2".parse().unwrap();
            let _ = find(&bytes, v4, Some(1));
            let _ = last_type(&bytes);
            let mut dump = neigh(2, 0x02, &[10, 99, 0, 2], &[2, 0, 0, 0, 0, 9]);
            dump.extend(message(NLMSG_DONE, &[0; 4]));
            for (at, b) in flips {
                let n = dump.len();
                dump[at % n] = b;
            }
            if let Some(mac) = find(&dump, v4, None) {
                proptest::prop_assert_ne!(mac, [0; 6]);
            }
        }
    }

    /// A real dump of this namespace's tables (no entries needed: it must just answer).
    #[test]
    fn the_kernel_answers_a_dump() {
        for ip in ["127.0.0.1", "::1"] {
            let table = dump(ip.parse().unwrap()).expect("RTM_GETNEIGH dump");
            assert_eq!(last_type(&table), Some(NLMSG_DONE));
        }
    }
}
