//! Transport parameters (RFC 9000 §18, §7.4), with `version_information` (RFC 9368 §3),
//! `max_datagram_frame_size` (RFC 9221 §3) and `grease_quic_bit` (RFC 9287 §3).
//!
//! Decoded once per handshake, so plain owned types; unknown (grease) ids are skipped.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::cid::ConnectionId;
use super::error::TransportError;
use super::varint::{varint_len, Reader, Writer, MAX_VARINT};
use crate::Side;

/// Transport parameter ids (RFC 9000 §18.2 and the extensions above).
pub mod ids {
    pub const ORIGINAL_DESTINATION_CONNECTION_ID: u64 = 0x00;
    pub const MAX_IDLE_TIMEOUT: u64 = 0x01;
    pub const STATELESS_RESET_TOKEN: u64 = 0x02;
    pub const MAX_UDP_PAYLOAD_SIZE: u64 = 0x03;
    pub const INITIAL_MAX_DATA: u64 = 0x04;
    pub const INITIAL_MAX_STREAM_DATA_BIDI_LOCAL: u64 = 0x05;
    pub const INITIAL_MAX_STREAM_DATA_BIDI_REMOTE: u64 = 0x06;
    pub const INITIAL_MAX_STREAM_DATA_UNI: u64 = 0x07;
    pub const INITIAL_MAX_STREAMS_BIDI: u64 = 0x08;
    pub const INITIAL_MAX_STREAMS_UNI: u64 = 0x09;
    pub const ACK_DELAY_EXPONENT: u64 = 0x0a;
    pub const MAX_ACK_DELAY: u64 = 0x0b;
    pub const DISABLE_ACTIVE_MIGRATION: u64 = 0x0c;
    pub const PREFERRED_ADDRESS: u64 = 0x0d;
    pub const ACTIVE_CONNECTION_ID_LIMIT: u64 = 0x0e;
    pub const INITIAL_SOURCE_CONNECTION_ID: u64 = 0x0f;
    pub const RETRY_SOURCE_CONNECTION_ID: u64 = 0x10;
    pub const VERSION_INFORMATION: u64 = 0x11;
    pub const MAX_DATAGRAM_FRAME_SIZE: u64 = 0x20;
    pub const GREASE_QUIC_BIT: u64 = 0x2ab2;
}

