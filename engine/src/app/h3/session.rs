//! What both HTTP/3 roles share: our control stream with its SETTINGS, and the peer's
//! unidirectional streams (RFC 9114 §6.2): its control stream, its QPACK encoder and
//! decoder streams (RFC 9204 §4.2), and stream types we do not know.

use foldhash::{HashMap, HashMapExt};
use std::time::Instant;

use crate::conn::{Connection, StreamId};
use crate::wire::varint::Reader;
use crate::Side;

use super::frame::{self, FrameReader, Item, Settings};
use super::{code, qpack, stream_type, H3Error, MAX_FIELD_SECTION_SIZE};

/// Control frames we buffer whole are small; anything larger is a peer wasting our memory.
const MAX_CONTROL_FRAME: u64 = 4096;
/// QPACK instructions a peer may leave incomplete on its encoder/decoder stream.
const MAX_QPACK_PENDING: usize = 4096;

/// A peer's unidirectional stream, by the type it announced.
enum Uni {
    /// The type varint is not complete yet: its bytes so far.
    Typing(Vec<u8>),
    Control {
        reader: FrameReader,
        settings_seen: bool,
    },
    QpackEncoder(Vec<u8>),
    QpackDecoder(Vec<u8>),
    /// A type we do not use (reserved or unknown): reading was aborted (§6.2).
    Ignored,
}

pub(super) struct Session {
    side: Side,
    /// Our control stream and the bytes of it the transport has not taken yet.
    control: Option<StreamId>,
    control_out: Vec<u8>,
    peer_control: Option<StreamId>,
    peer_encoder: Option<StreamId>,
    peer_decoder: Option<StreamId>,
    uni: HashMap<StreamId, Uni>,
    pub peer_settings: Option<Settings>,
    /// The last GOAWAY id the peer sent.
    pub goaway: Option<u64>,
    /// The last MAX_PUSH_ID a client sent (servers only; we never push).
    max_push_id: Option<u64>,
    /// A connection error closed the connection: nothing more to do.
    pub failed: bool,
}

