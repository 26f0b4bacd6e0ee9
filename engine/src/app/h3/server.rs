//! The HTTP/3 server application: GET and HEAD of the files under `--root` (and `/N` for N
//! bytes, as `hq-interop`); POST and PUT to any path take the request body and answer,
//! once it ends, with its length and SHA-256 (`{"bytes":N,"sha256":"…"}`), so a client
//! can upload and check what arrived; every other method is answered 405.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use crate::app::hq::resolve;
use crate::app::{Application, ZEROS};
use crate::conn::{CloseReason, Connection, StreamId};
use crate::Side;

use super::fields::{self, Malformed};
use super::frame::{self, FrameReader, Item};
use super::qpack::{self, Field};
use super::session::Session;
use super::{code, H3Error, MAX_FIELD_SECTION_SIZE};

/// DATA frames carry at most this much (one read of the file).
const CHUNK: usize = 16 * 1024;

const REQUEST_PSEUDO: &[&[u8]] = &[b":method", b":scheme", b":path", b":authority"];

enum Body {
    None,
    File(File),
    Synthetic(u64),
    /// A small body in memory, sent as one DATA frame.
    Text(Vec<u8>),
}

/// Where a request stream is in its frame sequence (§4.1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Content,
    Trailers,
}

struct Request {
    reader: FrameReader,
    phase: Phase,
    /// The request's content-length and the DATA bytes seen (§4.1.2).
    content_length: Option<u64>,
    content_seen: u64,
    /// Framed response bytes the transport has not taken yet, and where they start.
    out: Vec<u8>,
    out_pos: usize,
    body: Body,
    /// A POST or PUT: the body read so far, hashed; answered when it ends.
    upload: Option<aws_lc_rs::digest::Context>,
    responding: bool,
    request_done: bool,
    response_done: bool,
}

impl Request {
    fn new() -> Self {
        Self {
            reader: FrameReader::default(),
            phase: Phase::Headers,
            content_length: None,
            content_seen: 0,
            out: Vec::new(),
            out_pos: 0,
            body: Body::None,
            upload: None,
            responding: false,
            request_done: false,
            response_done: false,
        }
    }
}

/// What went wrong on one request stream.
enum StreamFault {
    /// A connection error (§8).
    Connection(H3Error),
    /// The request is malformed: a stream error H3_MESSAGE_ERROR (§4.1.2).
    Malformed(Malformed),
}

impl From<H3Error> for StreamFault {
    fn from(e: H3Error) -> Self {
        StreamFault::Connection(e)
    }
}

pub struct H3Server {
    root: Option<PathBuf>,
    session: Session,
    requests: HashMap<StreamId, Request>,
    /// Requests answered (for logs and tests).
    pub responses: u64,
    /// One past the highest request stream seen: what a GOAWAY names (§5.2).
    next_request: u64,
    /// We sent GOAWAY naming this stream: requests from it on are rejected, and the
    /// connection closes once the others are answered.
    goaway: Option<u64>,
    /// Responses written whole (FIN) but not yet acknowledged: a shutdown waits for them,
    /// since closing drops whatever the transport has not delivered.
    unacked: HashSet<StreamId>,
}