/// Smallest max_udp_payload_size a peer may announce (RFC 9000 §18.2).
pub const MIN_UDP_PAYLOAD_SIZE: u64 = 1200;
/// Largest ack_delay_exponent (RFC 9000 §18.2).
pub const MAX_ACK_DELAY_EXPONENT: u64 = 20;
/// max_ack_delay must be below 2^14 ms (RFC 9000 §18.2).
pub const MAX_ACK_DELAY_LIMIT: u64 = 1 << 14;
/// Largest initial_max_streams_* (RFC 9000 §18.2).
pub const MAX_STREAMS_LIMIT: u64 = 1 << 60;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferredAddress {
    pub ipv4: Option<SocketAddrV4>,
    pub ipv6: Option<SocketAddrV6>,
    pub cid: ConnectionId,
    pub reset_token: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInformation {
    pub chosen: u32,
    pub available: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportParameters {
    pub original_destination_connection_id: Option<ConnectionId>,
    /// Milliseconds; 0 disables the idle timeout.
    pub max_idle_timeout: u64,
    pub stateless_reset_token: Option<[u8; 16]>,
    pub max_udp_payload_size: u64,
    pub initial_max_data: u64,
    pub initial_max_stream_data_bidi_local: u64,
    pub initial_max_stream_data_bidi_remote: u64,
    pub initial_max_stream_data_uni: u64,
    pub initial_max_streams_bidi: u64,
    pub initial_max_streams_uni: u64,
    pub ack_delay_exponent: u64,
    /// Milliseconds.
    pub max_ack_delay: u64,
    pub disable_active_migration: bool,
    pub preferred_address: Option<PreferredAddress>,
    pub active_connection_id_limit: u64,
    pub initial_source_connection_id: Option<ConnectionId>,
    pub retry_source_connection_id: Option<ConnectionId>,
    pub max_datagram_frame_size: Option<u64>,
    pub grease_quic_bit: bool,
    pub version_information: Option<VersionInformation>,
}

impl Default for TransportParameters {
    /// The values a peer gets when a parameter is absent (RFC 9000 §18.2).
    fn default() -> Self {
        Self {
            original_destination_connection_id: None,
            max_idle_timeout: 0,
            stateless_reset_token: None,
            max_udp_payload_size: 65527,
            initial_max_data: 0,
            initial_max_stream_data_bidi_local: 0,
            initial_max_stream_data_bidi_remote: 0,
            initial_max_stream_data_uni: 0,
            initial_max_streams_bidi: 0,
            initial_max_streams_uni: 0,
            ack_delay_exponent: 3,
            max_ack_delay: 25,
            disable_active_migration: false,
            preferred_address: None,
            active_connection_id_limit: 2,
            initial_source_connection_id: None,
            retry_source_connection_id: None,
            max_datagram_frame_size: None,
            grease_quic_bit: false,
            version_information: None,
        }
    }
}

/// Appends varints and byte strings to a `Vec` through the slice [`Writer`].
struct VecWriter<'a>(&'a mut Vec<u8>);

impl VecWriter<'_> {
    /// Values above 2^62-1 cannot be sent; they are clamped (no parameter allows them).
    fn varint(&mut self, v: u64) {
        let v = v.min(MAX_VARINT);
        let mut buf = [0u8; 8];
        let mut w = Writer::new(&mut buf);
        if w.put_varint(v).is_ok() {
            let n = w.len();
            self.0.extend_from_slice(&buf[..n]);
        }
    }

    fn param(&mut self, id: u64, value: &[u8]) {
        self.varint(id);
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value);
    }

    fn int_param(&mut self, id: u64, v: u64) {
        let v = v.min(MAX_VARINT);
        self.varint(id);
        self.varint(varint_len(v) as u64);
        self.varint(v);
    }
}

