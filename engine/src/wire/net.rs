//! Ethernet (with at most one 802.1Q tag) / IPv4 / IPv6 / UDP, parsed and built in place
//! for the XDP path. Zero copy over slices; every read is bounds-checked and malformed
//! input is an error, never a panic.
//!
//! Receive: [`parse_udp_frame`] finds the UDP payload inside a frame and the addresses
//! around it. Transmit: the payload is written first at [`FrameHeaders::header_len`], then
//! [`FrameHeaders::emit`] writes the headers in front of it with correct checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const UDP_HDR_LEN: usize = 8;
/// The most header bytes any frame we build needs in front of its UDP payload.
pub const MAX_HEADROOM: usize = ETH_HDR_LEN + VLAN_TAG_LEN + IPV6_HDR_LEN + UDP_HDR_LEN;

/// `ip` with an IPv4-mapped IPv6 address (what a dual-stack socket reports) as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The same peer, whichever socket family reported either address.
pub fn same_peer(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && canonical_ip(a.ip()) == canonical_ip(b.ip())
}

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const IPPROTO_UDP: u8 = 17;

const DEFAULT_HOP_LIMIT: u8 = 64;
/// IPv4 "don't fragment" flag in the flags/fragment-offset word.
const IPV4_DF: u16 = 0x4000;
/// IPv4 "more fragments" flag and fragment offset mask.
const IPV4_MF_OFFSET: u16 = 0x3fff;

pub type MacAddr = [u8; 6];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("frame truncated")]
    Truncated,
    #[error("not IP (ethertype {0:#06x})")]
    NotIp(u16),
    #[error("not UDP (IP protocol {0})")]
    NotUdp(u8),
    #[error("malformed IP header")]
    BadIpHeader,
    #[error("IP fragment")]
    Fragmented,
    #[error("UDP length disagrees with the IP length")]
    BadUdpLength,
    #[error("UDP over IPv6 without a checksum")]
    MissingUdpChecksum,
    #[error("not from a unicast address and port, or not to a unicast address")]
    NotUnicast,
    #[error("source and destination address families differ")]
    FamilyMismatch,
    #[error("buffer too small for headers and payload")]
    BufferTooSmall,
}

/// A parsed UDP-in-IP-in-Ethernet frame: addresses and where the payload lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    /// 802.1Q tag control information, if the frame carried one tag.
    pub vlan: Option<u16>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// ECN codepoint (low two bits of the traffic class / TOS).
    pub ecn: u8,
    /// Offset of the UDP payload in the frame.
    pub payload_offset: usize,
    /// UDP payload length (from the UDP header; Ethernet padding excluded).
    pub payload_len: usize,
}

impl UdpFrame {
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        self.payload_offset..self.payload_offset + self.payload_len
    }
}

fn be16(b: &[u8], at: usize) -> Result<u16, NetError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(NetError::Truncated),
    }
}

fn mac_at(b: &[u8], at: usize) -> Result<MacAddr, NetError> {
    let s = b.get(at..at + 6).ok_or(NetError::Truncated)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(s);
    Ok(m)
}

/// Parses Ethernet (+ one VLAN tag) / IPv4 or IPv6 / UDP. IPv6 extension headers and IPv4
/// fragments are rejected (QUIC never needs them). The UDP checksum is not verified: veth
/// peers hand over partial checksums and the AEAD protects the payload anyway; but over
/// IPv6 a zero one is invalid (RFC 8200 §8.1). Datagrams to multicast or broadcast
/// addresses, or from port 0 or a multicast, broadcast or unspecified address, are
/// rejected: nothing a server should answer.
pub fn parse_udp_frame(frame: &[u8]) -> Result<UdpFrame, NetError> {
    let dst_mac = mac_at(frame, 0)?;
    let src_mac = mac_at(frame, 6)?;
    let mut ethertype = be16(frame, 12)?;
    let mut off = ETH_HDR_LEN;
    let mut vlan = None;
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        vlan = Some(be16(frame, off)?);
        ethertype = be16(frame, off + 2)?;
        off += VLAN_TAG_LEN;
    }
    let (src_ip, dst_ip, ecn, l4_off, l4_len) = match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, off)?,
        ETHERTYPE_IPV6 => parse_ipv6(frame, off)?,
        other => return Err(NetError::NotIp(other)),
    };
    let src_port = be16(frame, l4_off)?;
    let dst_port = be16(frame, l4_off + 2)?;
    let udp_len = usize::from(be16(frame, l4_off + 4)?);
    if udp_len < UDP_HDR_LEN || udp_len > l4_len {
        return Err(NetError::BadUdpLength);
    }
    if ethertype == ETHERTYPE_IPV6 && be16(frame, l4_off + 6)? == 0 {
        return Err(NetError::MissingUdpChecksum);
    }
    if src_port == 0 || !is_unicast(src_ip) || !is_unicast(dst_ip) {
        return Err(NetError::NotUnicast);
    }
    Ok(UdpFrame {
        dst_mac,
        src_mac,
        vlan,
        src: SocketAddr::new(src_ip, src_port),
        dst: SocketAddr::new(dst_ip, dst_port),
        ecn,
        payload_offset: l4_off + UDP_HDR_LEN,
        payload_len: udp_len - UDP_HDR_LEN,
    })
}

