//! Field-section and stream tests: RFC 9204 Appendix B.1, round trips, every error path.

use super::*;
use proptest::prelude::*;

fn field(name: &[u8], value: &[u8]) -> Field {
    Field {
        name: name.to_vec(),
        value: value.to_vec(),
    }
}

fn encode(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_field_section(fields, &mut out);
    out
}

fn decode_err(block: &[u8]) -> QpackError {
    decode_field_section(block, u64::MAX).unwrap_err()
}

#[test]
fn rfc9204_b1_literal_with_name_reference() {
    let block = [
        0x00, 0x00, 0x51, 0x0b, 0x2f, 0x69, 0x6e, 0x64, 0x65, 0x78, 0x2e, 0x68, 0x74, 0x6d, 0x6c,
    ];
    assert_eq!(
        decode_field_section(&block, 1000).unwrap(),
        [field(b":path", b"/index.html")]
    );
}

#[test]
fn encoder_picks_representations() {
    // Exact static pair → Indexed Field Line, T=1 (:method GET is 17).
    assert_eq!(encode(&[(b":method", b"GET")]), [0x00, 0x00, 0xc0 | 17]);
    // Name only → Literal with Name Reference; "/index.html" is 11 raw bytes and 8 in
    // Huffman (64 bits), so Huffman.
    let block = encode(&[(b":path", b"/index.html")]);
    assert_eq!(&block[..4], [0x00, 0x00, 0x51, 0x80 | 8]);
    // Unknown name → Literal with Literal Name; raw when Huffman is no shorter.
    let block = encode(&[(b"x", b"\x00")]);
    assert_eq!(block, [0x00, 0x00, 0x21, b'x', 0x01, 0x00]);
    // Static index 98 needs a continuation byte in a 6-bit prefix.
    assert_eq!(
        encode(&[(b"x-frame-options", b"sameorigin")]),
        [0, 0, 0xff, 98 - 63]
    );
}

#[test]
fn round_trip_typical_request() {
    let fields: [(&[u8], &[u8]); 7] = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"example.com"),
        (b":path", b"/a/b?c=d"),
        (b"user-agent", b"quench"),
        (b"x-custom", b"\xff\x00binary"),
        (b"", b""),
    ];
    let block = encode(&fields);
    let decoded = decode_field_section(&block, u64::MAX).unwrap();
    let want: Vec<Field> = fields.iter().map(|(n, v)| field(n, v)).collect();
    assert_eq!(decoded, want);
}

#[test]
fn size_limit_counts_32_per_line() {
    let block = encode(&[(b":method", b"GET"), (b"abc", b"defg")]);
    // 7 + 3 + 32 + 3 + 4 + 32 = 81.
    assert_eq!(decode_field_section(&block, 81).unwrap().len(), 2);
    assert_eq!(
        decode_field_section(&block, 80),
        Err(QpackError::TooLarge(80))
    );
    assert_eq!(
        decode_field_section(&block, 0),
        Err(QpackError::TooLarge(0))
    );
    // An empty section is fine at any limit.
    assert_eq!(decode_field_section(&[0, 0], 0).unwrap(), []);
}

#[test]
fn size_limit_holds_for_huge_declared_lengths() {
    // A literal name claiming 2^40 bytes fails on the limit or truncation, without allocating.
    let mut block = vec![0, 0];
    prefix_int::encode(&mut block, 0x20, 3, 1 << 40);
    assert_eq!(decode_field_section(&block, 4096), Err(fail("truncated")));
    // A long Huffman value stops at the limit.
    let long = vec![b'a'; 1000];
    let block = encode(&[(b"x", &long)]);
    assert_eq!(
        decode_field_section(&block, 500),
        Err(QpackError::TooLarge(500))
    );
}

#[test]
fn error_paths_of_the_field_section() {
    // Required Insert Count ≠ 0.
    assert_eq!(
        decode_err(&[0x01, 0x00]),
        fail("required insert count above 0 with no dynamic table")
    );
    // Negative Base.
    assert_eq!(decode_err(&[0x00, 0x80]), fail("negative base"));
    // Indexed, dynamic (T=0).
    assert_eq!(
        decode_err(&[0x00, 0x00, 0x80]),
        fail("dynamic table reference")
    );
    // Literal with Name Reference, dynamic (T=0).
    assert_eq!(
        decode_err(&[0x00, 0x00, 0x40, 0x00]),
        fail("dynamic table reference")
    );
    // Indexed with Post-Base Index; Literal with Post-Base Name Reference.
    assert_eq!(decode_err(&[0x00, 0x00, 0x10]), fail("post-base reference"));
    assert_eq!(
        decode_err(&[0x00, 0x00, 0x00, 0x00]),
        fail("post-base reference")
    );
    // Static index 99 does not exist.
    assert_eq!(
        decode_err(&[0x00, 0x00, 0xff, 99 - 63]),
        fail("static index out of range")
    );
    // Bad Huffman: 0xff alone is 8 bits of padding.
    assert_eq!(
        decode_err(&[0x00, 0x00, 0x51, 0x81, 0xff]),
        fail("invalid Huffman string")
    );
    // Truncated: no prefix, half a prefix, a string longer than the block, a cut integer.
    assert_eq!(decode_err(&[]), fail("truncated"));
    assert_eq!(decode_err(&[0x00]), fail("truncated"));
    assert_eq!(
        decode_err(&[0x00, 0x00, 0x51, 0x05, b'/']),
        fail("truncated")
    );
    assert_eq!(decode_err(&[0x00, 0x00, 0xff]), fail("truncated"));
    assert_eq!(decode_err(&[0x00, 0x00, 0x51]), fail("truncated"));
    // Integer overflow, in the prefix and in an index.
    let mut huge = vec![0xff];
    huge.extend([0xff; 12]);
    assert_eq!(decode_err(&huge), fail("integer overflow"));
    let mut block = vec![0x00, 0x00, 0xff];
    block.extend([0xff; 12]);
    assert_eq!(decode_err(&block), fail("integer overflow"));
    // Every decompression error maps to 0x200; TooLarge to H3_MESSAGE_ERROR.
    assert_eq!(fail("x").code(), 0x200);
    assert_eq!(QpackError::TooLarge(1).code(), 0x10e);
}