impl TransportParameters {
    /// Appends the encoded parameters to `out`. Integers equal to their default are
    /// left out (the peer assumes the default); everything set is written.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use ids::*;
        let defaults = Self::default();
        let mut w = VecWriter(out);
        if let Some(cid) = &self.original_destination_connection_id {
            w.param(ORIGINAL_DESTINATION_CONNECTION_ID, cid);
        }
        let ints = [
            (
                MAX_IDLE_TIMEOUT,
                self.max_idle_timeout,
                defaults.max_idle_timeout,
            ),
            (
                MAX_UDP_PAYLOAD_SIZE,
                self.max_udp_payload_size,
                defaults.max_udp_payload_size,
            ),
            (INITIAL_MAX_DATA, self.initial_max_data, 0),
            (
                INITIAL_MAX_STREAM_DATA_BIDI_LOCAL,
                self.initial_max_stream_data_bidi_local,
                0,
            ),
            (
                INITIAL_MAX_STREAM_DATA_BIDI_REMOTE,
                self.initial_max_stream_data_bidi_remote,
                0,
            ),
            (
                INITIAL_MAX_STREAM_DATA_UNI,
                self.initial_max_stream_data_uni,
                0,
            ),
            (INITIAL_MAX_STREAMS_BIDI, self.initial_max_streams_bidi, 0),
            (INITIAL_MAX_STREAMS_UNI, self.initial_max_streams_uni, 0),
            (
                ACK_DELAY_EXPONENT,
                self.ack_delay_exponent,
                defaults.ack_delay_exponent,
            ),
            (MAX_ACK_DELAY, self.max_ack_delay, defaults.max_ack_delay),
            (
                ACTIVE_CONNECTION_ID_LIMIT,
                self.active_connection_id_limit,
                defaults.active_connection_id_limit,
            ),
        ];
        for (id, value, default) in ints {
            if value != default {
                w.int_param(id, value);
            }
        }
        if let Some(token) = &self.stateless_reset_token {
            w.param(STATELESS_RESET_TOKEN, token);
        }
        if self.disable_active_migration {
            w.param(DISABLE_ACTIVE_MIGRATION, &[]);
        }
        if let Some(pa) = &self.preferred_address {
            w.param(PREFERRED_ADDRESS, &encode_preferred_address(pa));
        }
        if let Some(cid) = &self.initial_source_connection_id {
            w.param(INITIAL_SOURCE_CONNECTION_ID, cid);
        }
        if let Some(cid) = &self.retry_source_connection_id {
            w.param(RETRY_SOURCE_CONNECTION_ID, cid);
        }
        if let Some(size) = self.max_datagram_frame_size {
            w.int_param(MAX_DATAGRAM_FRAME_SIZE, size);
        }
        if self.grease_quic_bit {
            w.param(GREASE_QUIC_BIT, &[]);
        }
        if let Some(vi) = &self.version_information {
            let mut value = Vec::with_capacity(4 * (1 + vi.available.len()));
            value.extend_from_slice(&vi.chosen.to_be_bytes());
            for v in &vi.available {
                value.extend_from_slice(&v.to_be_bytes());
            }
            w.param(VERSION_INFORMATION, &value);
        }
    }

    /// Decodes and validates parameters sent by `sender`. Any violation is a
    /// TRANSPORT_PARAMETER_ERROR (RFC 9000 §7.4, §18.2); unknown ids are ignored.
    pub fn decode(buf: &[u8], sender: Side) -> Result<Self, TransportError> {
        use ids::*;
        let mut params = Self::default();
        let mut seen = 0u32;
        let mut r = Reader::new(buf);
        while !r.is_empty() {
            let id = r.varint().map_err(|_| malformed())?;
            let len = r.varint().map_err(|_| malformed())?;
            let len = usize::try_from(len).map_err(|_| malformed())?;
            let value = r.bytes(len).map_err(|_| malformed())?;
            let Some(bit) = seen_bit(id) else {
                continue; // unknown or grease (RFC 9000 §18.1)
            };
            if seen & bit != 0 {
                return Err(err("duplicate transport parameter"));
            }
            seen |= bit;
            // RFC 9000 §18.2: these may only come from a server.
            let server_only = matches!(
                id,
                ORIGINAL_DESTINATION_CONNECTION_ID
                    | PREFERRED_ADDRESS
                    | RETRY_SOURCE_CONNECTION_ID
                    | STATELESS_RESET_TOKEN
            );
            if server_only && sender == Side::Client {
                return Err(err("server-only transport parameter from client"));
            }
            params.apply(id, value, sender)?;
        }
        // RFC 9000 §7.3: both ends send initial_source_connection_id; the server also
        // sends original_destination_connection_id.
        if params.initial_source_connection_id.is_none() {
            return Err(err("missing initial_source_connection_id"));
        }
        if sender == Side::Server && params.original_destination_connection_id.is_none() {
            return Err(err("missing original_destination_connection_id"));
        }
        Ok(params)
    }

    fn apply(&mut self, id: u64, value: &[u8], sender: Side) -> Result<(), TransportError> {
        use ids::*;
        match id {
            ORIGINAL_DESTINATION_CONNECTION_ID => {
                self.original_destination_connection_id = Some(cid(value)?)
            }
            MAX_IDLE_TIMEOUT => self.max_idle_timeout = int(value)?,
            STATELESS_RESET_TOKEN => {
                let token = value
                    .try_into()
                    .map_err(|_| err("bad stateless_reset_token"))?;
                self.stateless_reset_token = Some(token);
            }
            MAX_UDP_PAYLOAD_SIZE => {
                self.max_udp_payload_size = int(value)?;
                if self.max_udp_payload_size < MIN_UDP_PAYLOAD_SIZE {
                    return Err(err("max_udp_payload_size below 1200"));
                }
            }
            INITIAL_MAX_DATA => self.initial_max_data = int(value)?,
            INITIAL_MAX_STREAM_DATA_BIDI_LOCAL => {
                self.initial_max_stream_data_bidi_local = int(value)?
            }
            INITIAL_MAX_STREAM_DATA_BIDI_REMOTE => {
                self.initial_max_stream_data_bidi_remote = int(value)?
            }
            INITIAL_MAX_STREAM_DATA_UNI => self.initial_max_stream_data_uni = int(value)?,
            INITIAL_MAX_STREAMS_BIDI | INITIAL_MAX_STREAMS_UNI => {
                let n = int(value)?;
                if n > MAX_STREAMS_LIMIT {
                    return Err(err("initial_max_streams above 2^60"));
                }
                if id == INITIAL_MAX_STREAMS_BIDI {
                    self.initial_max_streams_bidi = n;
                } else {
                    self.initial_max_streams_uni = n;
                }
            }
            ACK_DELAY_EXPONENT => {
                self.ack_delay_exponent = int(value)?;
                if self.ack_delay_exponent > MAX_ACK_DELAY_EXPONENT {
                    return Err(err("ack_delay_exponent above 20"));
                }
            }
            MAX_ACK_DELAY => {
                self.max_ack_delay = int(value)?;
                if self.max_ack_delay >= MAX_ACK_DELAY_LIMIT {
                    return Err(err("max_ack_delay of 2^14 or more"));
                }
            }
            DISABLE_ACTIVE_MIGRATION => self.disable_active_migration = flag(value)?,
            PREFERRED_ADDRESS => self.preferred_address = Some(decode_preferred_address(value)?),
            ACTIVE_CONNECTION_ID_LIMIT => {
                self.active_connection_id_limit = int(value)?;
                if self.active_connection_id_limit < 2 {
                    return Err(err("active_connection_id_limit below 2"));
                }
            }
            INITIAL_SOURCE_CONNECTION_ID => self.initial_source_connection_id = Some(cid(value)?),
            RETRY_SOURCE_CONNECTION_ID => self.retry_source_connection_id = Some(cid(value)?),
            MAX_DATAGRAM_FRAME_SIZE => self.max_datagram_frame_size = Some(int(value)?),
            GREASE_QUIC_BIT => self.grease_quic_bit = flag(value)?,
            VERSION_INFORMATION => {
                self.version_information = Some(decode_version_information(value, sender)?)
            }
            _ => {}
        }
        Ok(())
    }
}

