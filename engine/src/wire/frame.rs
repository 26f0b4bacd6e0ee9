//! Frames (RFC 9000 §19, DATAGRAM from RFC 9221): zero-copy parsing of a decrypted
//! payload, encoding, and header-only writers so stream data can be copied straight
//! into the packet.

use std::ops::RangeInclusive;

use super::cid::ConnectionId;
use super::error::{TransportError, TransportErrorCode, WireError};
use super::varint::{varint_len, Reader, Writer, MAX_VARINT};

/// Frame type codes (RFC 9000 §12.4 Table 3, RFC 9221 §4).
pub mod types {
    pub const PADDING: u64 = 0x00;
    pub const PING: u64 = 0x01;
    pub const ACK: u64 = 0x02;
    pub const ACK_ECN: u64 = 0x03;
    pub const RESET_STREAM: u64 = 0x04;
    pub const STOP_SENDING: u64 = 0x05;
    pub const CRYPTO: u64 = 0x06;
    pub const NEW_TOKEN: u64 = 0x07;
    /// STREAM is 0x08..=0x0f; the low bits are the flags below.
    pub const STREAM: u64 = 0x08;
    pub const STREAM_FIN: u64 = 0x01;
    pub const STREAM_LEN: u64 = 0x02;
    pub const STREAM_OFF: u64 = 0x04;
    pub const MAX_DATA: u64 = 0x10;
    pub const MAX_STREAM_DATA: u64 = 0x11;
    pub const MAX_STREAMS_BIDI: u64 = 0x12;
    pub const MAX_STREAMS_UNI: u64 = 0x13;
    pub const DATA_BLOCKED: u64 = 0x14;
    pub const STREAM_DATA_BLOCKED: u64 = 0x15;
    pub const STREAMS_BLOCKED_BIDI: u64 = 0x16;
    pub const STREAMS_BLOCKED_UNI: u64 = 0x17;
    pub const NEW_CONNECTION_ID: u64 = 0x18;
    pub const RETIRE_CONNECTION_ID: u64 = 0x19;
    pub const PATH_CHALLENGE: u64 = 0x1a;
    pub const PATH_RESPONSE: u64 = 0x1b;
    pub const CONNECTION_CLOSE: u64 = 0x1c;
    pub const CONNECTION_CLOSE_APP: u64 = 0x1d;
    pub const HANDSHAKE_DONE: u64 = 0x1e;
    pub const DATAGRAM: u64 = 0x30;
    pub const DATAGRAM_LEN: u64 = 0x31;
}

/// Largest stream count in MAX_STREAMS / STREAMS_BLOCKED (RFC 9000 §19.11, §19.14).
pub const MAX_STREAM_COUNT: u64 = 1 << 60;

/// Which packet type carries a frame (RFC 9000 §12.4 Table 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    Initial,
    ZeroRtt,
    Handshake,
    OneRtt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EcnCounts {
    pub ect0: u64,
    pub ect1: u64,
    pub ce: u64,
}

/// A parsed ACK frame (RFC 9000 §19.3). The additional ranges stay in their wire form
/// and are decoded by [`AckFrame::iter`]; parsing already proved they do not underflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckFrame<'a> {
    pub largest: u64,
    /// Raw ACK Delay field; scale by the peer's ack_delay_exponent.
    pub delay: u64,
    pub first_range: u64,
    pub ecn: Option<EcnCounts>,
    range_count: u64,
    ranges: &'a [u8],
    smallest: u64,
}

impl<'a> AckFrame<'a> {
    /// Acknowledged packet numbers as inclusive ranges, highest first.
    pub fn iter(&self) -> AckIter<'a> {
        AckIter {
            ranges: Reader::new(self.ranges),
            remaining: self.range_count,
            // Parsing proved first_range <= largest; saturate in case the fields were edited.
            next: Some(self.largest.saturating_sub(self.first_range)..=self.largest),
        }
    }

    /// The smallest acknowledged packet number.
    pub fn smallest(&self) -> u64 {
        self.smallest
    }

    /// Number of ranges (1 + the ACK Range Count field).
    pub fn range_count(&self) -> u64 {
        self.range_count + 1
    }
}

/// Iterator over the ranges of an [`AckFrame`], descending.
#[derive(Clone, Debug)]
pub struct AckIter<'a> {
    ranges: Reader<'a>,
    remaining: u64,
    next: Option<RangeInclusive<u64>>,
}

impl Iterator for AckIter<'_> {
    type Item = RangeInclusive<u64>;

    fn next(&mut self) -> Option<Self::Item> {
        let current = self.next.take()?;
        if self.remaining > 0 {
            self.remaining -= 1;
            // Validated at parse time; a failure here just ends the iteration.
            self.next = next_ack_range(&mut self.ranges, *current.start()).ok();
        }
        Some(current)
    }
}

/// Decodes one Gap/ACK Range Length pair below a range starting at `prev_smallest`
/// (RFC 9000 §19.3.1).
fn next_ack_range(
    r: &mut Reader<'_>,
    prev_smallest: u64,
) -> Result<RangeInclusive<u64>, TransportError> {
    let gap = r.varint().map_err(truncated)?;
    let len = r.varint().map_err(truncated)?;
    let largest = prev_smallest
        .checked_sub(gap + 2)
        .ok_or(TransportError::frame_encoding("ACK range below zero"))?;
    let smallest = largest
        .checked_sub(len)
        .ok_or(TransportError::frame_encoding("ACK range below zero"))?;
    Ok(smallest..=largest)
}

