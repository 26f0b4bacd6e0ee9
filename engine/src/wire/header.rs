//! Packet headers: long and short (RFC 9000 §17), the version-invariant view
//! (RFC 8999) and QUIC v2's long-header type bits (RFC 9369 §3.2).
//!
//! Parsing stops at the protected part of the header: the packet-number length and the
//! reserved bits are under header protection, so [`parse`] only reports where the packet
//! number starts (`pn_offset`) and leaves the rest to the crypto layer.

use super::cid::ConnectionId;
use super::error::WireError;
use super::packet_number;
use super::varint::{varint_len, write_varint_at, Reader, Writer};

pub const VERSION_1: u32 = 1;
pub const VERSION_2: u32 = 0x6b33_43cf;

/// Long-header form bit (RFC 9000 §17.2).
const FORM_BIT: u8 = 0x80;
/// The QUIC bit; 1 in every v1/v2 packet except Version Negotiation.
const FIXED_BIT: u8 = 0x40;
/// Size of the reserved Length field in packets we write: a 2-byte varint.
const LENGTH_FIELD_LEN: usize = 2;
const RETRY_TAG_LEN: usize = 16;

/// The versions we speak, in the order Version Negotiation packets and our
/// `version_information` (RFC 9368 §3) list them.
pub const SUPPORTED_VERSIONS: [u32; 2] = [VERSION_1, VERSION_2];

pub fn is_supported_version(v: u32) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

impl LongType {
    /// The two type bits for this packet type; `None` for an unsupported version.
    pub fn to_bits(self, version: u32) -> Option<u8> {
        let v1 = match self {
            LongType::Initial => 0b00,
            LongType::ZeroRtt => 0b01,
            LongType::Handshake => 0b10,
            LongType::Retry => 0b11,
        };
        match version {
            VERSION_1 => Some(v1),
            // RFC 9369 §3.2: v2 rotates the codes by one.
            VERSION_2 => Some((v1 + 1) & 0b11),
            _ => None,
        }
    }

    /// The packet type for two type bits; `None` for an unsupported version.
    pub fn from_bits(bits: u8, version: u32) -> Option<Self> {
        let v1_bits = match version {
            VERSION_1 => bits & 0b11,
            VERSION_2 => bits.wrapping_sub(1) & 0b11,
            _ => return None,
        };
        Some(match v1_bits {
            0b00 => LongType::Initial,
            0b01 => LongType::ZeroRtt,
            0b10 => LongType::Handshake,
            _ => LongType::Retry,
        })
    }
}

/// A parsed packet header. Slices and the token borrow from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header<'a> {
    /// Initial, 0-RTT or Handshake of a supported version. `pn_offset`: offset of the
    /// (protected) packet number from the start of this packet; `length`: value of the
    /// Length field (pn + payload + tag).
    Long {
        ty: LongType,
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
        token: &'a [u8],
        pn_offset: usize,
        length: usize,
    },
    Retry {
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
        token: &'a [u8],
        integrity_tag: [u8; 16],
    },
    VersionNegotiation {
        dcid: &'a [u8],
        scid: &'a [u8],
        /// Supported versions, 4 bytes each (length checked to be a multiple of 4).
        versions: &'a [u8],
    },
    /// Long header with a version we do not support: only the invariant fields are known
    /// (connection IDs up to 255 bytes, RFC 8999 §5.1).
    UnsupportedVersion {
        version: u32,
        dcid: &'a [u8],
        scid: &'a [u8],
    },
    Short {
        dcid: ConnectionId,
        pn_offset: usize,
    },
}

impl<'a> Header<'a> {
    pub fn dcid(&self) -> &[u8] {
        match self {
            Header::Long { dcid, .. } | Header::Retry { dcid, .. } | Header::Short { dcid, .. } => {
                dcid.as_slice()
            }
            Header::VersionNegotiation { dcid, .. } | Header::UnsupportedVersion { dcid, .. } => {
                dcid
            }
        }
    }