/// A bit per known id, to detect duplicates without allocating; `None` if unknown.
fn seen_bit(id: u64) -> Option<u32> {
    let index = match id {
        0x00..=ids::VERSION_INFORMATION => id as u32,
        ids::MAX_DATAGRAM_FRAME_SIZE => 18,
        ids::GREASE_QUIC_BIT => 19,
        _ => return None,
    };
    Some(1 << index)
}

fn err(reason: &'static str) -> TransportError {
    TransportError::transport_parameter(reason)
}

fn malformed() -> TransportError {
    err("malformed transport parameters")
}

/// An integer parameter: exactly one varint filling the value.
fn int(value: &[u8]) -> Result<u64, TransportError> {
    let mut r = Reader::new(value);
    let v = r.varint().map_err(|_| err("bad integer parameter"))?;
    if !r.is_empty() {
        return Err(err("bad integer parameter"));
    }
    Ok(v)
}

/// A zero-length flag parameter.
fn flag(value: &[u8]) -> Result<bool, TransportError> {
    if value.is_empty() {
        Ok(true)
    } else {
        Err(err("flag parameter with a value"))
    }
}

fn cid(value: &[u8]) -> Result<ConnectionId, TransportError> {
    ConnectionId::new(value).map_err(|_| err("connection id too long"))
}

/// RFC 9000 §18.2 Figure 22. An all-zero address and port means "no address of this
/// family".
fn decode_preferred_address(value: &[u8]) -> Result<PreferredAddress, TransportError> {
    let bad = |_| err("bad preferred_address");
    let mut r = Reader::new(value);
    let ip4 = Ipv4Addr::from(r.array::<4>().map_err(bad)?);
    let port4 = r.u16().map_err(bad)?;
    let ip6 = Ipv6Addr::from(r.array::<16>().map_err(bad)?);
    let port6 = r.u16().map_err(bad)?;
    let cid_len = usize::from(r.u8().map_err(bad)?);
    let cid_bytes = r.bytes(cid_len).map_err(bad)?;
    let reset_token = r.array().map_err(bad)?;
    if !r.is_empty() {
        return Err(err("bad preferred_address"));
    }
    // RFC 9000 §18.2: a zero-length connection ID here is a TRANSPORT_PARAMETER_ERROR.
    if cid_bytes.is_empty() {
        return Err(err("preferred_address with empty connection id"));
    }
    Ok(PreferredAddress {
        ipv4: (!ip4.is_unspecified() || port4 != 0).then(|| SocketAddrV4::new(ip4, port4)),
        ipv6: (!ip6.is_unspecified() || port6 != 0).then(|| SocketAddrV6::new(ip6, port6, 0, 0)),
        cid: cid(cid_bytes)?,
        reset_token,
    })
}

