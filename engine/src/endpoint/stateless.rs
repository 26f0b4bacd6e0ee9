//! Packets sent without a connection (RFC 9000 §5.2.2, §6, §8.1.2, §10.3): Version
//! Negotiation, Retry, stateless reset, and an Initial carrying CONNECTION_CLOSE to refuse.

use rand::{Rng, RngCore};

use crate::crypto::aead::TAG_LEN;
use crate::crypto::header_protection::{protect, unprotect};
use crate::crypto::retry::retry_integrity_tag;
use crate::crypto::secrets::{initial_keys, Keys};
use crate::wire::cid::ConnectionId;
use crate::wire::frame::Frame;
use crate::wire::header::{self, LongType, SUPPORTED_VERSIONS};
use crate::wire::varint::Writer;
use crate::Side;

/// Version Negotiation listing the versions we accept, `offered` (at most
/// `SUPPORTED_VERSIONS`; RFC 9000 §17.2.1). IDs are echoed swapped.
pub fn version_negotiation(
    buf: &mut [u8],
    client_dcid: &[u8],
    client_scid: &[u8],
    offered: &[u32],
) -> Option<usize> {
    let first = rand::thread_rng().gen::<u8>();
    // A greased version too, so clients don't ossify on the list (RFC 9000 §6.3).
    let grease = 0x0a0a_0a0a | (rand::thread_rng().gen::<u32>() & 0xf0f0_f0f0);
    let mut versions = [grease; SUPPORTED_VERSIONS.len() + 1];
    let n = offered.len().min(SUPPORTED_VERSIONS.len());
    versions[..n].copy_from_slice(&offered[..n]);
    header::write_version_negotiation(buf, client_scid, client_dcid, &versions[..=n], first).ok()
}

/// Retry (RFC 9000 §17.2.5) with its integrity tag (RFC 9001 §5.8).
pub fn retry(
    buf: &mut [u8],
    version: u32,
    client_scid: &ConnectionId,
    retry_scid: &ConnectionId,
    original_dcid: &[u8],
    token: &[u8],
) -> Option<usize> {
    let first = rand::thread_rng().gen::<u8>();
    let n = header::write_retry_without_tag(buf, version, client_scid, retry_scid, token, first)
        .ok()?;
    if buf.len() < n + 16 {
        return None;
    }
    let tag = retry_integrity_tag(version, original_dcid, &buf[..n]);
    buf[n..n + 16].copy_from_slice(&tag);
    Some(n + 16)
}

/// A stateless reset (RFC 9000 §10.3) of `len` bytes that looks like a short-header packet.
pub fn stateless_reset(buf: &mut [u8], token: &[u8; 16], len: usize) -> Option<usize> {
    // At least 5 unpredictable bytes before the token, and a fixed bit set (§10.3).
    if len < 21 || buf.len() < len {
        return None;
    }
    rand::thread_rng().fill_bytes(&mut buf[..len - 16]);
    buf[0] = 0x40 | (buf[0] & 0x3f);
    buf[len - 16..len].copy_from_slice(token);
    Some(len)
}

/// How big a reset to send in answer to a `received`-byte packet: smaller than it, so two
/// endpoints can never loop (§10.3.3), and not much bigger than needed.
pub fn reset_len_for(received: usize) -> Option<usize> {
    if received <= 21 {
        None
    } else {
        Some((received - 1).min(43))
    }
}

/// An Initial with CONNECTION_CLOSE, to refuse a connection without creating state (§5.2.2, §8.1.3).
pub fn initial_close(
    buf: &mut [u8],
    version: u32,
    client_dcid: &ConnectionId,
    client_scid: &ConnectionId,
    code: u64,
    reason: &str,
) -> Option<usize> {
    let keys = initial_keys(version, client_dcid, Side::Server);
    let pn = 0u64;
    let pn_len = 1;
    let mut w = Writer::new(buf);
    // Our SCID is arbitrary here; echoing the client's DCID is what it expects to see.
    let layout = header::write_long(
        &mut w,
        LongType::Initial,
        version,
        client_scid,
        client_dcid,
        &[],
        pn,
        pn_len,
    )
    .ok()?;
    let header_len = w.len();
    let frame = Frame::ConnectionClose {
        error_code: code,
        frame_type: Some(0),
        reason: reason.as_bytes(),
    };
    frame.encode(&mut w).ok()?;
    // Enough payload for the header-protection sample.
    while w.len() - layout.pn_offset < 4 {
        w.put_u8(0).ok()?;
    }
    let len = w.len() + TAG_LEN;
    if buf.len() < len {
        return None;
    }
    header::finish_long(&mut buf[..len], &layout, len).ok()?;
    keys.local
        .packet
        .seal_in_place(pn, &mut buf[..len], header_len)
        .ok()?;
    protect(
        &keys.local.header,
        &mut buf[..len],
        layout.pn_offset,
        pn_len,
    )
    .ok()?;
    Some(len)
}

/// Does the first packet of `datagram`, an Initial sent to `dcid`, decrypt under the
/// Initial keys that DCID implies (RFC 9001 §5.2)? If so, returns those keys (server side)
/// for the connection that will process it, so they are derived once. Works on a copy in
/// `scratch`, so the datagram stays intact for that connection.
pub fn initial_keys_if_genuine(
    version: u32,
    dcid: &ConnectionId,
    datagram: &[u8],
    scratch: &mut Vec<u8>,
) -> Option<Keys> {
    let Ok((header::Header::Long { pn_offset, .. }, packet_len)) = header::parse(datagram, 0)
    else {
        return None;
    };
    scratch.clear();
    scratch.extend_from_slice(&datagram[..packet_len]);
    // The client's packets are opened with the client's keys: ours as the server's remote.
    let keys = initial_keys(version, dcid, Side::Server);
    let (pn_len, truncated) = unprotect(&keys.remote.header, scratch, pn_offset).ok()?;
    let pn = crate::wire::packet_number::decode(truncated, pn_len, None);
    keys.remote
        .packet
        .open_in_place(pn, scratch, pn_offset + pn_len)
        .ok()?;
    Some(keys)
}
