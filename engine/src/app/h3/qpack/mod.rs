//! QPACK (RFC 9204) with the static table only.
//!
//! quench advertises SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0 and
//! SETTINGS_QPACK_BLOCKED_STREAMS = 0, so the peer's encoder can never insert into our
//! dynamic table and ours never uses the peer's: field sections are self-contained, never
//! block, and the encoder and decoder streams carry almost nothing.

mod huffman;
mod prefix_int;
mod static_table;
#[cfg(test)]
mod tests;

use prefix_int::IntError;

/// One field line (RFC 9204 §4.5), name and value as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QpackError {
    /// QPACK_DECOMPRESSION_FAILED (0x200): a field section we cannot decode.
    #[error("QPACK decompression failed: {0}")]
    DecompressionFailed(&'static str),
    /// QPACK_ENCODER_STREAM_ERROR (0x201)
    #[error("QPACK encoder stream error: {0}")]
    EncoderStream(&'static str),
    /// QPACK_DECODER_STREAM_ERROR (0x202)
    #[error("QPACK decoder stream error: {0}")]
    DecoderStream(&'static str),
    /// The decoded section would exceed the size limit (RFC 9114 §4.2.2: the
    /// SETTINGS_MAX_FIELD_SECTION_SIZE rule, 32 bytes of overhead per field line).
    #[error("field section larger than {0} bytes")]
    TooLarge(u64),
}

/// H3_MESSAGE_ERROR (RFC 9114 §8.1).
const H3_MESSAGE_ERROR: u64 = 0x10e;

impl QpackError {
    /// The HTTP/3 error code to close the connection (the three QPACK errors, RFC 9204 §6)
    /// or reset the stream (`TooLarge`) with.
    ///
    /// `TooLarge` is H3_MESSAGE_ERROR (0x10e), a stream error: the section decoded fine and,
    /// with no dynamic table, left no shared state behind, so neither a QPACK error nor a
    /// connection error fits. RFC 9114 §10.5.1 says a section above the advertised limit
    /// risks "being treated as malformed", and malformed messages are stream errors of type
    /// H3_MESSAGE_ERROR (§4.1.2). (H3_EXCESSIVE_LOAD is for a peer's abusive behaviour, not
    /// one large message.) A server may instead answer 431 (§4.2.2) and not reset at all.
    pub fn code(&self) -> u64 {
        match self {
            Self::DecompressionFailed(_) => 0x200,
            Self::EncoderStream(_) => 0x201,
            Self::DecoderStream(_) => 0x202,
            Self::TooLarge(_) => H3_MESSAGE_ERROR,
        }
    }
}

/// RFC 9114 §4.2.2: each field line counts 32 bytes on top of its name and value.
const FIELD_OVERHEAD: u64 = 32;

/// Decodes one encoded field section (the payload of a HEADERS frame). Required Insert
/// Count must be 0 (we allow no dynamic table); any dynamic or post-base reference is
/// an error. `max_size` bounds the decoded size as RFC 9114 §4.2.2 counts it, checked as
/// decoding proceeds so a hostile block cannot make us allocate past it.
pub fn decode_field_section(block: &[u8], max_size: u64) -> Result<Vec<Field>, QpackError> {
    let mut r = Reader { buf: block, pos: 0 };
    // Encoded Field Section Prefix (§4.5.1).
    if r.int(8)? != 0 {
        return Err(fail("required insert count above 0 with no dynamic table"));
    }
    let sign = r.peek()? & 0x80 != 0;
    r.int(7)?;
    if sign {
        // Base = 0 - Delta Base - 1 < 0 (§4.5.1.2).
        return Err(fail("negative base"));
    }
    let mut budget = Budget {
        left: max_size,
        max: max_size,
    };
    let mut fields = Vec::new();
    while !r.done() {
        budget.take(FIELD_OVERHEAD)?;
        let first = r.peek()?;
        let field = if first & 0x80 != 0 {
            // Indexed Field Line (§4.5.2): 1 T index(6).
            if first & 0x40 == 0 {
                return Err(fail("dynamic table reference"));
            }
            let (name, value) = static_entry(r.int(6)?)?;
            budget.take_len(name.len())?;
            budget.take_len(value.len())?;
            Field {
                name: name.to_vec(),
                value: value.to_vec(),
            }
        } else if first & 0x40 != 0 {
            // Literal Field Line with Name Reference (§4.5.4): 0 1 N T index(4).
            if first & 0x10 == 0 {
                return Err(fail("dynamic table reference"));
            }
            let (name, _) = static_entry(r.int(4)?)?;
            budget.take_len(name.len())?;
            let value = r.string(7, &mut budget)?;
            Field {
                name: name.to_vec(),
                value,
            }
        } else if first & 0x20 != 0 {
            // Literal Field Line with Literal Name (§4.5.6): 0 0 1 N H len(3).
            let name = r.string(3, &mut budget)?;
            let value = r.string(7, &mut budget)?;
            Field { name, value }
        } else {
            // 0001xxxx Indexed with Post-Base Index (§4.5.3), 0000xxxx Literal with
            // Post-Base Name Reference (§4.5.5): both reference the dynamic table.
            return Err(fail("post-base reference"));
        };
        fields.push(field);
    }
    Ok(fields)
}

/// Appends the encoding of `fields` to `out`: Required Insert Count 0, Base 0; an
/// Indexed Field Line when the static table has the exact pair, a Literal with Name
/// Reference when it has the name, else a Literal with Literal Name. Strings are Huffman
/// coded when that is shorter.
pub fn encode_field_section(fields: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0]);
    for &(name, value) in fields {
        match static_table::find(name, value) {
            Some((index, true)) => prefix_int::encode(out, 0xc0, 6, index as u64),
            Some((index, false)) => {
                // N = 0: intermediaries may index it; we add no sensitivity policy here.
                prefix_int::encode(out, 0x50, 4, index as u64);
                put_string(out, 0, 7, value);
            }
            None => {
                put_string(out, 0x20, 3, name);
                put_string(out, 0, 7, value);
            }
        }
    }
}

