//! HTTP/3 frames (RFC 9114 §7): the type/length header, SETTINGS and GOAWAY payloads, and
//! an incremental reader that splits one stream's bytes into frames as they arrive.
//!
//! DATA payloads are handed out as they arrive, never buffered whole (a body can be any
//! size); every other frame is buffered until complete, up to a per-type limit, so a peer
//! cannot make a stream hold more than that.

use crate::wire::varint::{varint_len, Reader, MAX_VARINT};
use crate::Side;

use super::{code, H3Error};

pub const DATA: u64 = 0x00;
pub const HEADERS: u64 = 0x01;
pub const CANCEL_PUSH: u64 = 0x03;
pub const SETTINGS: u64 = 0x04;
pub const PUSH_PROMISE: u64 = 0x05;
pub const GOAWAY: u64 = 0x07;
pub const MAX_PUSH_ID: u64 = 0x0d;

/// Frame types HTTP/2 used that HTTP/3 reserves: receiving one is H3_FRAME_UNEXPECTED
/// (§7.2.8; PRIORITY, PING, WINDOW_UPDATE, CONTINUATION).
pub fn is_http2_only(ty: u64) -> bool {
    matches!(ty, 0x02 | 0x06 | 0x08 | 0x09)
}

/// A frame type other than HEADERS and DATA on a request stream, as received by `side`
/// (§7.2): the control-stream frames and HTTP/2's reserved types are H3_FRAME_UNEXPECTED.
/// PUSH_PROMISE is too at a server (clients do not push); at quench's client, which never
/// sends MAX_PUSH_ID, any promise exceeds the push IDs allowed: H3_ID_ERROR (§7.2.5).
/// Unknown types are ignored.
pub fn check_on_request_stream(ty: u64, side: Side) -> Result<(), H3Error> {
    if ty == PUSH_PROMISE && side == Side::Client {
        return Err(H3Error::new(
            code::ID_ERROR,
            "PUSH_PROMISE without MAX_PUSH_ID",
        ));
    }
    let unexpected = matches!(
        ty,
        CANCEL_PUSH | SETTINGS | GOAWAY | MAX_PUSH_ID | PUSH_PROMISE
    ) || is_http2_only(ty);
    if unexpected {
        Err(H3Error::new(
            code::FRAME_UNEXPECTED,
            "frame not allowed on a request stream",
        ))
    } else {
        Ok(())
    }
}

/// Frame types HTTP/3 defines (§7.2, and HTTP/2's reserved ones): a reader buffers these
/// (to act on them or to reject them); every other type is skipped unread (§9).
pub fn is_defined(ty: u64) -> bool {
    matches!(
        ty,
        HEADERS | CANCEL_PUSH | SETTINGS | PUSH_PROMISE | GOAWAY | MAX_PUSH_ID
    ) || is_http2_only(ty)
}

/// `0x1f * N + 0x21`: the reserved ("grease") code points of frame, stream, setting and
/// error types (§7.2.8, §6.2.3, §7.2.4.1, §8.1).
pub fn is_reserved(v: u64) -> bool {
    v >= 0x21 && (v - 0x21).is_multiple_of(0x1f)
}

/// A varint (RFC 9000 §16) as big-endian bytes: the last `len` of the array. Values above
/// 2^62-1 are a caller bug.
fn varint_bytes(v: u64) -> ([u8; 8], usize) {
    debug_assert!(v <= MAX_VARINT);
    let len = varint_len(v);
    let tag: u64 = match len {
        1 => 0,
        2 => 0x4000,
        4 => 0x8000_0000,
        _ => 0xc000_0000_0000_0000,
    };
    ((v | tag).to_be_bytes(), len)
}

/// Appends a varint (RFC 9000 §16) to `out`.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    let (bytes, len) = varint_bytes(v);
    out.extend_from_slice(&bytes[8 - len..]);
}