    /// The source connection ID; `None` for short headers.
    pub fn scid(&self) -> Option<&[u8]> {
        match self {
            Header::Long { scid, .. } | Header::Retry { scid, .. } => Some(scid.as_slice()),
            Header::VersionNegotiation { scid, .. } | Header::UnsupportedVersion { scid, .. } => {
                Some(scid)
            }
            Header::Short { .. } => None,
        }
    }

    pub fn is_long(&self) -> bool {
        !matches!(self, Header::Short { .. })
    }

    /// The version field of a long header (0 for Version Negotiation).
    pub fn version(&self) -> Option<u32> {
        match self {
            Header::Long { version, .. }
            | Header::Retry { version, .. }
            | Header::UnsupportedVersion { version, .. } => Some(*version),
            Header::VersionNegotiation { .. } => Some(0),
            Header::Short { .. } => None,
        }
    }

    /// The long-header packet type of a supported version.
    pub fn long_type(&self) -> Option<LongType> {
        match self {
            Header::Long { ty, .. } => Some(*ty),
            Header::Retry { .. } => Some(LongType::Retry),
            _ => None,
        }
    }

    /// Offset of the protected packet number, for packets that carry one.
    pub fn pn_offset(&self) -> Option<usize> {
        match self {
            Header::Long { pn_offset, .. } | Header::Short { pn_offset, .. } => Some(*pn_offset),
            _ => None,
        }
    }

    /// Iterates the versions of a Version Negotiation packet.
    pub fn negotiated_versions(&self) -> impl Iterator<Item = u32> + 'a {
        let versions: &'a [u8] = match self {
            Header::VersionNegotiation { versions, .. } => versions,
            _ => &[],
        };
        versions
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Parses the first packet in `buf` (a datagram may coalesce several, RFC 9000 §12.2).
/// `short_dcid_len` is our CID length for short headers. Returns the header and the
/// total length of this packet in `buf` (for Short, Retry, Version Negotiation and
/// unsupported versions: the rest of the buffer).
pub fn parse(buf: &[u8], short_dcid_len: usize) -> Result<(Header<'_>, usize), WireError> {
    let mut r = Reader::new(buf);
    let first = r.u8()?;
    if first & FORM_BIT == 0 {
        return parse_short(buf, first, short_dcid_len);
    }
    let version = r.u32()?;
    let dcid_len = usize::from(r.u8()?);
    let dcid = r.bytes(dcid_len)?;
    let scid_len = usize::from(r.u8()?);
    let scid = r.bytes(scid_len)?;

    if version == 0 {
        // RFC 9000 §17.2.1: the fixed bit is unused here; the rest is a version list.
        let versions = r.rest();
        if versions.is_empty() || !versions.len().is_multiple_of(4) {
            return Err(WireError::InvalidValue);
        }
        return Ok((
            Header::VersionNegotiation {
                dcid,
                scid,
                versions,
            },
            buf.len(),
        ));
    }
    if !is_supported_version(version) {
        return Ok((
            Header::UnsupportedVersion {
                version,
                dcid,
                scid,
            },
            buf.len(),
        ));
    }
    if first & FIXED_BIT == 0 {
        return Err(WireError::FixedBitClear);
    }
    let dcid = ConnectionId::new(dcid)?;
    let scid = ConnectionId::new(scid)?;
    let Some(ty) = LongType::from_bits(first >> 4, version) else {
        return Err(WireError::InvalidValue);
    };

    let token = match ty {
        LongType::Retry => {
            // RFC 9000 §17.2.5: token, then a 16-byte integrity tag to the end.
            let token_len = r
                .remaining()
                .checked_sub(RETRY_TAG_LEN)
                .ok_or(WireError::UnexpectedEnd)?;
            let token = r.bytes(token_len)?;
            let integrity_tag = r.array()?;
            let header = Header::Retry {
                version,
                dcid,
                scid,
                token,
                integrity_tag,
            };
            return Ok((header, buf.len()));
        }
        LongType::Initial => {
            let token_len = r.varint()?;
            let token_len = usize::try_from(token_len).map_err(|_| WireError::UnexpectedEnd)?;
            r.bytes(token_len)?
        }
        LongType::ZeroRtt | LongType::Handshake => &[],
    };
    let length = usize::try_from(r.varint()?).map_err(|_| WireError::UnexpectedEnd)?;
    let pn_offset = r.position();
    if length > r.remaining() {
        return Err(WireError::UnexpectedEnd);
    }
    let header = Header::Long {
        ty,
        version,
        dcid,
        scid,
        token,
        pn_offset,
        length,
    };
    Ok((header, pn_offset + length))
}

