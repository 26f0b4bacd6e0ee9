//! Header parsing over a whole datagram: walk the coalesced packets like the endpoint
//! does. The first input byte picks our short-header CID length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::wire::header::{parse, peek_dcid};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut datagram)) = data.split_first() else {
        return;
    };
    let short_dcid_len = usize::from(selector % 21);
    while !datagram.is_empty() {
        let Ok((header, len)) = parse(datagram, short_dcid_len) else {
            break;
        };
        assert!(
            len > 0 && len <= datagram.len(),
            "packet length out of bounds"
        );
        assert_eq!(
            peek_dcid(datagram, short_dcid_len).ok(),
            Some(header.dcid())
        );
        if let Some(pn_offset) = header.pn_offset() {
            assert!(pn_offset <= len, "packet number offset past the packet");
        }
        datagram = &datagram[len..];
    }
});