/// Writes a DATA frame header for `len` bytes so that it ends exactly at `end` of `buf`
/// (the payload already sits after it); returns where the header starts. `end` must leave
/// room for 9 bytes.
pub fn write_data_header_before(buf: &mut [u8], end: usize, len: u64) -> usize {
    let (bytes, n) = varint_bytes(len);
    let start = end - n - 1;
    buf[start] = DATA as u8;
    buf[start + 1..end].copy_from_slice(&bytes[8 - n..]);
    start
}

/// Appends a frame header for a payload of `len` bytes.
pub fn put_header(out: &mut Vec<u8>, ty: u64, len: u64) {
    put_varint(out, ty);
    put_varint(out, len);
}

/// Appends a whole frame.
pub fn put_frame(out: &mut Vec<u8>, ty: u64, payload: &[u8]) {
    put_header(out, ty, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Setting identifiers (§7.2.4.1; RFC 9204 §5).
pub mod setting {
    pub const QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
    pub const MAX_FIELD_SECTION_SIZE: u64 = 0x06;
    pub const QPACK_BLOCKED_STREAMS: u64 = 0x07;
}

/// What a peer's SETTINGS told us. Unset values keep their defaults (§7.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Default: unlimited.
    pub max_field_section_size: u64,
    pub qpack_max_table_capacity: u64,
    pub qpack_blocked_streams: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_field_section_size: u64::MAX,
            qpack_max_table_capacity: 0,
            qpack_blocked_streams: 0,
        }
    }
}

impl Settings {
    /// Parses a SETTINGS payload. Duplicates and the HTTP/2 settings with no HTTP/3
    /// meaning are H3_SETTINGS_ERROR (§7.2.4, §7.2.4.1); unknown ones are ignored. A
    /// payload that ends inside a setting is H3_FRAME_ERROR (§7.1).
    pub fn decode(payload: &[u8]) -> Result<Settings, H3Error> {
        let bad = |reason| H3Error::new(code::SETTINGS_ERROR, reason);
        let truncated = |_| H3Error::new(code::FRAME_ERROR, "SETTINGS ends inside a setting");
        let mut s = Settings::default();
        let mut r = Reader::new(payload);
        // Identifiers seen, to refuse duplicates without allocating in the usual case; a
        // payload with more settings is checked whole at the end.
        let mut seen: [u64; 32] = [0; 32];
        let mut n = 0usize;
        while !r.is_empty() {
            let id = r.varint().map_err(truncated)?;
            let value = r.varint().map_err(truncated)?;
            if seen[..n.min(seen.len())].contains(&id) {
                return Err(bad("duplicate setting"));
            }
            if n < seen.len() {
                seen[n] = id;
            }
            n += 1;
            match id {
                0x02..=0x05 => return Err(bad("HTTP/2 setting in SETTINGS")),
                setting::QPACK_MAX_TABLE_CAPACITY => s.qpack_max_table_capacity = value,
                setting::MAX_FIELD_SECTION_SIZE => s.max_field_section_size = value,
                setting::QPACK_BLOCKED_STREAMS => s.qpack_blocked_streams = value,
                _ => {}
            }
        }
        if n > seen.len() && has_duplicate_ids(payload) {
            return Err(bad("duplicate setting"));
        }
        Ok(s)
    }

    /// Our SETTINGS payload: no dynamic table, our field-section limit, and one reserved
    /// setting so peers keep ignoring unknown ones (§7.2.4.1 SHOULD).
    pub fn encode_ours(max_field_section_size: u64, grease: u64, out: &mut Vec<u8>) {
        put_varint(out, setting::QPACK_MAX_TABLE_CAPACITY);
        put_varint(out, 0);
        put_varint(out, setting::QPACK_BLOCKED_STREAMS);
        put_varint(out, 0);
        put_varint(out, setting::MAX_FIELD_SECTION_SIZE);
        put_varint(out, max_field_section_size);
        put_varint(out, 0x1f * grease + 0x21);
        put_varint(out, grease);
    }
}

