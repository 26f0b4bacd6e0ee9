//! Control messages (ancillary data): parsing what `recvmmsg` returns (destination
//! address, ECN, GRO segment size) and writing what `sendmmsg` needs (GSO segment size,
//! ECN). Works on plain byte buffers; only the header read/write touches raw memory.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes reserved for received control messages per datagram: pktinfo (v4 or v6, possibly
/// both on a dual-stack socket), TOS/TCLASS and the GRO segment size, with room to spare.
pub(super) const RX_CONTROL_LEN: usize = 256;
/// Bytes reserved for outgoing control messages: UDP_SEGMENT, IP_TOS/IPV6_TCLASS and
/// IP_PKTINFO/IPV6_PKTINFO (24 + 24 + 40 on 64-bit Linux).
pub(super) const TX_CONTROL_LEN: usize = 128;

/// A control-message buffer, aligned like `cmsghdr` as the kernel's CMSG macros expect.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct ControlBuf<const N: usize>(pub(super) [u8; N]);

impl<const N: usize> ControlBuf<N> {
    pub(super) const ZERO: Self = ControlBuf([0; N]);
}

/// glibc's CMSG_ALIGN: control messages are aligned to `size_t`.
const fn align(len: usize) -> usize {
    (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

const HDR: usize = align(size_of::<libc::cmsghdr>());

/// CMSG_SPACE: bytes one control message with `data` bytes of payload occupies.
pub(super) const fn space(data: usize) -> usize {
    HDR + align(data)
}

/// What the kernel told us about one received (super-)datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RxControl {
    /// Destination address from IP_PKTINFO / IPV6_PKTINFO.
    pub dst_ip: Option<IpAddr>,
    /// ECN bits of the TOS / traffic class byte.
    pub ecn: u8,
    /// UDP_GRO: the datagrams were coalesced and each but the last has this size.
    pub gro_segment: Option<usize>,
}

/// Walks the control messages in `buf` (the first `msg_controllen` bytes of the control
/// buffer). Malformed or unknown entries are skipped; nothing here trusts lengths.
pub(super) fn parse(buf: &[u8]) -> RxControl {
    let mut out = RxControl::default();
    let mut off = 0;
    while off + HDR <= buf.len() {
        // SAFETY: at least size_of::<cmsghdr>() bytes are readable at `off` (checked above,
        // HDR >= that size); read_unaligned has no alignment requirement and cmsghdr is
        // plain old data.
        let hdr: libc::cmsghdr = unsafe {
            buf.as_ptr()
                .add(off)
                .cast::<libc::cmsghdr>()
                .read_unaligned()
        };
        // `cmsg_len` is size_t on glibc but socklen_t elsewhere.
        #[allow(clippy::unnecessary_cast)]
        let len = hdr.cmsg_len as usize;
        if len < HDR || len > buf.len() - off {
            break;
        }
        let data = &buf[off + HDR..off + len];
        match (hdr.cmsg_level, hdr.cmsg_type) {
            // The kernel reports the received TOS as a single byte.
            (libc::IPPROTO_IP, libc::IP_TOS) => {
                if let Some(&tos) = data.first() {
                    out.ecn = tos & 0b11;
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                if let Some(v) = read_int(data) {
                    out.ecn = (v & 0b11) as u8;
                }
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                let at = offset_of!(libc::in_pktinfo, ipi_addr);
                if let Some(b) = data.get(at..at + 4) {
                    out.dst_ip = Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                let at = offset_of!(libc::in6_pktinfo, ipi6_addr);
                if let Some(b) = data.get(at..at + 16) {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(b);
                    out.dst_ip = Some(IpAddr::V6(Ipv6Addr::from(octets)));
                }
            }
            (libc::SOL_UDP, libc::UDP_GRO) => {
                out.gro_segment = read_int(data)
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|&v| v > 0);
            }
            _ => {}
        }
        off += align(len);
    }
    out
}

fn read_int(data: &[u8]) -> Option<libc::c_int> {
    let b = data.get(..size_of::<libc::c_int>())?;
    Some(libc::c_int::from_ne_bytes(b.try_into().ok()?))
}

/// Appends control messages to an outgoing control buffer.
pub(super) struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    pub(super) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }

    /// Bytes written so far (the `msg_controllen` to pass).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Appends one control message; returns false (writing nothing) if it does not fit.
    pub(super) fn push(&mut self, level: libc::c_int, ty: libc::c_int, data: &[u8]) -> bool {
        let need = space(data.len());
        if self.buf.len() - self.len < need {
            return false;
        }
        // SAFETY: cmsghdr is plain old data; all-zero is a valid value.
        let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        hdr.cmsg_len = (HDR + data.len()) as _;
        hdr.cmsg_level = level;
        hdr.cmsg_type = ty;
        let slot = &mut self.buf[self.len..self.len + need];
        slot.fill(0);
        // SAFETY: `slot` has at least HDR >= size_of::<cmsghdr>() bytes (need >= HDR);
        // write_unaligned has no alignment requirement.
        unsafe {
            slot.as_mut_ptr()
                .cast::<libc::cmsghdr>()
                .write_unaligned(hdr)
        };
        slot[HDR..HDR + data.len()].copy_from_slice(data);
        self.len += need;
        true
    }
}

