//! The server's look into a client's first CRYPTO bytes for compatible version negotiation
//! (RFC 9368 §2.3): the ClientHello walk and the version_information scan must never
//! panic, never read past what they were given, and agree with the full parameter decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::tls::client_hello::{peek, HelloPeek, MAX_PEEKED_HELLO};
use quench::wire::transport_params::{peek_version_information, TransportParameters};
use quench::Side;

fuzz_target!(|data: &[u8]| {
    // The input as the start of a CRYPTO stream, and as a ClientHello body.
    let mut framed = vec![1, 0];
    framed.extend_from_slice(&(data.len().min(u16::MAX as usize) as u16).to_be_bytes());
    framed.extend_from_slice(&data[..data.len().min(u16::MAX as usize)]);
    for stream in [data, &framed[..]] {
        if let HelloPeek::Complete {
            transport_parameters: Some(tp),
        } = peek(stream)
        {
            assert!(stream.len() >= 4 && tp.len() < MAX_PEEKED_HELLO);
            check_version_information(tp);
        }
    }
    check_version_information(data);
});

/// What the scan finds is what the decoder finds, whenever the decoder accepts the lot.
fn check_version_information(tp: &[u8]) {
    let scanned = peek_version_information(tp);
    if let Ok(params) = TransportParameters::decode(tp, Side::Client) {
        assert_eq!(scanned, params.version_information);
    }
}