/// Whether a SETTINGS payload (already parsed whole) names an identifier twice. Its
/// size is bounded by the control-frame limit, so sorting a copy of the identifiers costs
/// little, once per connection.
#[cold]
fn has_duplicate_ids(payload: &[u8]) -> bool {
    let mut ids = Vec::with_capacity(payload.len() / 2);
    let mut r = Reader::new(payload);
    while let (Ok(id), Ok(_)) = (r.varint(), r.varint()) {
        ids.push(id);
    }
    ids.sort_unstable();
    ids.windows(2).any(|w| w[0] == w[1])
}

/// The one varint a GOAWAY, CANCEL_PUSH or MAX_PUSH_ID frame carries: it must fill the
/// payload exactly (H3_FRAME_ERROR otherwise, §7.1).
pub fn single_varint(payload: &[u8]) -> Result<u64, H3Error> {
    let mut r = Reader::new(payload);
    let v = r
        .varint()
        .map_err(|_| H3Error::new(code::FRAME_ERROR, "truncated frame"))?;
    if !r.is_empty() {
        return Err(H3Error::new(
            code::FRAME_ERROR,
            "frame longer than its content",
        ));
    }
    Ok(v)
}

/// One item out of a stream's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A complete frame of a type the caller buffers (not DATA).
    Frame { ty: u64, payload: &'a [u8] },
    /// The next piece of a DATA frame's payload (possibly empty for an empty frame).
    Data(&'a [u8]),
    /// A frame longer than the caller's limit for its type: its payload is skipped, and
    /// the caller decides what that means (a malformed message, or a connection error).
    Oversized { ty: u64, len: u64 },
}

/// Splits one stream's bytes into frames. Feed it what the stream delivers with `push`,
/// then take items with `next` until it returns `None`.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// Bytes of the current DATA frame's payload still to come.
    data_left: u64,
    /// Payload bytes of a skipped frame (unknown type, or oversized) still to come.
    skip_left: u64,
    /// Bytes handed out by the last `next`, consumed at the following call.
    pending: usize,
}