fn encode_preferred_address(pa: &PreferredAddress) -> Vec<u8> {
    let v4 = pa
        .ipv4
        .unwrap_or_else(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let v6 = pa
        .ipv6
        .unwrap_or_else(|| SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    let mut out = Vec::with_capacity(4 + 2 + 16 + 2 + 1 + pa.cid.len() + 16);
    out.extend_from_slice(&v4.ip().octets());
    out.extend_from_slice(&v4.port().to_be_bytes());
    out.extend_from_slice(&v6.ip().octets());
    out.extend_from_slice(&v6.port().to_be_bytes());
    out.push(pa.cid.len() as u8);
    out.extend_from_slice(&pa.cid);
    out.extend_from_slice(&pa.reset_token);
    out
}

/// A client's version_information (RFC 9368 §3) found without decoding the rest, for a
/// server choosing the connection's version before its TLS session exists (compatible
/// version negotiation, §2.3). `None` when it is absent or the parameters are malformed: the
/// full `TransportParameters::decode` later closes the connection for the latter.
pub fn peek_version_information(buf: &[u8]) -> Option<VersionInformation> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let id = r.varint().ok()?;
        let len = usize::try_from(r.varint().ok()?).ok()?;
        let value = r.bytes(len).ok()?;
        if id == ids::VERSION_INFORMATION {
            return decode_version_information(value, Side::Client).ok();
        }
    }
    None
}