fn truncated(_: WireError) -> TransportError {
    TransportError::frame_encoding("malformed frame")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Consecutive PADDING bytes, coalesced.
    Padding {
        len: usize,
    },
    Ping,
    Ack(AckFrame<'a>),
    ResetStream {
        id: u64,
        error_code: u64,
        final_size: u64,
    },
    StopSending {
        id: u64,
        error_code: u64,
    },
    Crypto {
        offset: u64,
        data: &'a [u8],
    },
    NewToken {
        token: &'a [u8],
    },
    Stream {
        id: u64,
        offset: u64,
        data: &'a [u8],
        fin: bool,
    },
    MaxData(u64),
    MaxStreamData {
        id: u64,
        max: u64,
    },
    MaxStreams {
        bidi: bool,
        max: u64,
    },
    DataBlocked(u64),
    StreamDataBlocked {
        id: u64,
        limit: u64,
    },
    StreamsBlocked {
        bidi: bool,
        limit: u64,
    },
    NewConnectionId {
        seq: u64,
        retire_prior_to: u64,
        cid: ConnectionId,
        reset_token: [u8; 16],
    },
    RetireConnectionId {
        seq: u64,
    },
    PathChallenge([u8; 8]),
    PathResponse([u8; 8]),
    /// `frame_type: None` is the application close (0x1d).
    ConnectionClose {
        error_code: u64,
        frame_type: Option<u64>,
        reason: &'a [u8],
    },
    HandshakeDone,
    Datagram {
        data: &'a [u8],
    },
}

impl Frame<'_> {
    /// The frame type this frame is encoded with (STREAM always carries a Length and
    /// DATAGRAM always its length form).
    pub fn ty(&self) -> u64 {
        use types::*;
        match self {
            Frame::Padding { .. } => PADDING,
            Frame::Ping => PING,
            Frame::Ack(ack) => {
                if ack.ecn.is_some() {
                    ACK_ECN
                } else {
                    ACK
                }
            }
            Frame::ResetStream { .. } => RESET_STREAM,
            Frame::StopSending { .. } => STOP_SENDING,
            Frame::Crypto { .. } => CRYPTO,
            Frame::NewToken { .. } => NEW_TOKEN,
            Frame::Stream { offset, fin, .. } => stream_type(*offset, true, *fin),
            Frame::MaxData(_) => MAX_DATA,
            Frame::MaxStreamData { .. } => MAX_STREAM_DATA,
            Frame::MaxStreams { bidi: true, .. } => MAX_STREAMS_BIDI,
            Frame::MaxStreams { bidi: false, .. } => MAX_STREAMS_UNI,
            Frame::DataBlocked(_) => DATA_BLOCKED,
            Frame::StreamDataBlocked { .. } => STREAM_DATA_BLOCKED,
            Frame::StreamsBlocked { bidi: true, .. } => STREAMS_BLOCKED_BIDI,
            Frame::StreamsBlocked { bidi: false, .. } => STREAMS_BLOCKED_UNI,
            Frame::NewConnectionId { .. } => NEW_CONNECTION_ID,
            Frame::RetireConnectionId { .. } => RETIRE_CONNECTION_ID,
            Frame::PathChallenge(_) => PATH_CHALLENGE,
            Frame::PathResponse(_) => PATH_RESPONSE,
            Frame::ConnectionClose {
                frame_type: Some(_),
                ..
            } => CONNECTION_CLOSE,
            Frame::ConnectionClose { .. } => CONNECTION_CLOSE_APP,
            Frame::HandshakeDone => HANDSHAKE_DONE,
            Frame::Datagram { .. } => DATAGRAM_LEN,
        }
    }

    /// Everything but ACK, PADDING and CONNECTION_CLOSE elicits an ACK (RFC 9002 §2).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(
            self,
            Frame::Ack(_) | Frame::Padding { .. } | Frame::ConnectionClose { .. }
        )
    }

    /// Probing frames may arrive on a new path without migrating to it (RFC 9000 §9.1).
    pub fn is_probing(&self) -> bool {
        matches!(
            self,
            Frame::PathChallenge(_)
                | Frame::PathResponse(_)
                | Frame::NewConnectionId { .. }
                | Frame::Padding { .. }
        )
    }

    /// Whether packets of type `pkt` may carry this frame (RFC 9000 §12.4 Table 3,
    /// RFC 9221 §4 for DATAGRAM).
    pub fn allowed_in(&self, pkt: PacketKind) -> bool {
        use PacketKind::*;
        match self {
            Frame::Padding { .. }
            | Frame::Ping
            | Frame::ConnectionClose {
                frame_type: Some(_),
                ..
            } => true,
            Frame::Ack(_) | Frame::Crypto { .. } => pkt != ZeroRtt,
            Frame::NewToken { .. } | Frame::PathResponse(_) | Frame::HandshakeDone => pkt == OneRtt,
            Frame::ResetStream { .. }
            | Frame::StopSending { .. }
            | Frame::Stream { .. }
            | Frame::MaxData(_)
            | Frame::MaxStreamData { .. }
            | Frame::MaxStreams { .. }
            | Frame::DataBlocked(_)
            | Frame::StreamDataBlocked { .. }
            | Frame::StreamsBlocked { .. }
            | Frame::NewConnectionId { .. }
            | Frame::RetireConnectionId { .. }
            | Frame::PathChallenge(_)
            | Frame::ConnectionClose { .. }
            | Frame::Datagram { .. } => matches!(pkt, ZeroRtt | OneRtt),
        }
    }

    /// Bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let v = |x: u64| varint_len(x);
        let blob = |b: &[u8]| varint_len(b.len() as u64) + b.len();
        let body = match *self {
            Frame::Padding { len } => return len,
            Frame::Ping | Frame::HandshakeDone => 0,
            Frame::Ack(ref ack) => {
                v(ack.largest)
                    + v(ack.delay)
                    + v(ack.range_count)
                    + v(ack.first_range)
                    + ack.ranges.len()
                    + ack.ecn.map_or(0, ecn_len)
            }
            Frame::ResetStream {
                id,
                error_code,
                final_size,
            } => v(id) + v(error_code) + v(final_size),
            Frame::StopSending { id, error_code } => v(id) + v(error_code),
            Frame::Crypto { offset, data } => v(offset) + blob(data),
            Frame::NewToken { token } => blob(token),
            Frame::Stream {
                id, offset, data, ..
            } => return stream_header_len(id, offset, Some(data.len())) + data.len(),
            Frame::MaxData(x) | Frame::DataBlocked(x) => v(x),
            Frame::MaxStreams { max: x, .. } | Frame::StreamsBlocked { limit: x, .. } => v(x),
            Frame::MaxStreamData { id, max: x } | Frame::StreamDataBlocked { id, limit: x } => {
                v(id) + v(x)
            }
            Frame::NewConnectionId {
                seq,
                retire_prior_to,
                cid,
                ..
            } => v(seq) + v(retire_prior_to) + 1 + cid.len() + 16,
            Frame::RetireConnectionId { seq } => v(seq),
            Frame::PathChallenge(_) | Frame::PathResponse(_) => 8,
            Frame::ConnectionClose {
                error_code,
                frame_type,
                reason,
            } => v(error_code) + frame_type.map_or(0, v) + blob(reason),
            Frame::Datagram { data } => blob(data),
        };
        v(self.ty()) + body
    }

    /// Writes the frame, or nothing if it does not fit (`BufferTooSmall`) or holds a
    /// value the wire cannot carry (`InvalidValue`).
    pub fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.validate_for_encoding()?;
        w.put_with(self.encoded_len(), |w| self.encode_unchecked(w))
    }

    /// Rejects frames the receiver would treat as malformed, so encode and parse agree.
    fn validate_for_encoding(&self) -> Result<(), WireError> {
        let ok = match *self {
            Frame::Crypto { offset, data } | Frame::Stream { offset, data, .. } => offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= MAX_VARINT),
            Frame::NewToken { token } => !token.is_empty(),
            Frame::MaxStreams { max: n, .. } | Frame::StreamsBlocked { limit: n, .. } => {
                n <= MAX_STREAM_COUNT
            }
            Frame::NewConnectionId {
                seq,
                retire_prior_to,
                cid,
                ..
            } => !cid.is_empty() && retire_prior_to <= seq,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(WireError::InvalidValue)
        }
    }

    fn encode_unchecked(&self, w: &mut Writer) -> Result<(), WireError> {
        if let Frame::Padding { len } = *self {
            return w.put_zeros(len);
        }
        if let Frame::Stream {
            id,
            offset,
            data,
            fin,
        } = *self
        {
            write_stream_header(w, id, offset, Some(data.len()), fin)?;
            return w.put_bytes(data);
        }
        w.put_varint(self.ty())?;
        let blob = |w: &mut Writer, b: &[u8]| {
            w.put_varint(b.len() as u64)?;
            w.put_bytes(b)
        };
        match *self {
            Frame::Padding { .. } | Frame::Stream { .. } => Ok(()),
            Frame::Ping | Frame::HandshakeDone => Ok(()),
            Frame::Ack(ref ack) => {
                w.put_varint(ack.largest)?;
                w.put_varint(ack.delay)?;
                w.put_varint(ack.range_count)?;
                w.put_varint(ack.first_range)?;
                w.put_bytes(ack.ranges)?;
                ack.ecn.map_or(Ok(()), |ecn| put_ecn(w, ecn))
            }
            Frame::ResetStream {
                id,
                error_code,
                final_size,
            } => {
                w.put_varint(id)?;
                w.put_varint(error_code)?;
                w.put_varint(final_size)
            }
            Frame::StopSending { id, error_code } => {
                w.put_varint(id)?;
                w.put_varint(error_code)
            }
            Frame::Crypto { offset, data } => {
                w.put_varint(offset)?;
                blob(w, data)
            }
            Frame::NewToken { token } => blob(w, token),
            Frame::MaxData(x) | Frame::DataBlocked(x) => w.put_varint(x),
            Frame::MaxStreams { max: x, .. } | Frame::StreamsBlocked { limit: x, .. } => {
                w.put_varint(x)
            }
            Frame::MaxStreamData { id, max: x } | Frame::StreamDataBlocked { id, limit: x } => {
                w.put_varint(id)?;
                w.put_varint(x)
            }
            Frame::NewConnectionId {
                seq,
                retire_prior_to,
                cid,
                reset_token,
            } => {
                w.put_varint(seq)?;
                w.put_varint(retire_prior_to)?;
                w.put_u8(cid.len() as u8)?;
                w.put_bytes(&cid)?;
                w.put_bytes(&reset_token)
            }
            Frame::RetireConnectionId { seq } => w.put_varint(seq),
            Frame::PathChallenge(data) | Frame::PathResponse(data) => w.put_bytes(&data),
            Frame::ConnectionClose {
                error_code,
                frame_type,
                reason,
            } => {
                w.put_varint(error_code)?;
                if let Some(ty) = frame_type {
                    w.put_varint(ty)?;
                }
                blob(w, reason)
            }
            Frame::Datagram { data } => blob(w, data),
        }
    }
}