impl Session {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            control: None,
            control_out: Vec::new(),
            peer_control: None,
            peer_encoder: None,
            peer_decoder: None,
            uni: HashMap::new(),
            peer_settings: None,
            goaway: None,
            max_push_id: None,
            failed: false,
        }
    }

    /// Opens our control stream and sends SETTINGS, as soon as the transport allows
    /// (§6.2.1, §7.2.4.2: never waiting on the peer).
    pub fn open(&mut self, conn: &mut Connection, now: Instant) {
        let Some(id) = conn.open_stream(false) else {
            // §6.2: peers must allow at least three unidirectional streams.
            return self.fail(
                conn,
                now,
                H3Error::new(code::STREAM_CREATION_ERROR, "peer allows no control stream"),
            );
        };
        self.control = Some(id);
        frame::put_varint(&mut self.control_out, stream_type::CONTROL);
        let mut settings = Vec::new();
        let grease = u64::from(rand::random::<u8>() & 0x3f);
        Settings::encode_ours(MAX_FIELD_SECTION_SIZE, grease, &mut settings);
        frame::put_frame(&mut self.control_out, frame::SETTINGS, &settings);
        self.flush_control(conn);
    }

    /// Writes what the transport takes of our control stream.
    pub fn flush_control(&mut self, conn: &mut Connection) {
        let Some(id) = self.control else { return };
        while !self.control_out.is_empty() {
            match conn.write(id, &self.control_out) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.control_out.drain(..n);
                }
            }
        }
    }

    /// Sends GOAWAY on our control stream (§5.2): `id` is the first request stream (server)
    /// or push (client) we will not process.
    pub fn send_goaway(&mut self, conn: &mut Connection, id: u64) {
        let mut payload = Vec::with_capacity(8);
        frame::put_varint(&mut payload, id);
        frame::put_frame(&mut self.control_out, frame::GOAWAY, &payload);
        self.flush_control(conn);
    }

    /// Whether `id` is our control stream (for `on_writable`).
    pub fn is_our_control(&self, id: StreamId) -> bool {
        self.control == Some(id)
    }

    /// Closes the connection with `err` (a connection error, §8).
    pub fn fail(&mut self, conn: &mut Connection, now: Instant, err: H3Error) {
        if !self.failed {
            tracing::debug!(
                code = err.code,
                reason = err.reason,
                "HTTP/3 connection error"
            );
            self.failed = true;
            conn.close(now, err.code, err.reason);
        }
    }

    /// A peer-initiated unidirectional stream is readable.
    pub fn on_uni_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if self.failed {
            return;
        }
        if let Err(e) = self.read_uni(conn, id, now) {
            self.fail(conn, now, e);
        }
    }

    fn read_uni(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        now: Instant,
    ) -> Result<(), H3Error> {
        let mut chunk = [0u8; 4096];
        loop {
            if matches!(self.uni.get(&id), Some(Uni::Ignored)) {
                // We asked the peer to stop; whatever still comes is dropped, and the entry
                // goes with the stream (a FIN here, or a reset).
                loop {
                    match conn.discard(id, usize::MAX, now) {
                        Ok((_, true)) | Err(_) => {
                            self.uni.remove(&id);
                            return Ok(());
                        }
                        Ok((0, false)) => return Ok(()),
                        Ok(_) => {}
                    }
                }
            }
            let (n, fin) = match conn.read(id, &mut chunk, now) {
                Ok(r) => r,
                Err(_) => {
                    // The stream is gone: nothing more will come on it.
                    if !self.is_critical(id) {
                        self.uni.remove(&id);
                    }
                    return Ok(());
                }
            };
            self.on_uni_bytes(conn, id, &chunk[..n])?;
            if fin {
                return self.on_uni_end(id);
            }
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn on_uni_bytes(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        mut data: &[u8],
    ) -> Result<(), H3Error> {
        let mut typed = None;
        if let Uni::Typing(head) = self
            .uni
            .entry(id)
            .or_insert_with(|| Uni::Typing(Vec::new()))
        {
            // Take bytes up to the end of the type varint (at most 8).
            while let Some((&b, rest)) = data.split_first() {
                head.push(b);
                data = rest;
                if let Ok(ty) = Reader::new(head).varint() {
                    typed = Some(ty);
                    break;
                }
            }
        }
        if let Some(ty) = typed {
            let next = self.classify(conn, id, ty)?;
            self.uni.insert(id, next);
        }
        if data.is_empty() {
            return Ok(());
        }
        let side = self.side;
        match self.uni.get_mut(&id) {
            Some(Uni::Control {
                reader,
                settings_seen,
            }) => {
                reader.push(data);
                loop {
                    let first = !*settings_seen;
                    // §6.2.1: the first frame must be SETTINGS, so until it has come every
                    // frame is read, unknown and reserved types included; after it, those
                    // are skipped unread (§9).
                    let limit = |ty| (first || frame::is_defined(ty)).then_some(MAX_CONTROL_FRAME);
                    let Some(item) = reader.next(limit) else {
                        break;
                    };
                    match item {
                        Item::Frame {
                            ty: frame::SETTINGS,
                            payload,
                        } if first => {
                            *settings_seen = true;
                            self.peer_settings = Some(Settings::decode(payload)?);
                        }
                        Item::Oversized {
                            ty: frame::SETTINGS,
                            ..
                        } if first => {
                            return Err(H3Error::new(
                                code::EXCESSIVE_LOAD,
                                "SETTINGS frame too large",
                            ));
                        }
                        _ if first => {
                            return Err(H3Error::new(
                                code::MISSING_SETTINGS,
                                "control stream did not start with SETTINGS",
                            ));
                        }
                        Item::Oversized { ty, .. } => {
                            return Err(oversized_control_frame(ty));
                        }
                        Item::Data(_) => {
                            return Err(H3Error::new(
                                code::FRAME_UNEXPECTED,
                                "DATA on the control stream",
                            ));
                        }
                        Item::Frame { ty, payload } => {
                            control_frame(
                                side,
                                ty,
                                payload,
                                &mut self.goaway,
                                &mut self.max_push_id,
                            )?;
                        }
                    }
                }
                Ok(())
            }
            Some(Uni::QpackEncoder(buf)) => {
                buf.extend_from_slice(data);
                let used = qpack::read_encoder_stream(buf)?;
                buf.drain(..used);
                if buf.len() > MAX_QPACK_PENDING {
                    return Err(H3Error::new(
                        code::EXCESSIVE_LOAD,
                        "QPACK encoder stream backlog",
                    ));
                }
                Ok(())
            }
            Some(Uni::QpackDecoder(buf)) => {
                buf.extend_from_slice(data);
                let used = qpack::read_decoder_stream(buf)?;
                buf.drain(..used);
                if buf.len() > MAX_QPACK_PENDING {
                    return Err(H3Error::new(
                        code::EXCESSIVE_LOAD,
                        "QPACK decoder stream backlog",
                    ));
                }
                Ok(())
            }
            Some(Uni::Ignored) | Some(Uni::Typing(_)) | None => Ok(()),
        }
    }

    /// What a new peer stream of type `ty` becomes (§6.2).
    fn classify(&mut self, conn: &mut Connection, id: StreamId, ty: u64) -> Result<Uni, H3Error> {
        let dup = || {
            H3Error::new(
                code::STREAM_CREATION_ERROR,
                "second critical stream of one type",
            )
        };
        Ok(match ty {
            stream_type::CONTROL => {
                if self.peer_control.replace(id).is_some() {
                    return Err(dup());
                }
                Uni::Control {
                    reader: FrameReader::default(),
                    settings_seen: false,
                }
            }
            stream_type::QPACK_ENCODER => {
                if self.peer_encoder.replace(id).is_some() {
                    return Err(dup());
                }
                Uni::QpackEncoder(Vec::new())
            }
            stream_type::QPACK_DECODER => {
                if self.peer_decoder.replace(id).is_some() {
                    return Err(dup());
                }
                Uni::QpackDecoder(Vec::new())
            }
            stream_type::PUSH if self.side == Side::Server => {
                return Err(H3Error::new(
                    code::STREAM_CREATION_ERROR,
                    "client opened a push stream",
                ));
            }
            // We never sent MAX_PUSH_ID, so no push ID is allowed (§4.6).
            stream_type::PUSH => {
                return Err(H3Error::new(
                    code::ID_ERROR,
                    "push stream without MAX_PUSH_ID",
                ));
            }
            _ => {
                // Unknown or reserved: abort reading, never a connection error (§6.2).
                let _ = conn.stop_sending(id, code::STREAM_CREATION_ERROR);
                Uni::Ignored
            }
        })
    }

    /// The peer finished a unidirectional stream.
    fn on_uni_end(&mut self, id: StreamId) -> Result<(), H3Error> {
        if self.is_critical(id) {
            return Err(H3Error::new(
                code::CLOSED_CRITICAL_STREAM,
                "critical stream closed",
            ));
        }
        self.uni.remove(&id);
        Ok(())
    }

    /// The peer reset a unidirectional stream.
    pub fn on_uni_reset(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        let _ = conn.read(id, &mut [], now);
        if self.is_critical(id) {
            self.fail(
                conn,
                now,
                H3Error::new(code::CLOSED_CRITICAL_STREAM, "critical stream reset"),
            );
        }
        self.uni.remove(&id);
    }

    fn is_critical(&self, id: StreamId) -> bool {
        [self.peer_control, self.peer_encoder, self.peer_decoder].contains(&Some(id))
    }
}

/// A frame after SETTINGS on the peer's control stream (§7.2).
fn control_frame(
    side: Side,
    ty: u64,
    payload: &[u8],
    goaway: &mut Option<u64>,
    max_push_id: &mut Option<u64>,
) -> Result<(), H3Error> {
    let unexpected = |reason| Err(H3Error::new(code::FRAME_UNEXPECTED, reason));
    match ty {
        frame::SETTINGS => unexpected("second SETTINGS"),
        frame::DATA | frame::HEADERS | frame::PUSH_PROMISE => {
            unexpected("request frame on the control stream")
        }
        t if frame::is_http2_only(t) => unexpected("HTTP/2 frame type"),
        frame::GOAWAY => {
            let id = frame::single_varint(payload)?;
            // From a server it names a client-initiated bidirectional stream (§7.2.6).
            if side == Side::Client && !id.is_multiple_of(4) {
                return Err(H3Error::new(
                    code::ID_ERROR,
                    "GOAWAY names no request stream",
                ));
            }
            if goaway.is_some_and(|prev| id > prev) {
                return Err(H3Error::new(code::ID_ERROR, "GOAWAY id increased"));
            }
            *goaway = Some(id);
            Ok(())
        }
        frame::MAX_PUSH_ID => {
            if side == Side::Client {
                return unexpected("MAX_PUSH_ID from a server");
            }
            let id = frame::single_varint(payload)?;
            if max_push_id.is_some_and(|prev| id < prev) {
                return Err(H3Error::new(code::ID_ERROR, "MAX_PUSH_ID decreased"));
            }
            *max_push_id = Some(id);
            Ok(())
        }
        frame::CANCEL_PUSH => {
            frame::single_varint(payload)?;
            // We never promise a push (server) nor allow one (client): any push ID is one
            // never mentioned (§7.2.3).
            Err(H3Error::new(
                code::ID_ERROR,
                "CANCEL_PUSH for a push never promised",
            ))
        }
        _ => Ok(()), // unknown and reserved frame types are ignored (§9)
    }
}

/// The error for a control-stream frame longer than we read (`MAX_CONTROL_FRAME`): a type
/// never allowed there is unexpected whatever its size (§7.2.8); a frame of one varint
/// cannot be that long unless it carries extra bytes (§7.1); anything else is more than we
/// are willing to buffer.
fn oversized_control_frame(ty: u64) -> H3Error {
    match ty {
        frame::HEADERS | frame::PUSH_PROMISE => H3Error::new(
            code::FRAME_UNEXPECTED,
            "request frame on the control stream",
        ),
        t if frame::is_http2_only(t) => H3Error::new(
            code::FRAME_UNEXPECTED,
            "HTTP/2 frame type on the control stream",
        ),
        frame::GOAWAY | frame::MAX_PUSH_ID | frame::CANCEL_PUSH => {
            H3Error::new(code::FRAME_ERROR, "control frame longer than its field")
        }
        _ => H3Error::new(code::EXCESSIVE_LOAD, "control frame too large"),
    }
}