impl FrameReader {
    /// Appends stream bytes. Consumed bytes are dropped first, so the buffer holds at most
    /// one incomplete frame plus this input.
    pub fn push(&mut self, data: &[u8]) {
        self.consume_pending();
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether the stream ended at a frame boundary (nothing partial held).
    pub fn at_boundary(&self) -> bool {
        self.buf.len() == self.pos + self.pending && self.data_left == 0 && self.skip_left == 0
    }

    fn consume_pending(&mut self) {
        self.pos += std::mem::take(&mut self.pending);
    }

    /// The next item, if the bytes so far complete one. `limit(ty)` says how a frame of a
    /// type other than DATA is read: `Some(n)`, buffered whole up to `n` bytes (longer is
    /// `Item::Oversized`, skipped: a frame we buffer may not grow without bound, §10.5);
    /// `None`, skipped unseen (unknown and reserved types carry nothing we use, and §9
    /// says to ignore them whatever their size).
    pub fn next(&mut self, limit: impl Fn(u64) -> Option<u64>) -> Option<Item<'_>> {
        self.consume_pending();
        loop {
            let avail = self.buf.len() - self.pos;
            if self.skip_left > 0 {
                let n = (avail as u64).min(self.skip_left) as usize;
                if n == 0 {
                    return None;
                }
                self.skip_left -= n as u64;
                self.pos += n;
                continue;
            }
            if self.data_left > 0 {
                if avail == 0 {
                    return None;
                }
                let n = (avail as u64).min(self.data_left) as usize;
                self.data_left -= n as u64;
                self.pending = n;
                return Some(Item::Data(&self.buf[self.pos..self.pos + n]));
            }
            let mut r = Reader::new(&self.buf[self.pos..]);
            let (Ok(ty), Ok(len)) = (r.varint(), r.varint()) else {
                return None; // the header is not complete yet
            };
            let header = r.position();
            if ty == DATA {
                self.pos += header;
                self.data_left = len;
                if len == 0 {
                    return Some(Item::Data(&[]));
                }
                continue;
            }
            match limit(ty) {
                None => {
                    self.pos += header;
                    self.skip_left = len;
                }
                Some(max) if len > max => {
                    self.pos += header;
                    self.skip_left = len;
                    return Some(Item::Oversized { ty, len });
                }
                Some(_) => {
                    let len = len as usize;
                    if avail - header < len {
                        return None;
                    }
                    let start = self.pos + header;
                    self.pending = header + len;
                    return Some(Item::Frame {
                        ty,
                        payload: &self.buf[start..start + len],
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frames as (type, payload); an oversized frame as (type, "oversized").
    fn frames_with(
        input: &[u8],
        chunk: usize,
        limit: impl Fn(u64) -> Option<u64> + Copy,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut r = FrameReader::default();
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            r.push(piece);
            while let Some(item) = r.next(limit) {
                match item {
                    Item::Frame { ty, payload } => out.push((ty, payload.to_vec())),
                    Item::Oversized { ty, .. } => out.push((ty, b"oversized".to_vec())),
                    // Pieces of one DATA frame are merged so chunking does not show.
                    Item::Data(d) => match out.last_mut() {
                        Some((DATA, body)) if !d.is_empty() => body.extend_from_slice(d),
                        _ => out.push((DATA, d.to_vec())),
                    },
                }
            }
        }
        out
    }

    fn frames(input: &[u8], chunk: usize) -> Vec<(u64, Vec<u8>)> {
        frames_with(input, chunk, |_| Some(1 << 16))
    }

    #[test]
    fn splits_frames_whatever_the_chunking() {
        let mut wire = Vec::new();
        put_frame(&mut wire, HEADERS, b"hdrs");
        put_frame(&mut wire, DATA, &[7u8; 300]);
        put_frame(&mut wire, 0x21, b"grease");
        put_frame(&mut wire, HEADERS, b"trailers");
        for chunk in [1, 2, 3, 7, 64, 1000] {
            let got = frames(&wire, chunk);
            assert_eq!(got.len(), 4, "chunk {chunk}: {got:?}");
            assert_eq!(got[0], (HEADERS, b"hdrs".to_vec()));
            assert_eq!(got[1], (DATA, vec![7u8; 300]));
            assert_eq!(got[2], (0x21, b"grease".to_vec()));
            assert_eq!(got[3], (HEADERS, b"trailers".to_vec()));
        }
    }

    #[test]
    fn an_empty_data_frame_is_reported() {
        let mut wire = Vec::new();
        put_frame(&mut wire, DATA, b"");
        put_frame(&mut wire, HEADERS, b"x");
        let got = frames(&wire, 1);
        assert_eq!(got, vec![(DATA, vec![]), (HEADERS, b"x".to_vec())]);
    }

    /// §9: unknown types are ignored whatever their size; they are never buffered.
    #[test]
    fn unknown_frames_are_skipped_whatever_their_size() {
        let mut wire = Vec::new();
        put_frame(&mut wire, 0x21, &vec![1u8; 100_000]);
        put_frame(&mut wire, HEADERS, b"x");
        let known = |ty| (ty == HEADERS).then_some(16);
        for chunk in [1, 1000, 200_000] {
            let got = frames_with(&wire, chunk, known);
            assert_eq!(got, vec![(HEADERS, b"x".to_vec())], "chunk {chunk}");
        }
    }

    /// A frame over its limit is reported once and skipped, never buffered; what follows
    /// it still parses.
    #[test]
    fn an_oversized_frame_is_reported_and_skipped() {
        let mut wire = Vec::new();
        put_frame(&mut wire, HEADERS, &vec![0u8; 100_000]);
        put_frame(&mut wire, HEADERS, b"small");
        let mut r = FrameReader::default();
        r.push(&wire[..10]);
        assert_eq!(
            r.next(|_| Some(1 << 10)),
            Some(Item::Oversized {
                ty: HEADERS,
                len: 100_000
            })
        );
        assert_eq!(r.next(|_| Some(1 << 10)), None);
        assert!(r.buf.len() <= 10, "nothing of the payload is kept");
        r.push(&wire[10..]);
        assert_eq!(
            r.next(|_| Some(1 << 10)),
            Some(Item::Frame {
                ty: HEADERS,
                payload: b"small"
            })
        );
        assert_eq!(r.next(|_| Some(1 << 10)), None);
        assert!(r.at_boundary());
    }

    #[test]
    fn settings_round_trip_and_reject_what_section_7_2_4_forbids() {
        let mut p = Vec::new();
        Settings::encode_ours(16384, 3, &mut p);
        let s = Settings::decode(&p).unwrap();
        assert_eq!(s.max_field_section_size, 16384);
        assert_eq!(s.qpack_max_table_capacity, 0);
        let mut dup = Vec::new();
        for _ in 0..2 {
            put_varint(&mut dup, setting::MAX_FIELD_SECTION_SIZE);
            put_varint(&mut dup, 1);
        }
        assert_eq!(
            Settings::decode(&dup).unwrap_err().code,
            code::SETTINGS_ERROR
        );
        let mut h2 = Vec::new();
        put_varint(&mut h2, 0x02);
        put_varint(&mut h2, 1);
        assert_eq!(
            Settings::decode(&h2).unwrap_err().code,
            code::SETTINGS_ERROR
        );
        // An identifier without its value, a value cut short: H3_FRAME_ERROR (§7.1).
        for truncated in [&[0x06][..], &[0x06, 0x40]] {
            assert_eq!(
                Settings::decode(truncated).unwrap_err().code,
                code::FRAME_ERROR
            );
        }
        assert!(is_reserved(0x21) && is_reserved(0x40) && !is_reserved(0x22));
    }

    /// Duplicates are found however many settings precede them: 40 distinct unknown ones
    /// pass, and repeating the first or the 35th after them is H3_SETTINGS_ERROR.
    #[test]
    fn duplicate_settings_past_the_first_32_are_found() {
        let many = |ids: &mut dyn Iterator<Item = u64>| {
            let mut p = Vec::new();
            for id in ids {
                put_varint(&mut p, id);
                put_varint(&mut p, 7);
            }
            p
        };
        let ids = || (0..40u64).map(|i| 0x1000 + i);
        assert!(Settings::decode(&many(&mut ids())).is_ok());
        for again in [0x1000, 0x1000 + 34] {
            let payload = many(&mut ids().chain([again]));
            assert_eq!(
                Settings::decode(&payload).unwrap_err().code,
                code::SETTINGS_ERROR,
                "{again:#x}"
            );
        }
    }

    #[test]
    fn single_varint_frames_must_be_exact() {
        assert_eq!(single_varint(&[0x04]).unwrap(), 4);
        assert_eq!(
            single_varint(&[0x04, 0x00]).unwrap_err().code,
            code::FRAME_ERROR
        );
        assert_eq!(single_varint(&[]).unwrap_err().code, code::FRAME_ERROR);
    }

    proptest! {
        #[test]
        fn any_bytes_any_chunking_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..40) {
            let _ = frames_with(&input, chunk, |ty| (ty < 0x10).then_some(64));
        }

        #[test]
        fn frames_round_trip(bodies in proptest::collection::vec((0u64..0x40, proptest::collection::vec(any::<u8>(), 0..200)), 0..8), chunk in 1usize..64) {
            let mut wire = Vec::new();
            for (ty, body) in &bodies {
                put_frame(&mut wire, *ty, body);
            }
            let got = frames(&wire, chunk);
            // Adjacent DATA frames merge in the helper; compare after merging the input too.
            let mut want: Vec<(u64, Vec<u8>)> = Vec::new();
            for (ty, body) in bodies {
                match want.last_mut() {
                    Some((DATA, b)) if ty == DATA && !body.is_empty() => b.extend_from_slice(&body),
                    _ => want.push((ty, body)),
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