fn ecn_len(ecn: EcnCounts) -> usize {
    varint_len(ecn.ect0) + varint_len(ecn.ect1) + varint_len(ecn.ce)
}

#[inline]
fn put_ecn(w: &mut Writer, ecn: EcnCounts) -> Result<(), WireError> {
    w.put_varint(ecn.ect0)?;
    w.put_varint(ecn.ect1)?;
    w.put_varint(ecn.ce)
}

/// Iterates the frames of a decrypted payload. A malformed frame yields
/// `Err(TransportError)` (FRAME_ENCODING_ERROR, or PROTOCOL_VIOLATION for a frame type
/// with a non-minimal encoding) with `frame_type` set; the iterator ends after an error.
/// An empty payload yields nothing: rejecting packets without frames (RFC 9000 §12.4)
/// is the caller's job.
#[derive(Clone, Debug)]
pub struct FrameIter<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        Self {
            r: Reader::new(payload),
            failed: false,
        }
    }

    /// Bytes of the payload parsed so far: where the next frame starts.
    pub fn offset(&self) -> usize {
        self.r.position()
    }

    #[inline]
    fn parse_frame(&mut self) -> Result<Frame<'a>, TransportError> {
        let (ty, ty_len) = self.r.varint_with_len().map_err(truncated)?;
        // RFC 9000 §12.4: frame types must use the shortest encoding.
        if ty_len != varint_len(ty) {
            return Err(TransportError::new(
                TransportErrorCode::PROTOCOL_VIOLATION,
                "frame type not minimally encoded",
            )
            .with_frame(ty));
        }
        parse_body(&mut self.r, ty).map_err(|e| e.with_frame(ty))
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, TransportError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let frame = self.parse_frame();
        self.failed = frame.is_err();
        Some(frame)
    }
}

/// The frames of every packet of a transfer or a request (STREAM, ACK, PADDING, PING) are
/// parsed here, inline in the receive loop; the rest in `parse_other`, out of line, so
/// their code does not spread the loop's hot instructions over more cache lines.
#[inline]
fn parse_body<'a>(r: &mut Reader<'a>, ty: u64) -> Result<Frame<'a>, TransportError> {
    use types::*;
    match ty {
        0x08..=0x0f => {
            let id = r.varint().map_err(truncated)?;
            let offset = if ty & STREAM_OFF != 0 {
                r.varint().map_err(truncated)?
            } else {
                0
            };
            let data = if ty & STREAM_LEN != 0 {
                blob(r)?
            } else {
                r.rest()
            };
            check_stream_end(offset, data)?;
            Ok(Frame::Stream {
                id,
                offset,
                data,
                fin: ty & STREAM_FIN != 0,
            })
        }
        ACK | ACK_ECN => Ok(Frame::Ack(parse_ack(r, ty == ACK_ECN)?)),
        PADDING => Ok(Frame::Padding {
            len: 1 + r.skip_zeros(),
        }),
        PING => Ok(Frame::Ping),
        _ => parse_other(r, ty),
    }
}

/// A varint length, then that many bytes.
#[inline]
fn blob<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], TransportError> {
    let len = r.varint().map_err(truncated)?;
    let len = usize::try_from(len).map_err(|_| truncated(WireError::UnexpectedEnd))?;
    r.bytes(len).map_err(truncated)
}

