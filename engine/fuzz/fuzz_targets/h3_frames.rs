//! HTTP/3 frame splitting over a stream delivered in arbitrary pieces: never a panic, no
//! item larger than the limit, the same frames whatever the chunking, and SETTINGS / GOAWAY
//! payloads parsed without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::app::h3::frame::{single_varint, FrameReader, Item, Settings};

const LIMIT: u64 = 1024;

/// (type, payload) of each whole frame; DATA pieces merged per frame boundary.
fn split(data: &[u8], chunk: usize) -> (Vec<(u64, Vec<u8>)>, bool) {
    let mut r = FrameReader::default();
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut in_data = false;
    for piece in data.chunks(chunk) {
        r.push(piece);
        loop {
            match r.next(|_| LIMIT) {
                Ok(Some(Item::Frame { ty, payload })) => {
                    assert!(payload.len() as u64 <= LIMIT);
                    out.push((ty, payload.to_vec()));
                    in_data = false;
                }
                Ok(Some(Item::Data(d))) => {
                    match out.last_mut() {
                        Some((0, body)) if in_data && !d.is_empty() => body.extend_from_slice(d),
                        _ => out.push((0, d.to_vec())),
                    }
                    in_data = true;
                }
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
    }
    (out, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(c % 32) + 1;
    let (whole, ok) = split(rest, rest.len().max(1));
    let (pieces, ok2) = split(rest, chunk);
    // An error surfaces at the same frame however the bytes arrive; before it, the
    // frames agree (DATA may split differently only in how pieces merge, which `split` undoes).
    assert_eq!(ok, ok2);
    if ok {
        assert_eq!(whole, pieces);
    }
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
