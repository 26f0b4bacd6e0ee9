//! HTTP/3 frame splitting over a stream delivered in arbitrary pieces: never a panic, no
//! buffered frame over the limit, skipped types never buffered, the same frames whatever
//! the chunking, and SETTINGS / GOAWAY payloads parsed without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::app::h3::frame::{single_varint, FrameReader, Item, Settings};

const LIMIT: u64 = 1024;

/// How the reader treats a type: small types buffered up to the limit (longer ones are
/// reported and skipped), the rest skipped unseen, as unknown types are.
fn limit(ty: u64) -> Option<u64> {
    (ty < 0x40).then_some(LIMIT)
}

/// (type, payload) of each frame as the reader reports it; DATA pieces merged, an
/// oversized frame as (type, its length as bytes).
fn split(data: &[u8], chunk: usize) -> Vec<(u64, Vec<u8>)> {
    let mut r = FrameReader::default();
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut in_data = false;
    for piece in data.chunks(chunk) {
        r.push(piece);
        while let Some(item) = r.next(limit) {
            match item {
                Item::Frame { ty, payload } => {
                    assert!(payload.len() as u64 <= LIMIT);
                    assert!(ty < 0x40, "a type to skip was buffered");
                    out.push((ty, payload.to_vec()));
                    in_data = false;
                }
                Item::Oversized { ty, len } => {
                    assert!(len > LIMIT);
                    out.push((ty, len.to_be_bytes().to_vec()));
                    in_data = false;
                }
                Item::Data(d) => {
                    match out.last_mut() {
                        Some((0, body)) if in_data && !d.is_empty() => body.extend_from_slice(d),
                        _ => out.push((0, d.to_vec())),
                    }
                    in_data = true;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(c % 32) + 1;
    let whole = split(rest, rest.len().max(1));
    // The same frames however the bytes arrive.
    assert_eq!(whole, split(rest, chunk));
    for (ty, payload) in &whole {
        match ty {
            0x04 => {
                let _ = Settings::decode(payload);
            }
            0x03 | 0x07 | 0x0d => {
                let _ = single_varint(payload);
            }
            _ => {}
        }
    }
});