impl H3Server {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            session: Session::new(Side::Server),
            requests: HashMap::new(),
            responses: 0,
            next_request: 0,
            goaway: None,
            unacked: HashSet::new(),
        }
    }

    /// After a GOAWAY, the connection closes once no request is left (§5.2, H3_NO_ERROR).
    fn close_if_drained(&mut self, conn: &mut Connection, now: Instant) {
        let drained = self.requests.is_empty() && self.unacked.is_empty();
        if self.goaway.is_some() && drained && !self.session.failed {
            self.session.failed = true;
            conn.close(now, code::NO_ERROR, crate::app::SHUTDOWN_REASON);
        }
    }

    fn read_request(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        let mut chunk = [0u8; 4096];
        loop {
            let Some(req) = self.requests.get_mut(&id) else {
                return;
            };
            if req.request_done {
                return;
            }
            let (n, fin) = match conn.read(id, &mut chunk, now) {
                Ok(r) => r,
                Err(_) => return,
            };
            req.reader.push(&chunk[..n]);
            if let Err(fault) = self.process(conn, id, fin) {
                return self.fault(conn, id, now, fault);
            }
            if fin || n == 0 {
                return;
            }
        }
    }

    /// Takes the frames buffered on `id`; `fin`: the request side ended after them.
    fn process(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        fin: bool,
    ) -> Result<(), StreamFault> {
        let root = self.root.as_deref();
        let Some(req) = self.requests.get_mut(&id) else {
            return Ok(());
        };
        while let Some(item) = req.reader.next(request_stream_limit) {
            match (req.phase, item) {
                // §4.2.2, §10.5.1: a field section over our limit makes the message
                // malformed; the frame is skipped, not buffered.
                (
                    Phase::Headers | Phase::Content,
                    Item::Oversized {
                        ty: frame::HEADERS, ..
                    },
                ) => return Err(StreamFault::Malformed("field section too large")),
                (_, Item::Oversized { ty, .. }) => {
                    frame::check_on_request_stream(ty, Side::Server)?;
                    return Err(
                        H3Error::new(code::FRAME_UNEXPECTED, "frame out of sequence").into(),
                    );
                }
                (
                    Phase::Headers,
                    Item::Frame {
                        ty: frame::HEADERS,
                        payload,
                    },
                ) => {
                    let fields = decode(payload)?;
                    req.phase = Phase::Content;
                    let head = parse_request(&fields).map_err(StreamFault::Malformed)?;
                    req.content_length = head.content_length;
                    if matches!(head.method.as_slice(), b"POST" | b"PUT") {
                        req.upload =
                            Some(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
                    } else {
                        start_response(req, root, &head);
                    }
                }
                (
                    Phase::Content,
                    Item::Frame {
                        ty: frame::HEADERS,
                        payload,
                    },
                ) => {
                    // Trailers: checked, then ignored.
                    let fields = decode(payload)?;
                    fields::split(&fields, &[]).map_err(StreamFault::Malformed)?;
                    req.phase = Phase::Trailers;
                }
                (Phase::Content, Item::Data(d)) => {
                    req.content_seen += d.len() as u64;
                    if let Some(hash) = &mut req.upload {
                        hash.update(d);
                    }
                    if req.content_length.is_some_and(|n| req.content_seen > n) {
                        return Err(StreamFault::Malformed("more content than content-length"));
                    }
                }
                (_, Item::Data(_))
                | (
                    _,
                    Item::Frame {
                        ty: frame::HEADERS, ..
                    },
                ) => {
                    return Err(
                        H3Error::new(code::FRAME_UNEXPECTED, "frame out of sequence").into(),
                    );
                }
                (_, Item::Frame { ty, .. }) => frame::check_on_request_stream(ty, Side::Server)?,
            }
        }
        if fin {
            req.request_done = true;
            if !req.reader.at_boundary() {
                return Err(
                    H3Error::new(code::FRAME_ERROR, "request stream ended inside a frame").into(),
                );
            }
            if req.phase == Phase::Headers {
                return Err(StreamFault::Malformed("request ended before its headers"));
            }
            if req.content_length.is_some_and(|n| n != req.content_seen) {
                return Err(StreamFault::Malformed(
                    "content shorter than content-length",
                ));
            }
            if let Some(hash) = req.upload.take() {
                start_upload_response(req, hash);
            }
        }
        self.pump(conn, id);
        // A request side that ends after its response is complete ends the exchange here.
        self.forget_if_done(id);
        Ok(())
    }

    fn fault(&mut self, conn: &mut Connection, id: StreamId, now: Instant, fault: StreamFault) {
        match fault {
            StreamFault::Connection(e) => self.session.fail(conn, now, e),
            StreamFault::Malformed(why) => {
                tracing::debug!(stream = %id, why, "malformed request");
                // An incomplete request (FIN before HEADERS) is H3_REQUEST_INCOMPLETE (§4.1).
                let incomplete = self
                    .requests
                    .get(&id)
                    .is_some_and(|r| r.phase == Phase::Headers && r.request_done);
                let code = if incomplete {
                    code::REQUEST_INCOMPLETE
                } else {
                    code::MESSAGE_ERROR
                };
                self.abandon(conn, id, code);
            }
        }
    }

    /// Ends both directions of `id` with `code` and forgets it.
    fn abandon(&mut self, conn: &mut Connection, id: StreamId, code: u64) {
        if let Some(req) = self.requests.remove(&id) {
            if !req.response_done {
                let _ = conn.reset_stream(id, code);
            }
            if !req.request_done {
                let _ = conn.stop_sending(id, code);
            }
        }
    }

    /// Moves response bytes into the stream while it takes them.
    fn pump(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        if !req.responding || req.response_done {
            return;
        }
        loop {
            if req.out_pos == req.out.len() {
                req.out.clear();
                req.out_pos = 0;
                match next_chunk(&mut req.body, &mut req.out) {
                    Ok(Some(first)) => req.out_pos = first,
                    Ok(None) => {
                        if conn.finish(id).is_ok() {
                            self.unacked.insert(id);
                        }
                        req.response_done = true;
                        break;
                    }
                    Err(()) => {
                        // A body cut short must not look complete (§4.1.1).
                        let _ = conn.reset_stream(id, code::INTERNAL_ERROR);
                        req.response_done = true;
                        break;
                    }
                }
            }
            match conn.write(id, &req.out[req.out_pos..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.out_pos += n,
            }
        }
        if req.response_done {
            // The file and the buffer go now, even if the request side is still open.
            req.body = Body::None;
            req.out = Vec::new();
            self.responses += 1;
            self.forget_if_done(id);
        }
    }

    fn forget_if_done(&mut self, id: StreamId) {
        if self
            .requests
            .get(&id)
            .is_some_and(|r| r.request_done && r.response_done)
        {
            self.requests.remove(&id);
        }
    }
}

/// How frames on a request stream are read: HEADERS up to our field-section limit, the
/// other defined types (all of them errors there) briefly, unknown types skipped (§9).
pub(super) fn request_stream_limit(ty: u64) -> Option<u64> {
    match ty {
        frame::HEADERS => Some(MAX_FIELD_SECTION_SIZE),
        t if frame::is_defined(t) => Some(64),
        _ => None,
    }
}

/// Decodes a request's field section: one over our limit is a malformed message, a
/// stream error (RFC 9114 §4.2.2, §10.5.1); one that does not decode breaks QPACK, a
/// connection error (RFC 9204 §2.2).
fn decode(payload: &[u8]) -> Result<Vec<Field>, StreamFault> {
    qpack::decode_field_section(payload, MAX_FIELD_SECTION_SIZE).map_err(|e| match e {
        qpack::QpackError::TooLarge(_) => StreamFault::Malformed("field section too large"),
        other => StreamFault::Connection(other.into()),
    })
}

/// The parts of a request we act on.
struct RequestHead {
    method: Vec<u8>,
    path: String,
    content_length: Option<u64>,
}

/// Checks a request's fields (§4.3.1) and picks out what serving it needs.
fn parse_request(fields: &[Field]) -> Result<RequestHead, Malformed> {
    let (pseudo, regular) = fields::split(fields, REQUEST_PSEUDO)?;
    let method = fields::pseudo(&pseudo, b":method").ok_or("no :method")?;
    let content_length = fields::content_length(regular)?;
    if method == b"CONNECT" {
        // §4.4: :authority only. We do not tunnel; the caller answers 405.
        if fields::pseudo(&pseudo, b":scheme").is_some()
            || fields::pseudo(&pseudo, b":path").is_some()
        {
            return Err("CONNECT with :scheme or :path");
        }
        fields::pseudo(&pseudo, b":authority").ok_or("CONNECT without :authority")?;
        return Ok(RequestHead {
            method: method.to_vec(),
            path: String::new(),
            content_length,
        });
    }
    let scheme = fields::pseudo(&pseudo, b":scheme").ok_or("no :scheme")?;
    let path = fields::pseudo(&pseudo, b":path").ok_or("no :path")?;
    if path.is_empty() {
        return Err("empty :path");
    }
    if scheme == b"https" || scheme == b"http" {
        // These schemes need an authority (§4.3.1): :authority or host, equal if both.
        let authority = fields::pseudo(&pseudo, b":authority");
        let mut hosts = regular.iter().filter(|f| f.name == b"host");
        let host = hosts.next().map(|f| f.value.as_slice());
        if hosts.next().is_some() {
            // Host is a singleton field (RFC 9110 §5.3; RFC 9112 §3.2 refuses several):
            // which of several to compare with :authority would be a guess.
            return Err("several host fields");
        }
        match (authority, host) {
            (None, None) => return Err("no :authority or host"),
            (Some(a), _) | (None, Some(a)) if a.is_empty() => return Err("empty authority"),
            (Some(a), Some(h)) if a != h => return Err(":authority and host differ"),
            (Some(a), _) if a.contains(&b'@') => return Err("userinfo in :authority"),
            (None, Some(h)) if h.contains(&b'@') => return Err("userinfo in host"),
            _ => {}
        }
        if path[0] != b'/' && !(path == b"*" && method == b"OPTIONS") {
            return Err(":path is not absolute");
        }
    }
    let path = String::from_utf8(path.to_vec()).map_err(|_| "non-UTF-8 :path")?;
    Ok(RequestHead {
        method: method.to_vec(),
        path,
        content_length,
    })
}

/// Frames the response head into `req.out` and picks the body.
fn start_response(req: &mut Request, root: Option<&std::path::Path>, head: &RequestHead) {
    req.responding = true;
    let (status, body, length): (&[u8], Body, u64) = match head.method.as_slice() {
        b"GET" | b"HEAD" => {
            // The query plays no part in which file is served.
            let path = head.path.split('?').next().unwrap_or("");
            let file = resolve(root, path).map(|p| {
                File::open(&p)
                    .and_then(|f| Ok((f.metadata()?.len(), f)))
                    .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "cannot serve"))
            });
            match file {
                Some(Ok((len, f))) => (b"200", Body::File(f), len),
                // Out of descriptors, say: not the client's fault, and not a 404.
                Some(Err(())) => (b"500", Body::Synthetic(0), 0),
                None => match path.strip_prefix('/').and_then(|n| n.parse::<u64>().ok()) {
                    Some(n) => (b"200", Body::Synthetic(n), n),
                    None => (b"404", Body::Synthetic(0), 0),
                },
            }
        }
        _ => (b"405", Body::Synthetic(0), 0),
    };
    let body = if head.method == b"HEAD" {
        Body::None
    } else {
        body
    };
    let extra: &[(&[u8], &[u8])] = if status == b"405" {
        &[(b"allow", b"GET, HEAD, POST, PUT")]
    } else {
        &[]
    };
    put_head(req, status, length, extra);
    req.body = body;
}