/// RFC 9368 §3: Chosen Version then Available Versions, 4 bytes each, none zero; a
/// client's chosen version must be among its available ones.
fn decode_version_information(
    value: &[u8],
    sender: Side,
) -> Result<VersionInformation, TransportError> {
    if value.is_empty() || !value.len().is_multiple_of(4) {
        return Err(err("bad version_information length"));
    }
    let mut versions = value
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    let chosen = versions.next().unwrap_or(0);
    let available: Vec<u32> = versions.collect();
    if chosen == 0 || available.contains(&0) {
        return Err(err("zero version in version_information"));
    }
    if sender == Side::Client && !available.contains(&chosen) {
        return Err(err("chosen version not among available versions"));
    }
    Ok(VersionInformation { chosen, available })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::error::TransportErrorCode;
    use proptest::prelude::*;

    fn cid(b: &[u8]) -> ConnectionId {
        ConnectionId::new(b).unwrap()
    }

    fn client_params() -> TransportParameters {
        TransportParameters {
            initial_source_connection_id: Some(cid(&[1, 2, 3, 4])),
            ..Default::default()
        }
    }

    fn server_params() -> TransportParameters {
        TransportParameters {
            original_destination_connection_id: Some(cid(&[9; 8])),
            initial_source_connection_id: Some(cid(&[])),
            ..Default::default()
        }
    }

    fn full_server_params() -> TransportParameters {
        TransportParameters {
            original_destination_connection_id: Some(cid(&[0x83; 8])),
            max_idle_timeout: 30_000,
            stateless_reset_token: Some([0x5e; 16]),
            max_udp_payload_size: 1472,
            initial_max_data: 10 << 20,
            initial_max_stream_data_bidi_local: 1 << 20,
            initial_max_stream_data_bidi_remote: 2 << 20,
            initial_max_stream_data_uni: 3 << 20,
            initial_max_streams_bidi: 100,
            initial_max_streams_uni: MAX_STREAMS_LIMIT,
            ack_delay_exponent: 20,
            max_ack_delay: MAX_ACK_DELAY_LIMIT - 1,
            disable_active_migration: true,
            preferred_address: Some(PreferredAddress {
                ipv4: Some(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4433)),
                ipv6: Some(SocketAddrV6::new(
                    "2001:db8::1".parse().unwrap(),
                    4434,
                    0,
                    0,
                )),
                cid: cid(&[0xaa; 20]),
                reset_token: [0x77; 16],
            }),
            active_connection_id_limit: 8,
            initial_source_connection_id: Some(cid(&[0x11; 20])),
            retry_source_connection_id: Some(cid(&[0x22; 5])),
            max_datagram_frame_size: Some(65535),
            grease_quic_bit: true,
            version_information: Some(VersionInformation {
                chosen: 1,
                available: vec![0x6b33_43cf, 1],
            }),
        }
    }

    fn encode(p: &TransportParameters) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&mut out);
        out
    }

    fn reject(buf: &[u8], sender: Side) -> TransportError {
        let e = TransportParameters::decode(buf, sender).unwrap_err();
        assert_eq!(e.code, TransportErrorCode::TRANSPORT_PARAMETER_ERROR, "{e}");
        e
    }

    /// `base` (valid for `sender`) plus one raw parameter.
    fn with_param(base: &TransportParameters, id: u64, value: &[u8]) -> Vec<u8> {
        let mut out = encode(base);
        VecWriter(&mut out).param(id, value);
        out
    }

    #[test]
    fn version_information_is_found_without_decoding_the_rest() {
        let c = client_params();
        let vi = [0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf, 0, 0, 0, 1];
        let found = peek_version_information(&with_param(&c, ids::VERSION_INFORMATION, &vi));
        assert_eq!(
            found,
            Some(VersionInformation {
                chosen: 1,
                available: vec![0x6b33_43cf, 1]
            })
        );
        assert_eq!(peek_version_information(&encode(&c)), None);
        // Malformed: the chosen version not available; a value running past the end.
        let bad = with_param(&c, ids::VERSION_INFORMATION, &[0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(peek_version_information(&bad), None);
        assert_eq!(peek_version_information(&[0x11, 9, 0, 0, 0, 1]), None);
    }

    #[test]
    fn defaults_match_rfc() {
        let d = TransportParameters::default();
        assert_eq!(d.max_udp_payload_size, 65527);
        assert_eq!(d.ack_delay_exponent, 3);
        assert_eq!(d.max_ack_delay, 25);
        assert_eq!(d.active_connection_id_limit, 2);
        assert_eq!(d.initial_max_data, 0);
        assert_eq!(d.max_datagram_frame_size, None);
        // Defaults are not sent: a client's minimal set is just its source CID.
        assert_eq!(encode(&client_params()), [0x0f, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn every_parameter_round_trips() {
        let full = full_server_params();
        assert_eq!(
            TransportParameters::decode(&encode(&full), Side::Server).unwrap(),
            full
        );
        let client = TransportParameters {
            max_idle_timeout: 1,
            initial_max_data: MAX_VARINT,
            initial_max_streams_bidi: 0,
            ack_delay_exponent: 0,
            max_ack_delay: 0,
            max_udp_payload_size: MIN_UDP_PAYLOAD_SIZE,
            active_connection_id_limit: 2,
            max_datagram_frame_size: Some(0),
            version_information: Some(VersionInformation {
                chosen: 1,
                available: vec![1],
            }),
            ..client_params()
        };
        assert_eq!(
            TransportParameters::decode(&encode(&client), Side::Client).unwrap(),
            client
        );
    }

    #[test]
    fn preferred_address_single_family() {
        let mut p = full_server_params();
        if let Some(pa) = p.preferred_address.as_mut() {
            pa.ipv6 = None;
        }
        assert_eq!(
            TransportParameters::decode(&encode(&p), Side::Server).unwrap(),
            p
        );
        if let Some(pa) = p.preferred_address.as_mut() {
            pa.ipv4 = None;
            pa.ipv6 = Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 443, 0, 0));
        }
        assert_eq!(
            TransportParameters::decode(&encode(&p), Side::Server).unwrap(),
            p
        );
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        // Reserved ids 31 * N + 27 (RFC 9000 §18.1), and an unassigned one.
        let mut buf = with_param(&client_params(), 31 * 7 + 27, b"grease");
        VecWriter(&mut buf).param(0x3fff, &[]);
        assert_eq!(
            TransportParameters::decode(&buf, Side::Client).unwrap(),
            client_params()
        );
    }

    #[test]
    fn validation_rules_reject() {
        use ids::*;
        let c = client_params();
        let s = server_params();
        // Duplicates.
        let mut dup = with_param(&c, MAX_IDLE_TIMEOUT, &[5]);
        VecWriter(&mut dup).param(MAX_IDLE_TIMEOUT, &[6]);
        reject(&dup, Side::Client);
        reject(
            &with_param(&c, INITIAL_SOURCE_CONNECTION_ID, &[1]),
            Side::Client,
        );
        // Server-only parameters from a client.
        for (id, value) in [
            (ORIGINAL_DESTINATION_CONNECTION_ID, &[1u8; 8][..]),
            (STATELESS_RESET_TOKEN, &[0; 16][..]),
            (RETRY_SOURCE_CONNECTION_ID, &[1][..]),
            (
                PREFERRED_ADDRESS,
                &encode_preferred_address(full_server_params().preferred_address.as_ref().unwrap())
                    [..],
            ),
        ] {
            let e = reject(&with_param(&c, id, value), Side::Client);
            assert_eq!(e.reason, "server-only transport parameter from client");
            // ...which a server may send.
            let p = TransportParameters::decode(&with_param(&s, id, value), Side::Server);
            assert!(
                p.is_ok() || id == ORIGINAL_DESTINATION_CONNECTION_ID,
                "{id:#x}"
            );
        }
        // Bad lengths.
        reject(
            &with_param(&s, STATELESS_RESET_TOKEN, &[0; 15]),
            Side::Server,
        );
        reject(&with_param(&c, MAX_IDLE_TIMEOUT, &[]), Side::Client);
        reject(&with_param(&c, MAX_IDLE_TIMEOUT, &[5, 5]), Side::Client);
        reject(&with_param(&c, MAX_IDLE_TIMEOUT, &[0x40]), Side::Client);
        reject(
            &with_param(&c, DISABLE_ACTIVE_MIGRATION, &[0]),
            Side::Client,
        );
        reject(&with_param(&c, GREASE_QUIC_BIT, &[1]), Side::Client);
        reject(
            &with_param(&s, RETRY_SOURCE_CONNECTION_ID, &[0; 21]),
            Side::Server,
        );
        reject(&with_param(&s, PREFERRED_ADDRESS, &[0; 40]), Side::Server);
        // Out-of-range values.
        let varint = |v: u64| {
            let mut out = Vec::new();
            VecWriter(&mut out).varint(v);
            out
        };
        reject(
            &with_param(&c, ACK_DELAY_EXPONENT, &varint(21)),
            Side::Client,
        );
        reject(
            &with_param(&c, MAX_ACK_DELAY, &varint(1 << 14)),
            Side::Client,
        );
        reject(
            &with_param(&c, MAX_UDP_PAYLOAD_SIZE, &varint(1199)),
            Side::Client,
        );
        reject(
            &with_param(&c, ACTIVE_CONNECTION_ID_LIMIT, &varint(1)),
            Side::Client,
        );
        reject(
            &with_param(&c, ACTIVE_CONNECTION_ID_LIMIT, &varint(0)),
            Side::Client,
        );
        let over = varint(MAX_STREAMS_LIMIT + 1);
        reject(
            &with_param(&c, INITIAL_MAX_STREAMS_BIDI, &over),
            Side::Client,
        );
        reject(
            &with_param(&c, INITIAL_MAX_STREAMS_UNI, &over),
            Side::Client,
        );
        // Preferred address with an empty connection id.
        let mut pa =
            encode_preferred_address(full_server_params().preferred_address.as_ref().unwrap());
        pa.drain(25..45);
        pa[24] = 0;
        let e = reject(&with_param(&s, PREFERRED_ADDRESS, &pa), Side::Server);
        assert_eq!(e.reason, "preferred_address with empty connection id");
        // Version information: empty, ragged, zero versions, chosen not available.
        reject(&with_param(&c, VERSION_INFORMATION, &[]), Side::Client);
        reject(
            &with_param(&c, VERSION_INFORMATION, &[0, 0, 0, 1, 0]),
            Side::Client,
        );
        reject(
            &with_param(&c, VERSION_INFORMATION, &[0, 0, 0, 0, 0, 0, 0, 0]),
            Side::Client,
        );
        reject(
            &with_param(&c, VERSION_INFORMATION, &[0, 0, 0, 1, 0, 0, 0, 0]),
            Side::Client,
        );
        reject(
            &with_param(&c, VERSION_INFORMATION, &[0, 0, 0, 1, 0, 0, 0, 2]),
            Side::Client,
        );
        // ...a server's chosen version need not be in its list.
        let vi = with_param(&s, VERSION_INFORMATION, &[0, 0, 0, 1, 0, 0, 0, 2]);
        assert!(TransportParameters::decode(&vi, Side::Server).is_ok());
        // Missing connection ids (RFC 9000 §7.3).
        let e = reject(&[], Side::Client);
        assert_eq!(e.reason, "missing initial_source_connection_id");
        let no_odcid = encode(&TransportParameters {
            original_destination_connection_id: None,
            ..server_params()
        });
        let e = reject(&no_odcid, Side::Server);
        assert_eq!(e.reason, "missing original_destination_connection_id");
        // Cut anywhere inside the last parameter (version_information, 2 + 12 bytes).
        let full = encode(&full_server_params());
        assert!(TransportParameters::decode(&full, Side::Server).is_ok());
        for cut in full.len() - 13..full.len() {
            let e = reject(&full[..cut], Side::Server);
            assert_eq!(e.reason, "malformed transport parameters");
        }
    }

    fn arb_cid() -> impl Strategy<Value = ConnectionId> {
        proptest::collection::vec(any::<u8>(), 0..=20).prop_map(|b| cid(&b))
    }

    prop_compose! {
        fn arb_params()(
            idle in 0..=MAX_VARINT,
            udp in MIN_UDP_PAYLOAD_SIZE..=MAX_VARINT,
            data in proptest::array::uniform6(0..=MAX_VARINT),
            streams in (0..=MAX_STREAMS_LIMIT, 0..=MAX_STREAMS_LIMIT),
            ack in (0..=MAX_ACK_DELAY_EXPONENT, 0..MAX_ACK_DELAY_LIMIT),
            flags in any::<(bool, bool)>(),
            limit in 2..=MAX_VARINT,
            scid in arb_cid(),
            dgram in proptest::option::of(0..=MAX_VARINT),
        ) -> TransportParameters {
            TransportParameters {
                max_idle_timeout: idle,
                max_udp_payload_size: udp,
                initial_max_data: data[0],
                initial_max_stream_data_bidi_local: data[1],
                initial_max_stream_data_bidi_remote: data[2],
                initial_max_stream_data_uni: data[3],
                initial_max_streams_bidi: streams.0,
                initial_max_streams_uni: streams.1,
                ack_delay_exponent: ack.0,
                max_ack_delay: ack.1,
                disable_active_migration: flags.0,
                grease_quic_bit: flags.1,
                active_connection_id_limit: limit,
                initial_source_connection_id: Some(scid),
                max_datagram_frame_size: dgram,
                ..Default::default()
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TransportParameters::decode(&bytes, Side::Client);
            let _ = TransportParameters::decode(&bytes, Side::Server);
        }

        #[test]
        fn arbitrary_params_round_trip(p in arb_params(), odcid in arb_cid()) {
            prop_assert_eq!(&TransportParameters::decode(&encode(&p), Side::Client).unwrap(), &p);
            let server = TransportParameters { original_destination_connection_id: Some(odcid), ..p };
            prop_assert_eq!(&TransportParameters::decode(&encode(&server), Side::Server).unwrap(), &server);
        }
    }
}