/// Writes the source address to send from: IP_PKTINFO's `ipi_spec_dst` on the IPv4 path
/// (which a v4-mapped destination on a dual-stack socket takes), else IPV6_PKTINFO's
/// `ipi6_addr`; interface 0 leaves routing to the kernel. False if `src` does not suit
/// the path or there is no room.
pub(super) fn push_source(w: &mut Writer<'_>, src: IpAddr, v4_path: bool) -> bool {
    let v4 = match src {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    match (v4_path, v4, src) {
        (true, Some(a), _) => {
            let mut info = [0u8; size_of::<libc::in_pktinfo>()];
            let at = offset_of!(libc::in_pktinfo, ipi_spec_dst);
            info[at..at + 4].copy_from_slice(&a.octets());
            w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info)
        }
        (false, None, IpAddr::V6(a)) => {
            let mut info = [0u8; size_of::<libc::in6_pktinfo>()];
            let at = offset_of!(libc::in6_pktinfo, ipi6_addr);
            info[at..at + 16].copy_from_slice(&a.octets());
            w.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: libc::c_int) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn written_messages_parse_back() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf);
        assert!(w.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &int(0b10)));
        assert!(w.push(libc::SOL_UDP, libc::UDP_GRO, &int(1200)));
        let mut pkt6 = [0u8; size_of::<libc::in6_pktinfo>()];
        pkt6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        assert!(w.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pkt6));
        let len = w.len();
        assert_eq!(len, space(4) * 2 + space(pkt6.len()));
        let c = parse(&buf[..len]);
        assert_eq!(c.ecn, 2);
        assert_eq!(c.gro_segment, Some(1200));
        assert_eq!(c.dst_ip, Some("2001:db8::7".parse().unwrap()));
    }

    #[test]
    fn v4_pktinfo_and_tos_byte() {
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        assert!(w.push(libc::IPPROTO_IP, libc::IP_TOS, &[0xb7]));
        let mut info = [0u8; size_of::<libc::in_pktinfo>()];
        let at = offset_of!(libc::in_pktinfo, ipi_addr);
        info[at..at + 4].copy_from_slice(&[10, 1, 2, 3]);
        assert!(w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info));
        let len = w.len();
        let c = parse(&buf[..len]);
        assert_eq!(c.ecn, 3);
        assert_eq!(c.dst_ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(c.gro_segment, None);
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 20];
        let mut w = Writer::new(&mut buf);
        assert!(!w.push(libc::SOL_UDP, libc::UDP_SEGMENT, &1200u16.to_ne_bytes()));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn garbage_never_panics() {
        // Truncated, oversized and zero lengths must all stop the walk cleanly.
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        assert!(w.push(libc::SOL_UDP, libc::UDP_GRO, &int(0)));
        let len = w.len();
        let c = parse(&buf[..len]);
        assert_eq!(c.gro_segment, None, "a zero segment size means no GRO");
        for cut in 0..buf.len() {
            parse(&buf[..cut]);
        }
        let mut bad = [0xffu8; 64];
        parse(&bad);
        bad[..8].copy_from_slice(&0usize.to_ne_bytes());
        parse(&bad);
    }
}