/// Neither multicast, broadcast nor unspecified.
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

/// Returns (src, dst, ecn, l4 offset, l4 length).
fn parse_ipv4(b: &[u8], off: usize) -> Result<(IpAddr, IpAddr, u8, usize, usize), NetError> {
    let h = b.get(off..off + IPV4_HDR_LEN).ok_or(NetError::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(NetError::BadIpHeader);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < IPV4_HDR_LEN || total < ihl {
        return Err(NetError::BadIpHeader);
    }
    // Ethernet may pad short frames: trust the IP total length, not the frame length.
    if b.len() < off + total {
        return Err(NetError::Truncated);
    }
    if u16::from_be_bytes([h[6], h[7]]) & IPV4_MF_OFFSET != 0 {
        return Err(NetError::Fragmented);
    }
    if h[9] != IPPROTO_UDP {
        return Err(NetError::NotUdp(h[9]));
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    Ok((src.into(), dst.into(), h[1] & 0x03, off + ihl, total - ihl))
}

fn parse_ipv6(b: &[u8], off: usize) -> Result<(IpAddr, IpAddr, u8, usize, usize), NetError> {
    let h = b.get(off..off + IPV6_HDR_LEN).ok_or(NetError::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(NetError::BadIpHeader);
    }
    let traffic_class = ((h[0] & 0x0f) << 4) | (h[1] >> 4);
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if h[6] != IPPROTO_UDP {
        return Err(NetError::NotUdp(h[6]));
    }
    if b.len() < off + IPV6_HDR_LEN + payload_len {
        return Err(NetError::Truncated);
    }
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&h[8..24]);
    d.copy_from_slice(&h[24..40]);
    Ok((
        Ipv6Addr::from(s).into(),
        Ipv6Addr::from(d).into(),
        traffic_class & 0x03,
        off + IPV6_HDR_LEN,
        payload_len,
    ))
}

/// Headers of a frame to transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeaders {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Emit one 802.1Q tag with this TCI.
    pub vlan: Option<u16>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ecn: u8,
    /// IPv4 TTL / IPv6 hop limit; 0 means the default (64).
    pub hop_limit: u8,
}

impl FrameHeaders {
    /// Bytes of headers in front of the UDP payload.
    pub fn header_len(&self) -> usize {
        header_len(self.dst.is_ipv6(), self.vlan.is_some())
    }