/// Reads the peer's encoder stream instructions in `buf` (RFC 9204 §4.3); returns how
/// many bytes form complete instructions (the caller keeps the rest for later). With our
/// capacity of 0: Set Dynamic Table Capacity 0 is fine; a capacity above 0 or any insert
/// or duplicate is `EncoderStream`.
pub fn read_encoder_stream(buf: &[u8]) -> Result<usize, QpackError> {
    let mut pos = 0;
    while let Some(&first) = buf.get(pos) {
        if first & 0xe0 != 0x20 {
            // 1xxxxxxx Insert with Name Reference, 01xxxxxx Insert with Literal Name,
            // 000xxxxx Duplicate: each needs a table we said we do not have. Known from the
            // first byte, so no need to wait for the rest.
            return Err(QpackError::EncoderStream(
                "insert or duplicate with capacity 0",
            ));
        }
        // 001xxxxx Set Dynamic Table Capacity (§4.3.1).
        match prefix_int::decode(&buf[pos..], 5) {
            Ok((0, n)) => pos += n,
            // §3.2.3: above SETTINGS_QPACK_MAX_TABLE_CAPACITY is an encoder stream error.
            Ok(_) => return Err(QpackError::EncoderStream("capacity above our maximum of 0")),
            Err(IntError::Truncated) => break,
            Err(IntError::Overflow) => return Err(QpackError::EncoderStream("integer overflow")),
        }
    }
    Ok(pos)
}