fn parse_short(
    buf: &[u8],
    first: u8,
    short_dcid_len: usize,
) -> Result<(Header<'_>, usize), WireError> {
    if first & FIXED_BIT == 0 {
        return Err(WireError::FixedBitClear);
    }
    let pn_offset = 1 + short_dcid_len;
    let dcid = buf.get(1..pn_offset).ok_or(WireError::UnexpectedEnd)?;
    let dcid = ConnectionId::new(dcid)?;
    Ok((Header::Short { dcid, pn_offset }, buf.len()))
}

/// Version-invariant peek at the DCID (RFC 8999 §5), for routing before full parsing.
pub fn peek_dcid(buf: &[u8], short_dcid_len: usize) -> Result<&[u8], WireError> {
    let first = *buf.first().ok_or(WireError::UnexpectedEnd)?;
    let (start, len): (usize, usize) = if first & FORM_BIT != 0 {
        (6, usize::from(*buf.get(5).ok_or(WireError::UnexpectedEnd)?))
    } else {
        (1, short_dcid_len)
    };
    start
        .checked_add(len)
        .and_then(|end| buf.get(start..end))
        .ok_or(WireError::UnexpectedEnd)
}

/// Where [`write_long`] left the fields to finish, as offsets into the writer's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeaderLayout {
    /// Offset of the first byte of this packet.
    pub start: usize,
    /// Offset of the reserved 2-byte Length field.
    pub length_offset: usize,
    /// Offset of the packet number.
    pub pn_offset: usize,
}

/// Writes a long header (Initial, 0-RTT or Handshake) up to and including the packet
/// number. The Length field is reserved as a 2-byte varint (so pn + payload + tag up to
/// 16383 bytes) and filled by [`finish_long`]. Offsets are positions in the writer's
/// buffer, so several packets can be coalesced into one datagram. Nothing is written on
/// error.
#[allow(clippy::too_many_arguments)]
pub fn write_long(
    w: &mut Writer,
    ty: LongType,
    version: u32,
    dcid: &ConnectionId,
    scid: &ConnectionId,
    token: &[u8],
    pn: u64,
    pn_len: usize,
) -> Result<LongHeaderLayout, WireError> {
    let Some(bits) = LongType::to_bits(ty, version) else {
        return Err(WireError::InvalidValue);
    };
    if ty == LongType::Retry
        || (ty != LongType::Initial && !token.is_empty())
        || !(1..=4).contains(&pn_len)
    {
        return Err(WireError::InvalidValue);
    }
    let token_field = if ty == LongType::Initial {
        varint_len(token.len() as u64) + token.len()
    } else {
        0
    };
    let needed = 7 + dcid.len() + scid.len() + token_field + LENGTH_FIELD_LEN + pn_len;
    if needed > w.remaining() {
        return Err(WireError::BufferTooSmall);
    }

    let start = w.len();
    // Reserved bits stay zero (RFC 9000 §17.2); header protection covers them.
    w.put_u8(0xc0 | (bits << 4) | (pn_len as u8 - 1))?;
    w.put_u32(version)?;
    w.put_u8(dcid.len() as u8)?;
    w.put_bytes(dcid)?;
    w.put_u8(scid.len() as u8)?;
    w.put_bytes(scid)?;
    if ty == LongType::Initial {
        w.put_varint(token.len() as u64)?;
        w.put_bytes(token)?;
    }
    let length_offset = w.len();
    w.put_varint_with_len(0, LENGTH_FIELD_LEN)?;
    let pn_offset = w.len();
    packet_number::write(w, pn, pn_len)?;
    Ok(LongHeaderLayout {
        start,
        length_offset,
        pn_offset,
    })
}