/// Every frame type but those `parse_body` takes itself.
#[inline(never)]
fn parse_other<'a>(r: &mut Reader<'a>, ty: u64) -> Result<Frame<'a>, TransportError> {
    use types::*;
    let v = |r: &mut Reader<'a>| r.varint().map_err(truncated);
    let frame = match ty {
        RESET_STREAM => Frame::ResetStream {
            id: v(r)?,
            error_code: v(r)?,
            final_size: v(r)?,
        },
        STOP_SENDING => Frame::StopSending {
            id: v(r)?,
            error_code: v(r)?,
        },
        CRYPTO => {
            let offset = v(r)?;
            let data = blob(r)?;
            check_stream_end(offset, data)?;
            Frame::Crypto { offset, data }
        }
        NEW_TOKEN => {
            let token = blob(r)?;
            // RFC 9000 §19.7.
            if token.is_empty() {
                return Err(TransportError::frame_encoding("empty NEW_TOKEN"));
            }
            Frame::NewToken { token }
        }
        MAX_DATA => Frame::MaxData(v(r)?),
        MAX_STREAM_DATA => Frame::MaxStreamData {
            id: v(r)?,
            max: v(r)?,
        },
        MAX_STREAMS_BIDI | MAX_STREAMS_UNI => Frame::MaxStreams {
            bidi: ty == MAX_STREAMS_BIDI,
            max: stream_count(v(r)?)?,
        },
        DATA_BLOCKED => Frame::DataBlocked(v(r)?),
        STREAM_DATA_BLOCKED => Frame::StreamDataBlocked {
            id: v(r)?,
            limit: v(r)?,
        },
        STREAMS_BLOCKED_BIDI | STREAMS_BLOCKED_UNI => Frame::StreamsBlocked {
            bidi: ty == STREAMS_BLOCKED_BIDI,
            limit: stream_count(v(r)?)?,
        },
        NEW_CONNECTION_ID => parse_new_connection_id(r)?,
        RETIRE_CONNECTION_ID => Frame::RetireConnectionId { seq: v(r)? },
        PATH_CHALLENGE => Frame::PathChallenge(r.array().map_err(truncated)?),
        PATH_RESPONSE => Frame::PathResponse(r.array().map_err(truncated)?),
        CONNECTION_CLOSE | CONNECTION_CLOSE_APP => Frame::ConnectionClose {
            error_code: v(r)?,
            frame_type: if ty == CONNECTION_CLOSE {
                Some(v(r)?)
            } else {
                None
            },
            reason: blob(r)?,
        },
        HANDSHAKE_DONE => Frame::HandshakeDone,
        DATAGRAM => Frame::Datagram { data: r.rest() },
        DATAGRAM_LEN => Frame::Datagram { data: blob(r)? },
        _ => return Err(TransportError::frame_encoding("unknown frame type")),
    };
    Ok(frame)
}

/// RFC 9000 §19.8 (and §19.6 for CRYPTO): the end offset must fit in 2^62 - 1.
fn check_stream_end(offset: u64, data: &[u8]) -> Result<(), TransportError> {
    match offset.checked_add(data.len() as u64) {
        Some(end) if end <= MAX_VARINT => Ok(()),
        _ => Err(TransportError::frame_encoding("data beyond 2^62-1")),
    }
}

/// RFC 9000 §19.11, §19.14: stream counts above 2^60 are a FRAME_ENCODING_ERROR.
fn stream_count(n: u64) -> Result<u64, TransportError> {
    if n > MAX_STREAM_COUNT {
        return Err(TransportError::frame_encoding("stream count above 2^60"));
    }
    Ok(n)
}

fn parse_ack<'a>(r: &mut Reader<'a>, with_ecn: bool) -> Result<AckFrame<'a>, TransportError> {
    let largest = r.varint().map_err(truncated)?;
    let delay = r.varint().map_err(truncated)?;
    let range_count = r.varint().map_err(truncated)?;
    let first_range = r.varint().map_err(truncated)?;
    // RFC 9000 §19.3.1: a range reaching below packet number 0 is a FRAME_ENCODING_ERROR.
    let mut smallest = largest
        .checked_sub(first_range)
        .ok_or(TransportError::frame_encoding("ACK range below zero"))?;
    let mut ranges = r.clone();
    // Each pair takes at least two bytes, so a huge count fails fast at the end of input.
    for _ in 0..range_count {
        smallest = *next_ack_range(r, smallest)?.start();
    }
    let ranges = ranges
        .bytes(r.position() - ranges.position())
        .map_err(truncated)?;
    let ecn = if with_ecn {
        Some(EcnCounts {
            ect0: r.varint().map_err(truncated)?,
            ect1: r.varint().map_err(truncated)?,
            ce: r.varint().map_err(truncated)?,
        })
    } else {
        None
    };
    Ok(AckFrame {
        largest,
        delay,
        first_range,
        ecn,
        range_count,
        ranges,
        smallest,
    })
}

fn parse_new_connection_id<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, TransportError> {
    let seq = r.varint().map_err(truncated)?;
    let retire_prior_to = r.varint().map_err(truncated)?;
    let len = usize::from(r.u8().map_err(truncated)?);
    // RFC 9000 §19.15: length 1..=20, and retire_prior_to <= sequence number.
    if !(1..=ConnectionId::MAX_LEN).contains(&len) {
        return Err(TransportError::frame_encoding(
            "bad NEW_CONNECTION_ID length",
        ));
    }
    let cid = ConnectionId::new(r.bytes(len).map_err(truncated)?).map_err(truncated)?;
    let reset_token = r.array().map_err(truncated)?;
    if retire_prior_to > seq {
        return Err(TransportError::frame_encoding(
            "retire_prior_to above sequence",
        ));
    }
    Ok(Frame::NewConnectionId {
        seq,
        retire_prior_to,
        cid,
        reset_token,
    })
}

/// Checks ACK ranges (non-empty, descending, separated by at least one missing packet
/// number, within varint range); returns the encoded frame length and the ACK Range
/// Count field.
fn ack_len_checked(
    delay: u64,
    mut ranges: impl Iterator<Item = RangeInclusive<u64>>,
    ecn: Option<EcnCounts>,
) -> Result<(usize, u64), WireError> {
    let first = ranges.next().ok_or(WireError::InvalidValue)?;
    let (mut smallest, largest) = (*first.start(), *first.end());
    if smallest > largest || largest > MAX_VARINT || delay > MAX_VARINT {
        return Err(WireError::InvalidValue);
    }
    let mut len = varint_len(largest) + varint_len(delay) + varint_len(largest - smallest);
    let mut count = 0u64;
    for range in ranges {
        let (gap, span) = gap_and_span(smallest, &range)?;
        len += varint_len(gap) + varint_len(span);
        count += 1;
        smallest = *range.start();
    }
    // Both ACK type codes take one byte.
    Ok((1 + len + varint_len(count) + ecn.map_or(0, ecn_len), count))
}

