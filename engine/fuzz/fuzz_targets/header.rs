//! Header parsing over a whole datagram: walk the coalesced packets like the endpoint
//! does, and steer it like a worker does. The first input byte picks our short-header CID
//! length and the worker count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::wire::header::{parse, peek_dcid};
use quench::wire::steer::{foreign_owner, CidLayout};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut datagram)) = data.split_first() else {
        return;
    };
    let short_dcid_len = usize::from(selector % 21);
    // Steering never names a worker that does not exist, whatever the bytes say.
    let layout = CidLayout::default();
    let n_workers = u32::from(selector % 7) + 1;
    for me in 0..n_workers {
        if let Some(w) = foreign_owner(datagram, &layout, n_workers, me) {
            assert!(
                w < n_workers && w != me,
                "steered to worker {w} of {n_workers}"
            );
        }
    }
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