/// Reads the peer's decoder stream (§4.4); returns bytes consumed as above. Stream
/// Cancellation is fine (it may be sent for any stream); Section Acknowledgment and
/// Insert Count Increment are `DecoderStream` errors since we never reference the
/// dynamic table.
pub fn read_decoder_stream(buf: &[u8]) -> Result<usize, QpackError> {
    let mut pos = 0;
    while let Some(&first) = buf.get(pos) {
        if first & 0x80 != 0 {
            // §4.4.1: acknowledging a section that had no dynamic references is an error.
            return Err(QpackError::DecoderStream("section acknowledgment"));
        }
        if first & 0x40 == 0 {
            // §4.4.3: an increment beyond what we inserted (nothing) is an error.
            return Err(QpackError::DecoderStream("insert count increment"));
        }
        // 01xxxxxx Stream Cancellation (§4.4.2): nothing to release.
        match prefix_int::decode(&buf[pos..], 6) {
            Ok((_, n)) => pos += n,
            Err(IntError::Truncated) => break,
            Err(IntError::Overflow) => return Err(QpackError::DecoderStream("integer overflow")),
        }
    }
    Ok(pos)
}

fn fail(why: &'static str) -> QpackError {
    QpackError::DecompressionFailed(why)
}

fn static_entry(index: u64) -> Result<(&'static [u8], &'static [u8]), QpackError> {
    static_table::get(index).ok_or(fail("static index out of range"))
}

/// Appends a string literal (§4.1.2): `flags` in the high bits, then H, then the length in
/// a `prefix`-bit integer, then the bytes.
fn put_string(out: &mut Vec<u8>, flags: u8, prefix: u8, s: &[u8]) {
    let huffman_len = huffman::encoded_len(s);
    if huffman_len < s.len() {
        prefix_int::encode(out, flags | (1 << prefix), prefix, huffman_len as u64);
        huffman::encode(s, out);
    } else {
        prefix_int::encode(out, flags, prefix, s.len() as u64);
        out.extend_from_slice(s);
    }
}

/// What is left of the §4.2.2 size limit.
struct Budget {
    left: u64,
    max: u64,
}

impl Budget {
    fn take(&mut self, n: u64) -> Result<(), QpackError> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or(QpackError::TooLarge(self.max))?;
        Ok(())
    }

    fn take_len(&mut self, n: usize) -> Result<(), QpackError> {
        self.take(n as u64)
    }

    /// The most bytes a string may still decode to.
    fn room(&self) -> usize {
        usize::try_from(self.left).unwrap_or(usize::MAX)
    }
}

/// A cursor over an encoded field section.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn peek(&self) -> Result<u8, QpackError> {
        self.buf.get(self.pos).copied().ok_or(fail("truncated"))
    }

    fn int(&mut self, prefix: u8) -> Result<u64, QpackError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match prefix_int::decode(rest, prefix) {
            Ok((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            Err(IntError::Truncated) => Err(fail("truncated")),
            Err(IntError::Overflow) => Err(fail("integer overflow")),
        }
    }

    /// A string literal whose H bit sits just above its `prefix`-bit length (§4.1.2),
    /// charged to `budget` before anything is allocated for it.
    fn string(&mut self, prefix: u8, budget: &mut Budget) -> Result<Vec<u8>, QpackError> {
        let huffman = self.peek()? & (1 << prefix) != 0;
        let len = self.int(prefix)?;
        let len = usize::try_from(len).map_err(|_| fail("truncated"))?;
        let end = self.pos.checked_add(len).ok_or(fail("truncated"))?;
        let raw = self.buf.get(self.pos..end).ok_or(fail("truncated"))?;
        self.pos = end;
        if !huffman {
            budget.take_len(raw.len())?;
            return Ok(raw.to_vec());
        }
        let mut out = Vec::new();
        match huffman::decode(raw, budget.room(), &mut out) {
            Ok(()) => {
                budget.take_len(out.len())?;
                Ok(out)
            }
            Err(huffman::HuffmanError::TooLong) => Err(QpackError::TooLarge(budget.max)),
            Err(huffman::HuffmanError::Invalid) => Err(fail("invalid Huffman string")),
        }
    }
}