/// After the payload (and room for the AEAD tag) is in place: sets Length to
/// `packet_end - pn_offset`, where `packet_end` is the offset in `buf` just past this
/// packet (its length when the packet starts at 0).
pub fn finish_long(
    buf: &mut [u8],
    layout: &LongHeaderLayout,
    packet_end: usize,
) -> Result<(), WireError> {
    let length = packet_end
        .checked_sub(layout.pn_offset)
        .ok_or(WireError::InvalidValue)?;
    if packet_end > buf.len() {
        return Err(WireError::BufferTooSmall);
    }
    write_varint_at(buf, layout.length_offset, length as u64, LENGTH_FIELD_LEN)
}

/// Writes a short header (RFC 9000 §17.3.1): first byte `0b01 | spin<<5 |
/// key_phase<<2 | (pn_len-1)`, the DCID and the packet number. Returns the offset of the
/// packet number in the writer's buffer. Nothing is written on error.
pub fn write_short(
    w: &mut Writer,
    spin: bool,
    key_phase: bool,
    dcid: &ConnectionId,
    pn: u64,
    pn_len: usize,
) -> Result<usize, WireError> {
    if !(1..=4).contains(&pn_len) {
        return Err(WireError::InvalidValue);
    }
    if 1 + dcid.len() + pn_len > w.remaining() {
        return Err(WireError::BufferTooSmall);
    }
    let first = FIXED_BIT | (u8::from(spin) << 5) | (u8::from(key_phase) << 2) | (pn_len as u8 - 1);
    w.put_u8(first)?;
    w.put_cid(dcid)?;
    let pn_offset = w.len();
    packet_number::write(w, pn, pn_len)?;
    Ok(pn_offset)
}

/// Writes a Version Negotiation packet (RFC 9000 §17.2.1) listing `versions`. The
/// caller echoes the client's SCID as `dcid` and its DCID as `scid`. Returns its length.
pub fn write_version_negotiation(
    buf: &mut [u8],
    dcid: &[u8],
    scid: &[u8],
    versions: &[u32],
    first_byte_random: u8,
) -> Result<usize, WireError> {
    let (Ok(dcid_len), Ok(scid_len)) = (u8::try_from(dcid.len()), u8::try_from(scid.len())) else {
        return Err(WireError::InvalidValue);
    };
    if versions.is_empty() {
        return Err(WireError::InvalidValue);
    }
    let mut w = Writer::new(buf);
    // The unused bits are arbitrary, but 0x40 stays set for demultiplexing (§17.2.1).
    w.put_u8(FORM_BIT | FIXED_BIT | (first_byte_random & 0x3f))?;
    w.put_u32(0)?;
    w.put_u8(dcid_len)?;
    w.put_bytes(dcid)?;
    w.put_u8(scid_len)?;
    w.put_bytes(scid)?;
    for &v in versions {
        w.put_u32(v)?;
    }
    Ok(w.len())
}

