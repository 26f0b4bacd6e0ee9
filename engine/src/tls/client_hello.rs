//! Reading a client's QUIC transport parameters out of its ClientHello before rustls sees it.
//!
//! Compatible version negotiation (RFC 9368 §2.3) makes the server pick the connection's
//! version from the client's version_information, which travels in the ClientHello's
//! quic_transport_parameters extension (RFC 9001 §8.2). rustls fixes the QUIC version (its
//! HKDF labels) and our own transport parameters (which name the chosen version) when its
//! connection is made, and answers the ClientHello as soon as it is read, so the server
//! must find the extension first. This is a bounds-checked walk of RFC 8446 §4.1.2; every
//! field is validated again by rustls afterwards.
use crate::wire::varint::Reader;

/// TLS handshake message type of a ClientHello (RFC 8446 §4).
const CLIENT_HELLO: u8 = 1;
/// The quic_transport_parameters extension (RFC 9001 §8.2).
const QUIC_TRANSPORT_PARAMETERS: u16 = 0x39;
/// A ClientHello larger than this is not waited for: the server answers it in the client's
/// version. Real ones are 250 bytes to ~2 KiB (with post-quantum key shares).
pub const MAX_PEEKED_HELLO: usize = 16 * 1024;

/// What the start of the client's Initial CRYPTO stream says.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloPeek<'a> {
    /// The ClientHello is not complete yet.
    Incomplete,
    /// Not a well-formed ClientHello within `MAX_PEEKED_HELLO`: leave it to rustls.
    Unusable,
    /// A complete ClientHello: its transport parameters extension, if it has one.
    Complete {
        transport_parameters: Option<&'a [u8]>,
    },
}

/// Looks at the first bytes of a client's Initial CRYPTO stream.
pub fn peek(stream: &[u8]) -> HelloPeek<'_> {
    if stream.len() < 4 {
        return HelloPeek::Incomplete;
    }
    if stream[0] != CLIENT_HELLO {
        return HelloPeek::Unusable;
    }
    let len = u32::from_be_bytes([0, stream[1], stream[2], stream[3]]) as usize;
    if 4 + len > MAX_PEEKED_HELLO {
        return HelloPeek::Unusable;
    }
    let Some(body) = stream.get(4..4 + len) else {
        return HelloPeek::Incomplete;
    };
    match transport_parameters(body) {
        Some(transport_parameters) => HelloPeek::Complete {
            transport_parameters,
        },
        None => HelloPeek::Unusable,
    }
}

/// The quic_transport_parameters extension of a ClientHello body; `None` if it is malformed.
fn transport_parameters(body: &[u8]) -> Option<Option<&[u8]>> {
    let mut r = Reader::new(body);
    r.skip(2 + 32).ok()?; // legacy_version, random
    let session_id = r.u8().ok()?;
    r.skip(usize::from(session_id)).ok()?;
    let suites = r.u16().ok()?;
    r.skip(usize::from(suites)).ok()?;
    let compression = r.u8().ok()?;
    r.skip(usize::from(compression)).ok()?;
    let extensions_len = r.u16().ok()?;
    let mut extensions = Reader::new(r.bytes(usize::from(extensions_len)).ok()?);
    if !r.is_empty() {
        return None;
    }
    let mut found = None;
    while !extensions.is_empty() {
        let ty = extensions.u16().ok()?;
        let len = extensions.u16().ok()?;
        let data = extensions.bytes(usize::from(len)).ok()?;
        if ty == QUIC_TRANSPORT_PARAMETERS {
            if found.is_some() {
                return None; // RFC 8446 §4.2: one extension of a type
            }
            found = Some(data);
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello with the given extensions (type, data).
    fn hello(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (ty, data) in extensions {
            ext.extend_from_slice(&ty.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn finds_the_transport_parameters_once_the_hello_is_whole() {
        let tp: &[u8] = &[0x11, 8, 0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf];
        let msg = hello(&[(0, b"\0\x05\0\0\x02hi"), (0x39, tp), (43, &[2, 3, 4])]);
        for cut in 0..msg.len() {
            assert_eq!(peek(&msg[..cut]), HelloPeek::Incomplete, "cut at {cut}");
        }
        let want = HelloPeek::Complete {
            transport_parameters: Some(tp),
        };
        assert_eq!(peek(&msg), want);
        // Bytes after the ClientHello (none are expected) do not matter.
        let mut longer = msg.clone();
        longer.extend_from_slice(&[0xff; 10]);
        assert_eq!(peek(&longer), want);
        assert_eq!(
            peek(&hello(&[(43, &[2, 3, 4])])),
            HelloPeek::Complete {
                transport_parameters: None
            }
        );
    }

    #[test]
    fn malformed_or_oversized_hellos_are_left_to_rustls() {
        // Another handshake message.
        assert_eq!(peek(&[2, 0, 0, 1, 0]), HelloPeek::Unusable);
        // Declared larger than we wait for.
        assert_eq!(peek(&[1, 0, 0x40, 0]), HelloPeek::Unusable);
        // Two transport parameter extensions.
        let twice = hello(&[(0x39, &[1]), (0x39, &[2])]);
        assert_eq!(peek(&twice), HelloPeek::Unusable);
        // An extension running past the extensions block.
        let mut bad = hello(&[(0x39, &[1, 2, 3])]);
        let n = bad.len();
        bad[n - 4] = 9; // its length
        assert_eq!(peek(&bad), HelloPeek::Unusable);
        // A body shorter than its fixed fields.
        assert_eq!(peek(&[1, 0, 0, 3, 3, 3, 0]), HelloPeek::Unusable);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = peek(&bytes);
            let mut msg = vec![CLIENT_HELLO, 0];
            msg.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            msg.extend_from_slice(&bytes);
            let _ = peek(&msg);
        }
    }
}