/// The Gap and ACK Range Length fields for `range` below a range starting at
/// `prev_smallest` (RFC 9000 §19.3.1): at least one packet number must lie between.
fn gap_and_span(prev_smallest: u64, range: &RangeInclusive<u64>) -> Result<(u64, u64), WireError> {
    let gap = prev_smallest
        .checked_sub(2)
        .and_then(|top| top.checked_sub(*range.end()));
    let span = range.end().checked_sub(*range.start());
    gap.zip(span).ok_or(WireError::InvalidValue)
}

/// Encoded length of the ACK frame [`encode_ack`] would write; 0 if the ranges are
/// invalid (empty, not descending, or adjacent).
pub fn ack_encoded_len(
    delay: u64,
    ranges: impl Iterator<Item = RangeInclusive<u64>> + Clone,
    ecn: Option<EcnCounts>,
) -> usize {
    ack_len_checked(delay, ranges, ecn).map_or(0, |(len, _)| len)
}

/// Writes an ACK (or ACK_ECN) frame from descending inclusive ranges, the first being
/// the highest (RFC 9000 §19.3). `delay` is already scaled by our ack_delay_exponent.
/// Writes nothing on error.
pub fn encode_ack(
    w: &mut Writer,
    delay: u64,
    ranges: impl Iterator<Item = RangeInclusive<u64>> + Clone,
    ecn: Option<EcnCounts>,
) -> Result<(), WireError> {
    let (len, count) = ack_len_checked(delay, ranges.clone(), ecn)?;
    w.put_with(len, |w| {
        let mut ranges = ranges;
        let first = ranges.next().ok_or(WireError::InvalidValue)?;
        w.put_varint(if ecn.is_some() {
            types::ACK_ECN
        } else {
            types::ACK
        })?;
        w.put_varint(*first.end())?;
        w.put_varint(delay)?;
        w.put_varint(count)?;
        w.put_varint(first.end() - first.start())?;
        let mut smallest = *first.start();
        for range in ranges {
            let (gap, span) = gap_and_span(smallest, &range)?;
            w.put_varint(gap)?;
            w.put_varint(span)?;
            smallest = *range.start();
        }
        ecn.map_or(Ok(()), |ecn| put_ecn(w, ecn))
    })
}

fn stream_type(offset: u64, with_len: bool, fin: bool) -> u64 {
    let mut ty = types::STREAM;
    if offset != 0 {
        ty |= types::STREAM_OFF;
    }
    if with_len {
        ty |= types::STREAM_LEN;
    }
    if fin {
        ty |= types::STREAM_FIN;
    }
    ty
}

/// Length of a STREAM frame header (RFC 9000 §19.8). The Offset field is left out when
/// `offset` is 0; `len: None` means the data runs to the end of the packet.
pub fn stream_header_len(id: u64, offset: u64, len: Option<usize>) -> usize {
    let offset_len = if offset == 0 { 0 } else { varint_len(offset) };
    1 + varint_len(id) + offset_len + len.map_or(0, |l| varint_len(l as u64))
}

/// Writes a STREAM frame header; the caller copies the data right after it. With
/// `len: None` the frame must be the last in the packet. Writes nothing on error.
pub fn write_stream_header(
    w: &mut Writer,
    id: u64,
    offset: u64,
    len: Option<usize>,
    fin: bool,
) -> Result<(), WireError> {
    let data_len = len.unwrap_or(0) as u64;
    if offset
        .checked_add(data_len)
        .is_none_or(|end| end > MAX_VARINT)
    {
        return Err(WireError::InvalidValue);
    }
    w.put_with(stream_header_len(id, offset, len), |w| {
        w.put_varint(stream_type(offset, len.is_some(), fin))?;
        w.put_varint(id)?;
        if offset != 0 {
            w.put_varint(offset)?;
        }
        if let Some(len) = len {
            w.put_varint(len as u64)?;
        }
        Ok(())
    })
}

/// Length of a CRYPTO frame header (RFC 9000 §19.6).
pub fn crypto_header_len(offset: u64, len: usize) -> usize {
    1 + varint_len(offset) + varint_len(len as u64)
}

/// Writes a CRYPTO frame header; the caller copies `len` bytes right after it.
pub fn write_crypto_header(w: &mut Writer, offset: u64, len: usize) -> Result<(), WireError> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > MAX_VARINT)
    {
        return Err(WireError::InvalidValue);
    }
    w.put_with(crypto_header_len(offset, len), |w| {
        w.put_varint(types::CRYPTO)?;
        w.put_varint(offset)?;
        w.put_varint(len as u64)
    })
}

/// Length of a DATAGRAM frame header (RFC 9221 §4); `len: None` runs to the packet end.
pub fn datagram_header_len(len: Option<usize>) -> usize {
    1 + len.map_or(0, |l| varint_len(l as u64))
}