#[test]
fn encoder_stream() {
    // Set Dynamic Table Capacity 0, twice, then half of a third (0x3f needs more bytes).
    assert_eq!(read_encoder_stream(&[0x20, 0x20]), Ok(2));
    assert_eq!(read_encoder_stream(&[0x20, 0x3f]), Ok(1));
    assert_eq!(read_encoder_stream(&[0x20, 0x3f, 0x80]), Ok(1));
    assert_eq!(read_encoder_stream(&[]), Ok(0));
    let capacity = QpackError::EncoderStream("capacity above our maximum of 0");
    assert_eq!(read_encoder_stream(&[0x21]), Err(capacity));
    let insert = QpackError::EncoderStream("insert or duplicate with capacity 0");
    // Insert with Name Reference, Insert with Literal Name, Duplicate.
    assert_eq!(read_encoder_stream(&[0xc0]), Err(insert.clone()));
    assert_eq!(read_encoder_stream(&[0x20, 0x40]), Err(insert.clone()));
    assert_eq!(read_encoder_stream(&[0x00]), Err(insert.clone()));
    assert_eq!(insert.code(), 0x201);
    let mut huge = vec![0x3f];
    huge.extend([0xff; 12]);
    assert_eq!(
        read_encoder_stream(&huge),
        Err(QpackError::EncoderStream("integer overflow"))
    );
}

#[test]
fn decoder_stream() {
    // Stream Cancellation for streams 4 and 1000 (the latter with continuation bytes).
    let mut buf = vec![0x44];
    prefix_int::encode(&mut buf, 0x40, 6, 1000);
    let whole = buf.len();
    assert_eq!(read_decoder_stream(&buf), Ok(whole));
    buf.pop();
    assert_eq!(read_decoder_stream(&buf), Ok(1));
    let ack = QpackError::DecoderStream("section acknowledgment");
    assert_eq!(read_decoder_stream(&[0x44, 0x80]), Err(ack.clone()));
    assert_eq!(ack.code(), 0x202);
    assert_eq!(
        read_decoder_stream(&[0x01]),
        Err(QpackError::DecoderStream("insert count increment"))
    );
    let mut huge = vec![0x7f];
    huge.extend([0xff; 12]);
    assert_eq!(
        read_decoder_stream(&huge),
        Err(QpackError::DecoderStream("integer overflow"))
    );
}

proptest! {
    #[test]
    fn decode_inverts_encode(
        fields in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..80)),
            0..12,
        ),
        pick in proptest::collection::vec(0usize..99, 0..6),
    ) {
        // Mix arbitrary bytes with static names and pairs so every representation shows up.
        let mut input: Vec<(Vec<u8>, Vec<u8>)> = fields;
        for (k, i) in pick.into_iter().enumerate() {
            let (n, v) = static_table::STATIC_TABLE[i];
            let v = if k % 2 == 0 { v.to_vec() } else { b"other".to_vec() };
            input.push((n.to_vec(), v));
        }
        let refs: Vec<(&[u8], &[u8])> = input.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let block = encode(&refs);
        let decoded = decode_field_section(&block, u64::MAX).unwrap();
        let want: Vec<Field> = input.iter().map(|(n, v)| field(n, v)).collect();
        prop_assert_eq!(&decoded, &want);
        // The exact size is accepted, one byte less is not.
        let size: u64 = want.iter().map(|f| (f.name.len() + f.value.len()) as u64 + 32).sum();
        prop_assert!(decode_field_section(&block, size).is_ok());
        if size > 0 {
            prop_assert_eq!(decode_field_section(&block, size - 1), Err(QpackError::TooLarge(size - 1)));
        }
    }

    #[test]
    fn decode_never_panics(block: Vec<u8>, max_size in 0u64..512) {
        if let Ok(fields) = decode_field_section(&block, max_size) {
            let size: u64 = fields.iter().map(|f| (f.name.len() + f.value.len()) as u64 + 32).sum();
            prop_assert!(size <= max_size);
        }
        let _ = read_encoder_stream(&block);
        let _ = read_decoder_stream(&block);
    }

    #[test]
    fn decode_never_panics_after_valid_prefix(tail: Vec<u8>) {
        let mut block = vec![0, 0];
        block.extend(tail);
        let _ = decode_field_section(&block, 4096);
    }
}