/// Frames a response's HEADERS into `req.out`: the status, content-length, our server
/// field, then `extra`.
fn put_head(req: &mut Request, status: &[u8], length: u64, extra: &[(&[u8], &[u8])]) {
    let length = length.to_string();
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":status", status),
        (b"content-length", length.as_bytes()),
        (b"server", b"quench"),
    ];
    fields.extend_from_slice(extra);
    let mut section = Vec::new();
    qpack::encode_field_section(&fields, &mut section);
    frame::put_frame(&mut req.out, frame::HEADERS, &section);
}

/// Frames the answer to a whole upload: its length and SHA-256, as JSON.
fn start_upload_response(req: &mut Request, hash: aws_lc_rs::digest::Context) {
    req.responding = true;
    let hex = hex::encode(hash.finish());
    let body = format!("{{\"bytes\":{},\"sha256\":\"{hex}\"}}\n", req.content_seen).into_bytes();
    put_head(
        req,
        b"200",
        body.len() as u64,
        &[(b"content-type", b"application/json")],
    );
    req.body = Body::Text(body);
}

/// Appends the next DATA frame of `body` to `out` and returns where it starts (a file's
/// frame may start a few bytes after the old end: its header is written in front of the
/// payload once the read says how long it is, so the payload is never moved). `None` once
/// the body is complete; Err if the file failed.
fn next_chunk(body: &mut Body, out: &mut Vec<u8>) -> Result<Option<usize>, ()> {
    /// Room for the longest DATA header: a type byte and an 8-byte length.
    const HEADER_ROOM: usize = 9;
    let start = out.len();
    match body {
        Body::None | Body::Synthetic(0) => Ok(None),
        Body::Text(text) => {
            if text.is_empty() {
                return Ok(None);
            }
            frame::put_frame(out, frame::DATA, text);
            text.clear();
            Ok(Some(start))
        }
        Body::Synthetic(left) => {
            let n = (*left).min(CHUNK as u64) as usize;
            frame::put_frame(out, frame::DATA, &ZEROS[..n]);
            *left -= n as u64;
            Ok(Some(start))
        }
        Body::File(f) => {
            let payload = start + HEADER_ROOM;
            out.resize(payload + CHUNK, 0);
            let n = loop {
                match f.read(&mut out[payload..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(()),
                }
            };
            out.truncate(payload + n);
            if n == 0 {
                out.truncate(start);
                return Ok(None);
            }
            Ok(Some(frame::write_data_header_before(
                out, payload, n as u64,
            )))
        }
    }
}

impl Application for H3Server {
    fn on_connected(&mut self, conn: &mut Connection, now: Instant) {
        self.session.open(conn, now);
    }

    fn on_stream_opened(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if id.is_bidi() && !self.session.failed {
            if self.goaway.is_some_and(|first| id.0 >= first) {
                // After our GOAWAY: not processed, so rejected (§5.2, §4.1.1).
                let _ = conn.stop_sending(id, code::REQUEST_REJECTED);
                let _ = conn.reset_stream(id, code::REQUEST_REJECTED);
                return;
            }
            self.next_request = self.next_request.max(id.0 + 4);
            self.requests.insert(id, Request::new());
        }
        self.on_readable(conn, id, now);
    }

    fn on_shutdown(&mut self, conn: &mut Connection, now: Instant) {
        if self.session.failed {
            return;
        }
        if self.goaway.is_none() {
            self.goaway = Some(self.next_request);
            self.session.send_goaway(conn, self.next_request);
        }
        self.close_if_drained(conn, now);
    }

    fn on_finished(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        self.unacked.remove(&id);
        self.close_if_drained(conn, now);
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            return self.session.on_uni_readable(conn, id, now);
        }
        if self.session.failed {
            return;
        }
        self.read_request(conn, id, now);
        self.close_if_drained(conn, now);
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if self.session.is_our_control(id) {
            return self.session.flush_control(conn);
        }
        self.pump(conn, id);
        self.close_if_drained(conn, now);
    }

    fn on_stopped(&mut self, conn: &mut Connection, id: StreamId, _code: u64, now: Instant) {
        if self.session.is_our_control(id) {
            // §6.2.1: the receiver must not ask us to close the control stream.
            return self.session.fail(
                conn,
                now,
                H3Error::new(code::CLOSED_CRITICAL_STREAM, "control stream stopped"),
            );
        }
        // The client no longer wants the response (the transport reset our side).
        self.unacked.remove(&id);
        if let Some(req) = self.requests.get_mut(&id) {
            req.response_done = true;
        }
        self.abandon(conn, id, code::REQUEST_CANCELLED);
        self.close_if_drained(conn, now);
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, _code: u64, now: Instant) {
        if !id.is_bidi() {
            return self.session.on_uni_reset(conn, id, now);
        }
        let _ = conn.read(id, &mut [], now);
        if let Some(req) = self.requests.get_mut(&id) {
            req.request_done = true;
            if req.phase == Phase::Headers {
                // Cancelled before we did anything: rejected (§4.1.1).
                self.abandon(conn, id, code::REQUEST_REJECTED);
            } else if req.upload.is_some() {
                // An upload cut short: there is nothing to answer (§4.1.1).
                self.abandon(conn, id, code::REQUEST_CANCELLED);
            } else {
                // A response under way still finishes.
                self.forget_if_done(id);
            }
        }
        self.close_if_drained(conn, now);
    }

    fn on_closed(&mut self, _reason: &CloseReason) {
        self.requests.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::fields::f;
    use super::*;

    #[test]
    fn requests_must_carry_what_section_4_3_1_requires() {
        let ok = parse_request(&[
            f(":method", "GET"),
            f(":scheme", "https"),
            f(":authority", "a"),
            f(":path", "/x"),
        ])
        .unwrap();
        assert_eq!(ok.path, "/x");
        let host = parse_request(&[
            f(":method", "GET"),
            f(":scheme", "https"),
            f(":path", "/"),
            f("host", "a"),
        ]);
        assert!(host.is_ok());
        for bad in [
            vec![f(":method", "GET"), f(":scheme", "https"), f(":path", "/")],
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":authority", "a"),
            ],
            vec![f(":scheme", "https"), f(":authority", "a"), f(":path", "/")],
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":authority", "a"),
                f(":path", "x"),
            ],
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":authority", "a"),
                f(":path", "/"),
                f("host", "b"),
            ],
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":authority", "a"),
                f(":path", "/"),
                f("host", "a"),
                f("host", "b"),
            ],
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":path", "/"),
                f("host", "a"),
                f("host", "a"),
            ],
            // §4.3.1: no userinfo in the authority of an http(s) URI, wherever it is.
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":authority", "user@a"),
                f(":path", "/"),
            ],
            vec![
                f(":method", "GET"),
                f(":scheme", "https"),
                f(":path", "/"),
                f("host", "user@a"),
            ],
            vec![
                f(":method", "CONNECT"),
                f(":authority", "a"),
                f(":path", "/"),
            ],
        ] {
            assert!(parse_request(&bad).is_err(), "{bad:?}");
        }
        assert!(parse_request(&[f(":method", "CONNECT"), f(":authority", "a:443")]).is_ok());
    }

    #[test]
    fn file_chunks_are_framed_as_data() {
        let dir = std::env::temp_dir().join(format!("quench-h3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let content: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mut body = Body::File(File::open(&path).unwrap());
        let mut wire = Vec::new();
        let mut chunk = Vec::new();
        while let Some(first) = next_chunk(&mut body, &mut chunk).unwrap() {
            wire.extend_from_slice(&chunk[first..]);
            chunk.clear();
        }
        let mut r = FrameReader::default();
        r.push(&wire);
        let mut got = Vec::new();
        while let Some(item) = r.next(|_| Some(0)) {
            match item {
                Item::Data(d) => got.extend_from_slice(d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, content);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