/// Writes a DATAGRAM frame header; the caller copies the data right after it.
pub fn write_datagram_header(w: &mut Writer, len: Option<usize>) -> Result<(), WireError> {
    w.put_with(datagram_header_len(len), |w| match len {
        Some(len) => {
            w.put_varint(types::DATAGRAM_LEN)?;
            w.put_varint(len as u64)
        }
        None => w.put_varint(types::DATAGRAM),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn encode(frame: &Frame) -> Vec<u8> {
        let mut buf = vec![0u8; frame.encoded_len() + 8];
        let mut w = Writer::new(&mut buf);
        frame.encode(&mut w).unwrap();
        let n = w.len();
        assert_eq!(n, frame.encoded_len(), "encoded_len of {frame:?}");
        buf.truncate(n);
        buf
    }

    fn parse_all(payload: &[u8]) -> Vec<Result<Frame<'_>, TransportError>> {
        FrameIter::new(payload).collect()
    }

    fn parse_one(payload: &[u8]) -> Frame<'_> {
        let frames = parse_all(payload);
        assert_eq!(frames.len(), 1, "{frames:?}");
        frames[0].clone().unwrap()
    }

    fn parse_err(payload: &[u8]) -> TransportError {
        match parse_all(payload).pop() {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn ack_bytes(ranges: &[RangeInclusive<u64>], delay: u64, ecn: Option<EcnCounts>) -> Vec<u8> {
        let len = ack_encoded_len(delay, ranges.iter().cloned(), ecn);
        let mut buf = vec![0u8; len];
        let mut w = Writer::new(&mut buf);
        encode_ack(&mut w, delay, ranges.iter().cloned(), ecn).unwrap();
        assert_eq!(w.len(), len);
        buf
    }

    const TOKEN: [u8; 16] = *b"0123456789abcdef";

    fn sample_frames<'a>(data: &'a [u8], ack: &'a [u8]) -> Vec<Frame<'a>> {
        let Ok(Frame::Ack(ack)) = FrameIter::new(ack).next().unwrap() else {
            panic!("not an ack");
        };
        vec![
            Frame::Padding { len: 7 },
            Frame::Ping,
            Frame::Ack(ack),
            Frame::ResetStream {
                id: 4,
                error_code: 0x1234,
                final_size: 1 << 40,
            },
            Frame::StopSending {
                id: 7,
                error_code: MAX_VARINT,
            },
            Frame::Crypto { offset: 0, data },
            Frame::Crypto {
                offset: 70_000,
                data,
            },
            Frame::NewToken { token: data },
            Frame::Stream {
                id: 0,
                offset: 0,
                data,
                fin: false,
            },
            Frame::Stream {
                id: 1 << 20,
                offset: 99,
                data: &[],
                fin: true,
            },
            Frame::Stream {
                id: 3,
                offset: MAX_VARINT - data.len() as u64,
                data,
                fin: true,
            },
            Frame::MaxData(1 << 30),
            Frame::MaxStreamData { id: 8, max: 65 },
            Frame::MaxStreams {
                bidi: true,
                max: MAX_STREAM_COUNT,
            },
            Frame::MaxStreams {
                bidi: false,
                max: 3,
            },
            Frame::DataBlocked(0),
            Frame::StreamDataBlocked { id: 2, limit: 77 },
            Frame::StreamsBlocked {
                bidi: true,
                limit: 100,
            },
            Frame::StreamsBlocked {
                bidi: false,
                limit: MAX_STREAM_COUNT,
            },
            Frame::NewConnectionId {
                seq: 5,
                retire_prior_to: 5,
                cid: ConnectionId::new(&[0xab; 20]).unwrap(),
                reset_token: TOKEN,
            },
            Frame::NewConnectionId {
                seq: 1,
                retire_prior_to: 0,
                cid: ConnectionId::new(&[1]).unwrap(),
                reset_token: TOKEN,
            },
            Frame::RetireConnectionId { seq: 9 },
            Frame::PathChallenge(*b"chalenge"),
            Frame::PathResponse(*b"response"),
            Frame::ConnectionClose {
                error_code: 0x0a,
                frame_type: Some(0x08),
                reason: b"bad stream",
            },
            Frame::ConnectionClose {
                error_code: 0x1_0000,
                frame_type: None,
                reason: b"",
            },
            Frame::HandshakeDone,
            Frame::Datagram { data },
            Frame::Datagram { data: &[] },
        ]
    }

    fn sample_ack() -> Vec<u8> {
        let ecn = EcnCounts {
            ect0: 10,
            ect1: 0,
            ce: 1 << 20,
        };
        ack_bytes(&[1000..=1005, 900..=950, 898..=898, 0..=3], 123, Some(ecn))
    }

    #[test]
    fn every_frame_round_trips() {
        let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let ack = sample_ack();
        let frames = sample_frames(&data, &ack);
        for frame in &frames {
            let bytes = encode(frame);
            assert_eq!(&parse_one(&bytes), frame);
        }
        // All of them back to back in one payload.
        let payload: Vec<u8> = frames.iter().flat_map(|f| encode(f)).collect();
        let parsed: Vec<_> = FrameIter::new(&payload).map(Result::unwrap).collect();
        assert_eq!(parsed, frames);
    }

    #[test]
    fn ack_with_ranges_and_ecn() {
        let ack = sample_ack();
        let Frame::Ack(parsed) = parse_one(&ack) else {
            panic!("not an ack")
        };
        assert_eq!(ack[0], 0x03);
        assert_eq!(parsed.largest, 1005);
        assert_eq!(parsed.delay, 123);
        assert_eq!(parsed.first_range, 5);
        assert_eq!(parsed.range_count(), 4);
        assert_eq!(parsed.smallest(), 0);
        assert_eq!(
            parsed.ecn,
            Some(EcnCounts {
                ect0: 10,
                ect1: 0,
                ce: 1 << 20
            })
        );
        let ranges: Vec<_> = parsed.iter().collect();
        assert_eq!(ranges, [1000..=1005, 900..=950, 898..=898, 0..=3]);
        // Re-encoding the parsed frame reproduces the bytes.
        assert_eq!(encode(&Frame::Ack(parsed)), ack);

        let plain = ack_bytes(&[7..=7], 0, None);
        assert_eq!(plain, [0x02, 7, 0, 0, 0]);
        let Frame::Ack(parsed) = parse_one(&plain) else {
            panic!("not an ack")
        };
        assert_eq!(parsed.ecn, None);
        assert_eq!(parsed.iter().collect::<Vec<_>>(), [7..=7]);
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // a reversed range is one of the bad inputs
    fn encode_ack_rejects_bad_ranges() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let bad: [&[RangeInclusive<u64>]; 6] = [
            &[],
            &[5..=9, 3..=4],   // adjacent: no missing packet between
            &[5..=9, 4..=6],   // overlapping
            &[1..=2, 10..=12], // ascending
            &[9..=5],          // reversed
            &[0..=(MAX_VARINT + 1)],
        ];
        for ranges in bad {
            assert_eq!(
                encode_ack(&mut w, 0, ranges.iter().cloned(), None),
                Err(WireError::InvalidValue),
                "{ranges:?}"
            );
            assert_eq!(ack_encoded_len(0, ranges.iter().cloned(), None), 0);
        }
        let ok = [5..=9, 0..=3];
        let mut small = [0u8; 5];
        let mut w2 = Writer::new(&mut small);
        assert_eq!(
            encode_ack(&mut w2, 0, ok.iter().cloned(), None),
            Err(WireError::BufferTooSmall)
        );
        assert!(w2.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn stream_header_variants() {
        let data = b"hello";
        for offset in [0, 1, 1 << 40] {
            for len in [None, Some(data.len())] {
                for fin in [false, true] {
                    let mut buf = [0u8; 64];
                    let mut w = Writer::new(&mut buf);
                    write_stream_header(&mut w, 6, offset, len, fin).unwrap();
                    assert_eq!(w.len(), stream_header_len(6, offset, len));
                    w.put_bytes(data).unwrap();
                    let n = w.len();
                    let ty = buf[0];
                    assert_eq!(u64::from(ty) & types::STREAM_OFF != 0, offset != 0);
                    assert_eq!(u64::from(ty) & types::STREAM_LEN != 0, len.is_some());
                    let expected = Frame::Stream {
                        id: 6,
                        offset,
                        data,
                        fin,
                    };
                    assert_eq!(parse_one(&buf[..n]), expected);
                    if len.is_some() {
                        // A length-delimited frame can be followed by others.
                        buf[n] = 0x01;
                        let frames = parse_all(&buf[..n + 1]);
                        assert_eq!(frames, [Ok(expected), Ok(Frame::Ping)]);
                    }
                }
            }
        }
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            write_stream_header(&mut w, 0, MAX_VARINT, Some(1), false),
            Err(WireError::InvalidValue)
        );
        assert_eq!(
            write_stream_header(&mut w, 0, 0, None, false).map(|_| w.len()),
            Ok(2)
        );
    }

    #[test]
    fn crypto_and_datagram_headers() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        write_crypto_header(&mut w, 1000, 4).unwrap();
        assert_eq!(w.len(), crypto_header_len(1000, 4));
        w.put_bytes(b"abcd").unwrap();
        write_datagram_header(&mut w, Some(2)).unwrap();
        w.put_bytes(b"xy").unwrap();
        write_datagram_header(&mut w, None).unwrap();
        assert_eq!(datagram_header_len(None), 1);
        w.put_bytes(b"tail").unwrap();
        let n = w.len();
        assert_eq!(
            parse_all(&buf[..n]),
            [
                Ok(Frame::Crypto {
                    offset: 1000,
                    data: b"abcd"
                }),
                Ok(Frame::Datagram { data: b"xy" }),
                Ok(Frame::Datagram { data: b"tail" }),
            ]
        );
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            write_crypto_header(&mut w, MAX_VARINT, 1),
            Err(WireError::InvalidValue)
        );
    }

    #[test]
    fn padding_is_coalesced() {
        assert_eq!(
            parse_all(&[0, 0, 0, 1, 0]),
            [
                Ok(Frame::Padding { len: 3 }),
                Ok(Frame::Ping),
                Ok(Frame::Padding { len: 1 })
            ]
        );
        assert!(parse_all(&[]).is_empty());
    }

    #[test]
    fn truncated_frames_error_at_every_position() {
        let data = [0x5a; 40];
        let ack = sample_ack();
        for frame in sample_frames(&data, &ack) {
            if matches!(frame, Frame::Padding { .. }) {
                continue; // a prefix of padding is padding
            }
            let bytes = encode(&frame);
            for cut in 1..bytes.len() {
                let err = parse_err(&bytes[..cut]);
                assert_eq!(
                    err.code,
                    TransportErrorCode::FRAME_ENCODING_ERROR,
                    "{frame:?}"
                );
                assert_eq!(err.frame_type, u64::from(bytes[0]), "{frame:?} cut {cut}");
            }
        }
    }

    fn assert_rejects(payload: &[u8], code: TransportErrorCode, frame_type: u64) {
        let frames = parse_all(payload);
        let err = frames.last().unwrap().clone().unwrap_err();
        assert_eq!(
            (err.code, err.frame_type),
            (code, frame_type),
            "{payload:x?}"
        );
        assert_eq!(frames.iter().filter(|f| f.is_err()).count(), 1);
    }

    #[test]
    fn validation_rules_reject() {
        let fe = TransportErrorCode::FRAME_ENCODING_ERROR;
        // ACK: first range below zero, then a gap below zero (RFC 9000 §19.3.1).
        assert_rejects(&[0x02, 5, 0, 0, 6], fe, 0x02);
        assert_rejects(&[0x02, 5, 0, 1, 2, 2, 0], fe, 0x02);
        assert_rejects(&[0x02, 5, 0, 1, 2, 0, 2], fe, 0x02);
        // ...while the exact fit to packet 0 is fine.
        assert!(parse_all(&[0x02, 5, 0, 1, 2, 0, 0])
            .iter()
            .all(Result::is_ok));
        // A huge range count with nothing behind it.
        assert_rejects(
            &[
                0x02, 5, 0, 0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            ],
            fe,
            0x02,
        );
        // Empty NEW_TOKEN (§19.7).
        assert_rejects(&[0x07, 0], fe, 0x07);
        // NEW_CONNECTION_ID: length 0 and 21, retire_prior_to > seq (§19.15).
        let mut ncid = vec![0x18, 1, 0, 0];
        ncid.extend_from_slice(&TOKEN);
        assert_rejects(&ncid, fe, 0x18);
        let mut ncid = vec![0x18, 1, 0, 21];
        ncid.extend_from_slice(&[0; 21 + 16]);
        assert_rejects(&ncid, fe, 0x18);
        let mut ncid = vec![0x18, 1, 2, 1, 0xcc];
        ncid.extend_from_slice(&TOKEN);
        assert_rejects(&ncid, fe, 0x18);
        // Stream counts above 2^60 (§19.11, §19.14).
        let over = [0xd0, 0, 0, 0, 0, 0, 0, 1];
        for ty in [0x12, 0x13, 0x16, 0x17] {
            let mut f = vec![ty];
            f.extend_from_slice(&over);
            assert_rejects(&f, fe, u64::from(ty));
        }
        // STREAM / CRYPTO data ending beyond 2^62-1 (§19.8).
        let top = [0xff; 8];
        let mut f = vec![0x0e, 0];
        f.extend_from_slice(&top);
        f.extend_from_slice(&[1, 0xaa]);
        assert_rejects(&f, fe, 0x0e);
        let mut f = vec![0x0c, 0];
        f.extend_from_slice(&top);
        f.push(0xaa);
        assert_rejects(&f, fe, 0x0c);
        let mut f = vec![0x06];
        f.extend_from_slice(&top);
        f.extend_from_slice(&[1, 0xaa]);
        assert_rejects(&f, fe, 0x06);
        // Unknown frame types (0x21 here, and an unknown 2-byte one).
        assert_rejects(&[0x01, 0x21, 0x01], fe, 0x21);
        assert_rejects(&[0x40, 0x40], fe, 0x40);
        // A frame type with a non-minimal encoding (§12.4).
        assert_rejects(&[0x40, 0x01], TransportErrorCode::PROTOCOL_VIOLATION, 0x01);
        // Lengths running past the payload.
        assert_rejects(&[0x1d, 0, 5, b'a'], fe, 0x1d);
        assert_rejects(&[0x31, 2, 0], fe, 0x31);
    }

    #[test]
    fn iterator_stops_after_error() {
        let mut it = FrameIter::new(&[0x01, 0x22, 0x01, 0x01]);
        assert_eq!(it.next(), Some(Ok(Frame::Ping)));
        assert!(matches!(it.next(), Some(Err(_))));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn packet_type_table() {
        use PacketKind::*;
        let data = [1u8; 4];
        let ack = sample_ack();
        for frame in sample_frames(&data, &ack) {
            let allowed: Vec<_> = [Initial, ZeroRtt, Handshake, OneRtt]
                .into_iter()
                .filter(|&k| frame.allowed_in(k))
                .collect();
            let expected: &[PacketKind] = match frame {
                Frame::Padding { .. }
                | Frame::Ping
                | Frame::ConnectionClose {
                    frame_type: Some(_),
                    ..
                } => &[Initial, ZeroRtt, Handshake, OneRtt],
                Frame::Ack(_) | Frame::Crypto { .. } => &[Initial, Handshake, OneRtt],
                Frame::NewToken { .. } | Frame::PathResponse(_) | Frame::HandshakeDone => &[OneRtt],
                _ => &[ZeroRtt, OneRtt],
            };
            assert_eq!(allowed, expected, "{frame:?}");
            let eliciting = !matches!(
                frame,
                Frame::Ack(_) | Frame::Padding { .. } | Frame::ConnectionClose { .. }
            );
            assert_eq!(frame.is_ack_eliciting(), eliciting, "{frame:?}");
        }
        assert!(Frame::PathChallenge([0; 8]).is_probing());
        assert!(!Frame::Ping.is_probing());
    }

    #[test]
    fn encode_is_all_or_nothing() {
        let frame = Frame::Stream {
            id: 1,
            offset: 0,
            data: b"0123456789",
            fin: false,
        };
        let mut buf = [0xee; 8];
        let mut w = Writer::new(&mut buf);
        assert_eq!(frame.encode(&mut w), Err(WireError::BufferTooSmall));
        assert!(w.is_empty());
        assert_eq!(buf, [0xee; 8]);
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let invalid = [
            Frame::NewToken { token: b"" },
            Frame::MaxStreams {
                bidi: true,
                max: MAX_STREAM_COUNT + 1,
            },
            Frame::NewConnectionId {
                seq: 1,
                retire_prior_to: 2,
                cid: ConnectionId::new(&[1]).unwrap(),
                reset_token: TOKEN,
            },
            Frame::NewConnectionId {
                seq: 1,
                retire_prior_to: 0,
                cid: ConnectionId::default(),
                reset_token: TOKEN,
            },
            Frame::MaxData(MAX_VARINT + 1),
            Frame::Crypto {
                offset: MAX_VARINT,
                data: b"x",
            },
        ];
        for frame in invalid {
            assert_eq!(
                frame.encode(&mut w),
                Err(WireError::InvalidValue),
                "{frame:?}"
            );
            assert!(w.is_empty());
        }
    }

    /// Builds a valid non-ACK frame from random parts (ACK has its own property test).
    fn build<'a>(kind: u8, a: u64, b: u64, c: u64, data: &'a [u8], flag: bool) -> Frame<'a> {
        let cid_len = 1 + (a % 20) as usize;
        match kind % 22 {
            0 => Frame::Padding {
                len: 1 + data.len(),
            },
            1 => Frame::Ping,
            2 => Frame::ResetStream {
                id: a,
                error_code: b,
                final_size: c,
            },
            3 => Frame::StopSending {
                id: a,
                error_code: b,
            },
            4 => Frame::Crypto {
                offset: b.min(MAX_VARINT - data.len() as u64),
                data,
            },
            5 if !data.is_empty() => Frame::NewToken { token: data },
            6 => Frame::Stream {
                id: a,
                offset: b.min(MAX_VARINT - data.len() as u64),
                data,
                fin: flag,
            },
            7 => Frame::MaxData(a),
            8 => Frame::MaxStreamData { id: a, max: b },
            9 => Frame::MaxStreams {
                bidi: flag,
                max: a % (MAX_STREAM_COUNT + 1),
            },
            10 => Frame::DataBlocked(a),
            11 => Frame::StreamDataBlocked { id: a, limit: b },
            12 => Frame::StreamsBlocked {
                bidi: flag,
                limit: b % (MAX_STREAM_COUNT + 1),
            },
            13 => Frame::NewConnectionId {
                seq: a.max(b),
                retire_prior_to: a.min(b),
                cid: ConnectionId::new(&c.to_be_bytes().repeat(3)[..cid_len]).unwrap(),
                reset_token: [c as u8; 16],
            },
            14 => Frame::RetireConnectionId { seq: a },
            15 => Frame::PathChallenge(a.to_be_bytes()),
            16 => Frame::PathResponse(b.to_be_bytes()),
            17 => Frame::ConnectionClose {
                error_code: a,
                frame_type: Some(b),
                reason: data,
            },
            18 => Frame::ConnectionClose {
                error_code: a,
                frame_type: None,
                reason: data,
            },
            19 => Frame::HandshakeDone,
            _ => Frame::Datagram { data },
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Whatever parses re-encodes and parses back to the same frame.
            for frame in FrameIter::new(&bytes).flatten() {
                let again = encode(&frame);
                prop_assert_eq!(parse_one(&again), frame);
                if let Frame::Ack(ack) = frame {
                    prop_assert!(ack.iter().all(|r| r.start() <= r.end()));
                    prop_assert_eq!(ack.iter().last().map(|r| *r.start()), Some(ack.smallest()));
                }
            }
        }

        #[test]
        fn arbitrary_frames_round_trip(
            parts in proptest::collection::vec(
                (any::<u8>(), 0..=MAX_VARINT, 0..=MAX_VARINT, 0..=MAX_VARINT,
                 proptest::collection::vec(any::<u8>(), 0..50), any::<bool>()),
                1..8,
            )
        ) {
            let frames: Vec<Frame> = parts
                .iter()
                .map(|(k, a, b, c, data, flag)| build(*k, *a, *b, *c, data, *flag))
                .collect();
            let mut payload = Vec::new();
            for f in &frames {
                payload.extend_from_slice(&encode(f));
            }
            let parsed: Vec<Frame> = FrameIter::new(&payload).map(Result::unwrap).collect();
            // Adjacent padding frames merge on parse; compare with padding coalesced.
            let mut expected: Vec<Frame> = Vec::new();
            for f in frames {
                match (expected.last_mut(), f) {
                    (Some(Frame::Padding { len }), Frame::Padding { len: more }) => *len += more,
                    (_, f) => expected.push(f),
                }
            }
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn ack_ranges_round_trip(
            pns in proptest::collection::btree_set(0u64..5000, 1..300),
            delay in 0..=MAX_VARINT,
            ecn in any::<Option<(u32, u32, u32)>>(),
        ) {
            let ranges = to_descending_ranges(&pns);
            let ecn = ecn.map(|(a, b, c)| EcnCounts { ect0: a.into(), ect1: b.into(), ce: c.into() });
            let bytes = ack_bytes(&ranges, delay, ecn);
            let Frame::Ack(ack) = parse_one(&bytes) else { panic!("not an ack") };
            prop_assert_eq!(ack.iter().collect::<Vec<_>>(), ranges);
            prop_assert_eq!(ack.smallest(), *pns.first().unwrap());
            prop_assert_eq!(ack.largest, *pns.last().unwrap());
            prop_assert_eq!(ack.delay, delay);
            prop_assert_eq!(ack.ecn, ecn);
        }
    }

    fn to_descending_ranges(pns: &BTreeSet<u64>) -> Vec<RangeInclusive<u64>> {
        let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
        for &pn in pns.iter().rev() {
            match ranges.last_mut() {
                Some(r) if *r.start() == pn + 1 => *r = pn..=*r.end(),
                _ => ranges.push(pn..=pn),
            }
        }
        ranges
    }
}
