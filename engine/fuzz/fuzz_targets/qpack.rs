//! QPACK (static table only): arbitrary bytes as a field section under a small size limit
//! and as encoder/decoder stream data; whatever decodes must re-encode and decode to the
//! same fields; and the same bytes, cut into fields, must round-trip encode → decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::app::h3::qpack::{
    decode_field_section, encode_field_section, read_decoder_stream, read_encoder_stream, Field,
};

/// Small enough that the limit is hit often.
const LIMIT: u64 = 512;

fn size(fields: &[Field]) -> u64 {
    fields
        .iter()
        .map(|f| (f.name.len() + f.value.len()) as u64 + 32)
        .sum()
}

fn round_trip(pairs: &[(&[u8], &[u8])]) -> Vec<Field> {
    let mut block = Vec::new();
    encode_field_section(pairs, &mut block);
    let decoded = decode_field_section(&block, u64::MAX).expect("our own encoding must decode");
    assert_eq!(decoded.len(), pairs.len());
    for (f, (n, v)) in decoded.iter().zip(pairs) {
        assert_eq!((&f.name[..], &f.value[..]), (*n, *v));
    }
    decoded
}

fuzz_target!(|data: &[u8]| {
    if let Ok(fields) = decode_field_section(data, LIMIT) {
        assert!(size(&fields) <= LIMIT);
        let pairs: Vec<(&[u8], &[u8])> =
            fields.iter().map(|f| (&f.name[..], &f.value[..])).collect();
        round_trip(&pairs);
    }
    if let Ok(n) = read_encoder_stream(data) {
        assert!(n <= data.len());
    }
    if let Ok(n) = read_decoder_stream(data) {
        assert!(n <= data.len());
    }

    // Cut the input into (name, value) pairs, each string led by a length byte.
    let mut pairs = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let (name, tail) = tail.split_at((n as usize).min(tail.len()));
        let Some((&m, tail)) = tail.split_first() else {
            break;
        };
        let (value, tail) = tail.split_at((m as usize).min(tail.len()));
        pairs.push((name, value));
        rest = tail;
    }
    round_trip(&pairs);
});
