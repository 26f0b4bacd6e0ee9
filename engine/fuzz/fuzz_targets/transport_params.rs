//! Transport-parameter decoding from either side; whatever decodes must survive an
//! encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::wire::transport_params::TransportParameters;
use quench::Side;

fuzz_target!(|data: &[u8]| {
    for sender in [Side::Client, Side::Server] {
        if let Ok(params) = TransportParameters::decode(data, sender) {
            let mut encoded = Vec::new();
            params.encode(&mut encoded);
            let again = TransportParameters::decode(&encoded, sender).expect("re-decode");
            assert_eq!(again, params);
        }
    }
});