    /// Writes the headers into `frame[..header_len()]` around a payload of `payload_len`
    /// bytes already at `frame[header_len()..]`, with IPv4 header and UDP checksums.
    /// Returns the frame length.
    pub fn emit(&self, frame: &mut [u8], payload_len: usize) -> Result<usize, NetError> {
        let hlen = self.header_len();
        let total = hlen + payload_len;
        if frame.len() < total {
            return Err(NetError::BufferTooSmall);
        }
        let udp_len = UDP_HDR_LEN + payload_len;
        if udp_len > usize::from(u16::MAX) - IPV4_HDR_LEN {
            return Err(NetError::BufferTooSmall);
        }
        let hop = if self.hop_limit == 0 {
            DEFAULT_HOP_LIMIT
        } else {
            self.hop_limit
        };
        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        let mut off = 12;
        if let Some(tci) = self.vlan {
            frame[off..off + 2].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            frame[off + 2..off + 4].copy_from_slice(&tci.to_be_bytes());
            off += VLAN_TAG_LEN;
        }
        let (udp_off, pseudo) = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame[off..off + 2].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let ip = off + 2;
                let h = &mut frame[ip..ip + IPV4_HDR_LEN];
                h[0] = 0x45;
                h[1] = self.ecn & 0x03;
                h[2..4].copy_from_slice(&((IPV4_HDR_LEN + udp_len) as u16).to_be_bytes());
                h[4..6].copy_from_slice(&[0, 0]);
                h[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
                h[8] = hop;
                h[9] = IPPROTO_UDP;
                h[10..12].copy_from_slice(&[0, 0]);
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = !fold(sum_be16(h, 0));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let mut p = sum_be16(&s.octets(), 0);
                p = sum_be16(&d.octets(), p);
                (
                    ip + IPV4_HDR_LEN,
                    p + u64::from(IPPROTO_UDP) + udp_len as u64,
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame[off..off + 2].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let ip = off + 2;
                let h = &mut frame[ip..ip + IPV6_HDR_LEN];
                let tc = self.ecn & 0x03;
                h[0] = 0x60 | (tc >> 4);
                h[1] = tc << 4;
                h[2] = 0;
                h[3] = 0;
                h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                h[6] = IPPROTO_UDP;
                h[7] = hop;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                let mut p = sum_be16(&s.octets(), 0);
                p = sum_be16(&d.octets(), p);
                (
                    ip + IPV6_HDR_LEN,
                    p + u64::from(IPPROTO_UDP) + udp_len as u64,
                )
            }
            _ => return Err(NetError::FamilyMismatch),
        };
        debug_assert_eq!(udp_off + UDP_HDR_LEN, hlen);
        let u = &mut frame[udp_off..total];
        u[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        u[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
        let mut c = !fold(sum_be16(u, pseudo));
        // RFC 768: a computed checksum of zero is sent as all ones (zero means "none").
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
        Ok(total)
    }
}

/// Header bytes in front of the UDP payload for a family and tagging.
pub const fn header_len(ipv6: bool, vlan: bool) -> usize {
    ETH_HDR_LEN
        + if vlan { VLAN_TAG_LEN } else { 0 }
        + if ipv6 { IPV6_HDR_LEN } else { IPV4_HDR_LEN }
        + UDP_HDR_LEN
}

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero) to `acc`.
pub fn sum_be16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a wide one's-complement sum to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Verifies the IPv4 header checksum (true for IPv6, which has none).
pub fn ipv4_header_checksum_ok(frame: &[u8], f: &UdpFrame) -> bool {
    if !f.dst.is_ipv4() {
        return true;
    }
    let start = ETH_HDR_LEN + if f.vlan.is_some() { VLAN_TAG_LEN } else { 0 };
    let end = f.payload_offset.saturating_sub(UDP_HDR_LEN);
    match frame.get(start..end) {
        Some(h) if h.len() >= IPV4_HDR_LEN => fold(sum_be16(h, 0)) == 0xffff,
        _ => false,
    }
}

/// Verifies the UDP checksum of a parsed frame (a zero checksum over IPv4 means none).
pub fn udp_checksum_ok(frame: &[u8], f: &UdpFrame) -> bool {
    let udp_off = f.payload_offset - UDP_HDR_LEN;
    let Some(u) = frame.get(udp_off..f.payload_offset + f.payload_len) else {
        return false;
    };
    if f.dst.is_ipv4() && u[6] == 0 && u[7] == 0 {
        return true;
    }
    let mut p = match (f.src.ip(), f.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_be16(&d.octets(), sum_be16(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_be16(&d.octets(), sum_be16(&s.octets(), 0)),
        _ => return false,
    };
    p += u64::from(IPPROTO_UDP) + u.len() as u64;
    fold(sum_be16(u, p)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(src: &str, dst: &str, vlan: Option<u16>) -> FrameHeaders {
        FrameHeaders {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ecn: 2,
            hop_limit: 0,
        }
    }

    fn roundtrip(h: FrameHeaders, payload: &[u8]) {
        let mut buf = vec![0u8; 2048];
        let hl = h.header_len();
        buf[hl..hl + payload.len()].copy_from_slice(payload);
        let n = h.emit(&mut buf, payload.len()).unwrap();
        let f = parse_udp_frame(&buf[..n]).unwrap();
        assert_eq!(f.src, h.src);
        assert_eq!(f.dst, h.dst);
        assert_eq!(f.src_mac, h.src_mac);
        assert_eq!(f.dst_mac, h.dst_mac);
        assert_eq!(f.vlan, h.vlan);
        assert_eq!(f.ecn, 2);
        assert_eq!(&buf[f.payload_range()], payload);
        assert!(udp_checksum_ok(&buf[..n], &f));
        assert!(ipv4_header_checksum_ok(&buf[..n], &f));
        // Any flipped payload bit breaks the UDP checksum.
        if !payload.is_empty() {
            buf[hl] ^= 0x10;
            assert!(!udp_checksum_ok(&buf[..n], &f));
        }
    }

    #[test]
    fn v4_v6_vlan_roundtrip() {
        for len in [0usize, 1, 7, 8, 9, 1200, 1452] {
            let p: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            roundtrip(hdrs("10.99.0.1:4433", "10.99.0.2:50000", None), &p);
            roundtrip(hdrs("10.99.0.1:4433", "10.99.0.2:50000", Some(0x0064)), &p);
            roundtrip(hdrs("[fd99::1]:4433", "[fd99::2]:50000", None), &p);
            roundtrip(hdrs("[fd99::1]:4433", "[fd99::2]:50000", Some(7)), &p);
        }
    }

    #[test]
    fn known_ipv4_checksum() {
        // Classic example header (checksum 0xb861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!fold(sum_be16(&h, 0)), 0xb861);
    }

    #[test]
    fn family_mismatch_and_small_buffer() {
        let mut buf = [0u8; 100];
        let h = hdrs("10.0.0.1:1", "[::1]:2", None);
        assert_eq!(h.emit(&mut buf, 10), Err(NetError::FamilyMismatch));
        let h = hdrs("10.0.0.1:1", "10.0.0.2:2", None);
        assert_eq!(h.emit(&mut buf, 90), Err(NetError::BufferTooSmall));
    }

    #[test]
    fn rejects_malformed() {
        let mut buf = vec![0u8; 200];
        let h = hdrs("10.99.0.1:4433", "10.99.0.2:50000", None);
        let n = h.emit(&mut buf, 50).unwrap();
        for cut in 0..n {
            assert!(parse_udp_frame(&buf[..cut]).is_err(), "cut {cut}");
        }
        // Ethernet padding after the IP packet is fine.
        assert!(parse_udp_frame(&buf[..n + 10]).is_ok());
        let mut b = buf.clone();
        b[23] = 6; // TCP
        assert_eq!(parse_udp_frame(&b[..n]), Err(NetError::NotUdp(6)));
        let mut b = buf.clone();
        b[20] = 0x20; // MF
        assert_eq!(parse_udp_frame(&b[..n]), Err(NetError::Fragmented));
        let mut b = buf.clone();
        b[14] = 0x44; // IHL 16
        assert_eq!(parse_udp_frame(&b[..n]), Err(NetError::BadIpHeader));
        let mut b = buf.clone();
        b[38..40].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(parse_udp_frame(&b[..n]), Err(NetError::BadUdpLength));
        let mut b = buf.clone();
        b[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_udp_frame(&b[..n]), Err(NetError::NotIp(0x0806)));
        // From port 0, from or to a multicast or broadcast address.
        for (src, dst) in [
            ("10.99.0.1:0", "10.99.0.2:4433"),
            ("224.0.0.1:5000", "10.99.0.2:4433"),
            ("10.99.0.1:5000", "255.255.255.255:4433"),
            ("10.99.0.1:5000", "239.1.2.3:4433"),
            ("[fd99::1]:5000", "[ff02::1]:4433"),
            ("[::]:5000", "[fd99::2]:4433"),
        ] {
            let n = hdrs(src, dst, None).emit(&mut buf, 50).unwrap();
            assert_eq!(
                parse_udp_frame(&buf[..n]),
                Err(NetError::NotUnicast),
                "{src} -> {dst}"
            );
        }
        // RFC 8200 §8.1: UDP over IPv6 must carry a checksum.
        let n = hdrs("[fd99::1]:5000", "[fd99::2]:4433", None)
            .emit(&mut buf, 50)
            .unwrap();
        assert!(parse_udp_frame(&buf[..n]).is_ok());
        buf[14 + 40 + 6..14 + 40 + 8].fill(0);
        assert_eq!(
            parse_udp_frame(&buf[..n]),
            Err(NetError::MissingUdpChecksum)
        );
    }

    #[test]
    fn never_panics_on_noise() {
        let mut x: u32 = 0x1234_5678;
        let mut buf = [0u8; 128];
        for _ in 0..20_000 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            // Bias towards plausible ethertypes so the deeper parsers run.
            let et = [0x0800u16, 0x86dd, 0x8100][(x % 3) as usize];
            buf[12..14].copy_from_slice(&et.to_be_bytes());
            let len = (x as usize >> 8) % buf.len();
            let _ = parse_udp_frame(&buf[..len]);
        }
    }
}