/// Writes a Retry packet (RFC 9000 §17.2.5) without its integrity tag (the crypto layer
/// appends it, RFC 9001 §5.8). Returns the length written.
pub fn write_retry_without_tag(
    buf: &mut [u8],
    version: u32,
    dcid: &ConnectionId,
    scid: &ConnectionId,
    token: &[u8],
    first_byte_random: u8,
) -> Result<usize, WireError> {
    let Some(bits) = LongType::Retry.to_bits(version) else {
        return Err(WireError::InvalidValue);
    };
    // A client discards a Retry with an empty token (RFC 9000 §17.2.5.2).
    if token.is_empty() {
        return Err(WireError::InvalidValue);
    }
    let mut w = Writer::new(buf);
    w.put_u8(FORM_BIT | FIXED_BIT | (bits << 4) | (first_byte_random & 0x0f))?;
    w.put_u32(version)?;
    w.put_u8(dcid.len() as u8)?;
    w.put_bytes(dcid)?;
    w.put_u8(scid.len() as u8)?;
    w.put_bytes(scid)?;
    w.put_bytes(token)?;
    Ok(w.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn cid(s: &str) -> ConnectionId {
        ConnectionId::new(&unhex(s)).unwrap()
    }

    /// RFC 9001 Appendix A.2: the client Initial's unprotected header.
    const CLIENT_INITIAL_HEADER: &str = "c300000001088394c8f03e5157080000449e00000002";

    #[test]
    fn parse_rfc9001_client_initial() {
        let mut pkt = unhex(CLIENT_INITIAL_HEADER);
        pkt.resize(1200, 0);
        pkt.extend_from_slice(&[0xc3; 7]); // a second, coalesced "packet"
        let (h, len) = parse(&pkt, 8).unwrap();
        assert_eq!(len, 1200);
        assert_eq!(
            h,
            Header::Long {
                ty: LongType::Initial,
                version: VERSION_1,
                dcid: cid("8394c8f03e515708"),
                scid: ConnectionId::default(),
                token: &[],
                pn_offset: 18,
                length: 0x049e, // varint 0x449e
            }
        );
        assert_eq!(h.dcid(), &unhex("8394c8f03e515708")[..]);
        assert!(h.is_long());
        assert_eq!(h.version(), Some(VERSION_1));
        assert_eq!(h.pn_offset(), Some(18));
        assert_eq!(h.long_type(), Some(LongType::Initial));
        assert_eq!(peek_dcid(&pkt, 8).unwrap(), h.dcid());
    }

    #[test]
    fn write_rfc9001_client_initial() {
        let mut buf = [0u8; 1200];
        let mut w = Writer::new(&mut buf);
        let layout = write_long(
            &mut w,
            LongType::Initial,
            VERSION_1,
            &cid("8394c8f03e515708"),
            &ConnectionId::default(),
            &[],
            2,
            4,
        )
        .unwrap();
        assert_eq!(
            layout,
            LongHeaderLayout {
                start: 0,
                length_offset: 16,
                pn_offset: 18
            }
        );
        let header_len = w.len();
        finish_long(&mut buf, &layout, 1200).unwrap();
        assert_eq!(hex::encode(&buf[..header_len]), CLIENT_INITIAL_HEADER);
    }

    /// RFC 9001 Appendix A.3: the server Initial's unprotected header.
    #[test]
    fn server_initial_round_trip() {
        let expected = "c1000000010008f067a5502a4262b50040750001";
        let mut buf = [0u8; 200];
        let mut w = Writer::new(&mut buf);
        let layout = write_long(
            &mut w,
            LongType::Initial,
            VERSION_1,
            &ConnectionId::default(),
            &cid("f067a5502a4262b5"),
            &[],
            1,
            2,
        )
        .unwrap();
        let header_len = w.len();
        finish_long(&mut buf, &layout, layout.pn_offset + 0x75).unwrap();
        assert_eq!(hex::encode(&buf[..header_len]), expected);
        let (h, len) = parse(&buf, 0).unwrap();
        assert_eq!(len, layout.pn_offset + 0x75);
        assert!(matches!(
            h,
            Header::Long {
                ty: LongType::Initial,
                length: 0x75,
                ..
            }
        ));
    }

    /// RFC 9001 Appendix A.4 (v1) and RFC 9369 Appendix A.4 (v2) Retry packets.
    #[test]
    fn retry_v1_and_v2() {
        let cases = [
            (
                VERSION_1,
                "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba",
                "04a265ba2eff4d829058fb3f0f2496ba",
            ),
            (
                VERSION_2,
                "cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6",
                "c8646ce8bfe33952d955543665dcc7b6",
            ),
        ];
        for (version, packet, tag) in cases {
            let pkt = unhex(packet);
            let (h, len) = parse(&pkt, 8).unwrap();
            assert_eq!(len, pkt.len());
            assert_eq!(h.long_type(), Some(LongType::Retry));
            let Header::Retry {
                version: v,
                dcid,
                scid,
                token,
                integrity_tag,
            } = h
            else {
                panic!("not a retry: {h:?}");
            };
            assert_eq!(v, version);
            assert!(dcid.is_empty());
            assert_eq!(scid, cid("f067a5502a4262b5"));
            assert_eq!(token, b"token");
            assert_eq!(hex::encode(integrity_tag), tag);

            let mut out = [0u8; 64];
            let n = write_retry_without_tag(&mut out, version, &dcid, &scid, token, 0x0f).unwrap();
            assert_eq!(&out[..n], &pkt[..pkt.len() - 16]);
        }
        let mut out = [0u8; 64];
        let empty = ConnectionId::default();
        assert_eq!(
            write_retry_without_tag(&mut out, VERSION_1, &empty, &empty, &[], 0),
            Err(WireError::InvalidValue)
        );
        assert_eq!(
            write_retry_without_tag(&mut out, 7, &empty, &empty, b"t", 0),
            Err(WireError::InvalidValue)
        );
        // Too short to hold the integrity tag.
        assert_eq!(
            parse(&unhex("ff000000010000abcdef"), 0),
            Err(WireError::UnexpectedEnd)
        );
    }

    #[test]
    fn type_bits_per_version() {
        let all = [
            LongType::Initial,
            LongType::ZeroRtt,
            LongType::Handshake,
            LongType::Retry,
        ];
        let v2_bits = [0b01, 0b10, 0b11, 0b00];
        for (i, ty) in all.into_iter().enumerate() {
            assert_eq!(ty.to_bits(VERSION_1), Some(i as u8));
            assert_eq!(ty.to_bits(VERSION_2), Some(v2_bits[i]));
            assert_eq!(LongType::from_bits(i as u8, VERSION_1), Some(ty));
            assert_eq!(LongType::from_bits(v2_bits[i], VERSION_2), Some(ty));
        }
        assert_eq!(LongType::Initial.to_bits(0xff00_001d), None);
    }

    #[test]
    fn long_round_trip_all_types_and_versions() {
        for version in [VERSION_1, VERSION_2] {
            for ty in [LongType::Initial, LongType::ZeroRtt, LongType::Handshake] {
                let token: &[u8] = if ty == LongType::Initial { b"tok" } else { &[] };
                let mut buf = [0u8; 256];
                let mut w = Writer::new(&mut buf);
                w.put_zeros(3).unwrap(); // packets may follow others in a datagram
                let layout = write_long(
                    &mut w,
                    ty,
                    version,
                    &cid("0102030405"),
                    &cid("aabb"),
                    token,
                    0x1234,
                    2,
                )
                .unwrap();
                assert_eq!(layout.start, 3);
                w.put_bytes(&[9; 40]).unwrap();
                let end = w.len() + 16;
                finish_long(&mut buf, &layout, end).unwrap();
                let (h, len) = parse(&buf[3..], 0).unwrap();
                assert_eq!(len, end - 3);
                assert_eq!(
                    h,
                    Header::Long {
                        ty,
                        version,
                        dcid: cid("0102030405"),
                        scid: cid("aabb"),
                        token,
                        pn_offset: layout.pn_offset - 3,
                        length: end - layout.pn_offset,
                    }
                );
                assert_eq!(buf[3] & 0x03, 1, "pn_len - 1 in the low bits");
            }
        }
    }

    #[test]
    fn write_long_rejects_misuse() {
        let c = ConnectionId::default();
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let retry = write_long(&mut w, LongType::Retry, VERSION_1, &c, &c, &[], 0, 1);
        assert_eq!(retry, Err(WireError::InvalidValue));
        let token = write_long(&mut w, LongType::Handshake, VERSION_1, &c, &c, b"x", 0, 1);
        assert_eq!(token, Err(WireError::InvalidValue));
        let pn_len = write_long(&mut w, LongType::Handshake, VERSION_1, &c, &c, &[], 0, 5);
        assert_eq!(pn_len, Err(WireError::InvalidValue));
        let version = write_long(&mut w, LongType::Handshake, 0x1a2a_3a4a, &c, &c, &[], 0, 1);
        assert_eq!(version, Err(WireError::InvalidValue));
        assert!(w.is_empty());
        let mut small = [0u8; 10];
        let mut w = Writer::new(&mut small);
        let c8 = cid("0102030405060708");
        let r = write_long(&mut w, LongType::Handshake, VERSION_1, &c8, &c, &[], 0, 1);
        assert_eq!(r, Err(WireError::BufferTooSmall));
        assert!(w.is_empty(), "nothing written on error");

        let layout = LongHeaderLayout {
            start: 0,
            length_offset: 8,
            pn_offset: 10,
        };
        assert_eq!(
            finish_long(&mut buf, &layout, 9),
            Err(WireError::InvalidValue)
        );
        assert_eq!(
            finish_long(&mut buf, &layout, 65),
            Err(WireError::BufferTooSmall)
        );
        let layout = LongHeaderLayout {
            pn_offset: 0,
            ..layout
        };
        let mut big = vec![0u8; 20_000];
        assert_eq!(
            finish_long(&mut big, &layout, 16_384),
            Err(WireError::InvalidValue)
        );
    }

    /// RFC 9001 Appendix A.5: the ChaCha20 short-header example's unprotected header.
    #[test]
    fn short_header() {
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        let pn_offset = write_short(
            &mut w,
            false,
            false,
            &ConnectionId::default(),
            654_360_564,
            3,
        )
        .unwrap();
        assert_eq!(pn_offset, 1);
        assert_eq!(hex::encode(w.written()), "4200bff4");

        let mut w = Writer::new(&mut buf);
        let dcid = cid("0011223344556677");
        let pn_offset = write_short(&mut w, true, true, &dcid, 7, 1).unwrap();
        assert_eq!(pn_offset, 9);
        assert_eq!(buf[0], 0x40 | 0x20 | 0x04);
        let (h, len) = parse(&buf[..20], 8).unwrap();
        assert_eq!(h, Header::Short { dcid, pn_offset: 9 });
        assert_eq!(len, 20);
        assert_eq!(h.scid(), None);
        assert!(!h.is_long());
        assert_eq!(peek_dcid(&buf[..20], 8).unwrap(), dcid.as_slice());
        assert_eq!(parse(&buf[..5], 8), Err(WireError::UnexpectedEnd));
        assert_eq!(parse(&buf[..30], 21), Err(WireError::ConnectionIdTooLong));
        let mut w = Writer::new(&mut buf[..4]);
        assert_eq!(
            write_short(&mut w, false, false, &dcid, 1, 1),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            write_short(&mut w, false, false, &dcid, 1, 0),
            Err(WireError::InvalidValue)
        );
    }

    #[test]
    fn fixed_bit_clear_is_rejected() {
        assert_eq!(parse(&[0x00, 1, 2, 3], 2), Err(WireError::FixedBitClear));
        let mut pkt = unhex(CLIENT_INITIAL_HEADER);
        pkt.resize(1200, 0);
        pkt[0] &= !0x40;
        assert_eq!(parse(&pkt, 8), Err(WireError::FixedBitClear));
    }

    #[test]
    fn version_negotiation_round_trip() {
        let mut buf = [0u8; 64];
        let n =
            write_version_negotiation(&mut buf, b"\x01\x02", b"abc", &[VERSION_2, VERSION_1], 0xff)
                .unwrap();
        assert_eq!(buf[0], 0xff);
        let (h, len) = parse(&buf[..n], 0).unwrap();
        assert_eq!(len, n);
        assert_eq!(
            h,
            Header::VersionNegotiation {
                dcid: b"\x01\x02",
                scid: b"abc",
                versions: &[0x6b, 0x33, 0x43, 0xcf, 0, 0, 0, 1],
            }
        );
        assert_eq!(h.version(), Some(0));
        assert_eq!(
            h.negotiated_versions().collect::<Vec<_>>(),
            [VERSION_2, VERSION_1]
        );
        // A truncated version list.
        assert_eq!(parse(&buf[..n - 1], 0), Err(WireError::InvalidValue));
        assert_eq!(
            write_version_negotiation(&mut buf, &[0; 256], b"", &[1], 0),
            Err(WireError::InvalidValue)
        );
        assert_eq!(
            write_version_negotiation(&mut buf, b"", b"", &[], 0),
            Err(WireError::InvalidValue)
        );
        assert_eq!(
            write_version_negotiation(&mut buf[..10], b"", b"", &[1, 2], 0),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn unsupported_version_keeps_invariants() {
        // Long CIDs (up to 255) are legal in unknown versions (RFC 8999 §5.1).
        let mut pkt = vec![0x80, 0x1a, 0x2a, 0x3a, 0x4a, 30];
        pkt.extend_from_slice(&[0xd1; 30]);
        pkt.push(1);
        pkt.push(0x5c);
        pkt.extend_from_slice(&[0; 1100]);
        let (h, len) = parse(&pkt, 8).unwrap();
        assert_eq!(len, pkt.len());
        assert_eq!(
            h,
            Header::UnsupportedVersion {
                version: 0x1a2a_3a4a,
                dcid: &[0xd1; 30],
                scid: &[0x5c],
            }
        );
        assert_eq!(peek_dcid(&pkt, 8).unwrap(), &[0xd1; 30]);
        // The same CID in v1 is too long.
        pkt[1..5].copy_from_slice(&VERSION_1.to_be_bytes());
        pkt[0] |= 0x40;
        assert_eq!(parse(&pkt, 8), Err(WireError::ConnectionIdTooLong));
    }

    #[test]
    fn length_beyond_buffer_and_truncation() {
        let mut pkt = unhex(CLIENT_INITIAL_HEADER);
        pkt.resize(1199, 0);
        assert_eq!(parse(&pkt, 8), Err(WireError::UnexpectedEnd));
        for cut in 0..22 {
            assert!(parse(&pkt[..cut], 8).is_err(), "cut at {cut}");
        }
        for cut in 0..6 {
            assert_eq!(peek_dcid(&pkt[..cut], 8), Err(WireError::UnexpectedEnd));
        }
        assert_eq!(peek_dcid(&[], 0), Err(WireError::UnexpectedEnd));
        // Initial token length larger than the packet.
        let bad = unhex("c30000000100000540");
        assert_eq!(parse(&bad, 0), Err(WireError::UnexpectedEnd));
    }

    proptest! {
        #[test]
        fn parse_random_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            dcid_len in 0usize..24,
        ) {
            if let Ok((h, len)) = parse(&bytes, dcid_len) {
                prop_assert!(len <= bytes.len());
                let _ = (h.dcid(), h.scid(), h.version(), h.pn_offset());
                prop_assert_eq!(peek_dcid(&bytes, dcid_len).unwrap(), h.dcid());
            }
        }

        #[test]
        fn parse_mutated_packets_never_panics(
            flips in proptest::collection::vec((0usize..40, any::<u8>()), 1..6),
        ) {
            let mut pkt = unhex("c300000001088394c8f03e51570805aabbccddee0005449e00000002");
            pkt.resize(60, 0);
            for (i, b) in flips {
                pkt[i] = b;
            }
            if let Ok((_, len)) = parse(&pkt, 8) {
                prop_assert!(len <= pkt.len());
            }
        }

        #[test]
        fn written_long_headers_parse_back(
            dcid in proptest::collection::vec(any::<u8>(), 0..=20),
            scid in proptest::collection::vec(any::<u8>(), 0..=20),
            token in proptest::collection::vec(any::<u8>(), 0..100),
            pn in 0u64..(1 << 32),
            pn_len in 1usize..=4,
            payload in 0usize..1000,
            v2 in any::<bool>(),
        ) {
            let version = if v2 { VERSION_2 } else { VERSION_1 };
            let (dcid, scid) = (ConnectionId::new(&dcid).unwrap(), ConnectionId::new(&scid).unwrap());
            let mut buf = [0u8; 1500];
            let mut w = Writer::new(&mut buf);
            let layout = write_long(&mut w, LongType::Initial, version, &dcid, &scid, &token, pn, pn_len).unwrap();
            let end = layout.pn_offset + pn_len + payload;
            finish_long(&mut buf, &layout, end).unwrap();
            let (h, len) = parse(&buf, 0).unwrap();
            prop_assert_eq!(len, end);
            prop_assert_eq!(h, Header::Long {
                ty: LongType::Initial, version, dcid, scid, token: &token,
                pn_offset: layout.pn_offset, length: pn_len + payload,
            });
        }
    }
}
