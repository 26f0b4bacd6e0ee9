//! The HTTP/3 client application: GETs each path in turn, each on its own request stream,
//! and hashes the bodies in request order (as the `hq-interop` client does).

use std::time::Instant;

use crate::app::fetches::Fetches;
use crate::app::Application;
use crate::conn::{CloseReason, Connection, StreamId};
use crate::Side;

use super::fields;
use super::frame::{self, FrameReader, Item};
use super::qpack::{self, Field, QpackError};
use super::server::request_stream_limit;
use super::session::Session;
use super::{code, H3Error, MAX_FIELD_SECTION_SIZE};

/// The response to the request in flight.
struct Exchange {
    id: StreamId,
    path: String,
    reader: FrameReader,
    /// The final status, once its HEADERS arrived (1xx responses are skipped, §4.1).
    status: Option<u16>,
    content_length: Option<u64>,
    received: u64,
    trailers: bool,
}

pub struct H3Client {
    authority: String,
    pub fetches: Fetches,
    current: Option<Exchange>,
    session: Session,
}

impl H3Client {
    /// `authority` goes in :authority (the server name the client connected to).
    pub fn new(authority: String, paths: Vec<String>) -> Self {
        Self {
            authority,
            fetches: Fetches::new(paths),
            current: None,
            session: Session::new(Side::Client),
        }
    }

    fn request_next(&mut self, conn: &mut Connection) {
        if !self.fetches.has_more() {
            self.fetches.next_path(); // marks the run done
            return;
        }
        if self.session.goaway.is_some() {
            // No new request after a GOAWAY (§5.2).
            return self
                .fetches
                .fail("server sent GOAWAY before every path was fetched".into());
        }
        let Some(id) = conn.open_stream(true) else {
            return; // wait for MAX_STREAMS (`on_streams_available`)
        };
        let Some(path) = self.fetches.next_path() else {
            return;
        };
        let mut section = Vec::new();
        qpack::encode_field_section(
            &[
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", self.authority.as_bytes()),
                (b":path", path.as_bytes()),
                (b"user-agent", b"quench"),
            ],
            &mut section,
        );
        let mut request = Vec::new();
        frame::put_frame(&mut request, frame::HEADERS, &section);
        match conn.write(id, &request) {
            Ok(n) if n == request.len() => {}
            _ => {
                return self
                    .fetches
                    .fail("request did not fit the stream window".into());
            }
        }
        let _ = conn.finish(id);
        self.current = Some(Exchange {
            id,
            path,
            reader: FrameReader::default(),
            status: None,
            content_length: None,
            received: 0,
            trailers: false,
        });
    }

    fn read_response(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        now: Instant,
    ) -> Result<(), Fault> {
        let mut chunk = [0u8; 32 * 1024];
        loop {
            let Some(ex) = self.current.as_mut().filter(|e| e.id == id) else {
                return Ok(());
            };
            let (n, fin) = conn
                .read(id, &mut chunk, now)
                .map_err(|e| Fault::Failed(format!("stream {id}: {e}")))?;
            ex.reader.push(&chunk[..n]);
            let malformed = |path: &str, why: &str| Fault::Malformed(format!("{path}: {why}"));
            while let Some(item) = ex.reader.next(request_stream_limit) {
                match item {
                    Item::Oversized {
                        ty: frame::HEADERS, ..
                    } => return Err(malformed(&ex.path, "field section too large")),
                    Item::Oversized { ty, .. } => {
                        frame::check_on_request_stream(ty, Side::Client)?;
                    }
                    Item::Frame {
                        ty: frame::HEADERS,
                        payload,
                    } => {
                        if ex.trailers {
                            // §4.1: nothing may follow the trailers.
                            return Err(H3Error::new(
                                code::FRAME_UNEXPECTED,
                                "HEADERS after the trailers",
                            )
                            .into());
                        }
                        let fields =
                            match qpack::decode_field_section(payload, MAX_FIELD_SECTION_SIZE) {
                                Ok(f) => f,
                                Err(QpackError::TooLarge(_)) => {
                                    return Err(malformed(&ex.path, "field section too large"))
                                }
                                Err(e) => return Err(H3Error::from(e).into()),
                            };
                        if ex.status.is_some() {
                            ex.trailers = true;
                            fields::split(&fields, &[])
                                .map_err(|e| malformed(&ex.path, &format!("trailers: {e}")))?;
                            continue;
                        }
                        let (status, length) =
                            parse_response(&fields).map_err(|e| malformed(&ex.path, e))?;
                        if (100..200).contains(&status) {
                            continue; // interim
                        }
                        if status != 200 {
                            return Err(Fault::Failed(format!("{}: status {status}", ex.path)));
                        }
                        ex.status = Some(status);
                        ex.content_length = length;
                    }
                    Item::Data(d) => {
                        if ex.status.is_none() || ex.trailers {
                            return Err(H3Error::new(
                                code::FRAME_UNEXPECTED,
                                "DATA out of sequence",
                            )
                            .into());
                        }
                        ex.received += d.len() as u64;
                        if ex.content_length.is_some_and(|n| ex.received > n) {
                            return Err(malformed(&ex.path, "more content than content-length"));
                        }
                        self.fetches.body(d);
                    }
                    Item::Frame { ty, .. } => frame::check_on_request_stream(ty, Side::Client)?,
                }
            }
            if fin {
                if !ex.reader.at_boundary() {
                    return Err(
                        H3Error::new(code::FRAME_ERROR, "response ended inside a frame").into(),
                    );
                }
                if ex.status.is_none() {
                    return Err(malformed(&ex.path, "ended without a final status"));
                }
                if ex.content_length.is_some_and(|n| n != ex.received) {
                    return Err(malformed(&ex.path, "content shorter than content-length"));
                }
                self.current = None;
                self.fetches.complete();
                self.request_next(conn);
                return Ok(());
            }
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// What went wrong with a response.
enum Fault {
    /// A connection error (§8).
    Connection(H3Error),
    /// A malformed response: a stream error H3_MESSAGE_ERROR (§4.1.2).
    Malformed(String),
    /// A well-formed response we did not want (a status other than 200), or a stream that
    /// failed: the request is cancelled.
    Failed(String),
}

impl From<H3Error> for Fault {
    fn from(e: H3Error) -> Self {
        Fault::Connection(e)
    }
}

/// A response's :status (exactly one, three digits, §4.3.2) and content-length.
fn parse_response(fields: &[Field]) -> Result<(u16, Option<u64>), &'static str> {
    let (pseudo, regular) = fields::split(fields, &[b":status"])?;
    let status = fields::pseudo(&pseudo, b":status").ok_or("no :status")?;
    let status = std::str::from_utf8(status)
        .ok()
        .filter(|s| s.len() == 3 && s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or("invalid :status")?;
    if status == 101 {
        return Err("101 (Switching Protocols) does not exist in HTTP/3 (§4.5)");
    }
    Ok((status, fields::content_length(regular)?))
}

impl Application for H3Client {
    fn on_connected(&mut self, conn: &mut Connection, now: Instant) {
        self.session.open(conn, now);
        self.request_next(conn);
    }

    fn on_streams_available(&mut self, conn: &mut Connection, bidi: bool, _now: Instant) {
        if bidi && self.current.is_none() && !self.fetches.is_done() {
            self.request_next(conn);
        }
    }

    fn on_stream_opened(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if id.is_bidi() {
            // §6.1: HTTP/3 gives server-initiated bidirectional streams no meaning.
            return self.session.fail(
                conn,
                now,
                H3Error::new(
                    code::STREAM_CREATION_ERROR,
                    "server opened a bidirectional stream",
                ),
            );
        }
        self.on_readable(conn, id, now);
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            self.session.on_uni_readable(conn, id, now);
            if self.session.failed {
                self.fetches
                    .fail("HTTP/3 connection error on a control stream".into());
            }
            return;
        }
        match self.read_response(conn, id, now) {
            Ok(()) => {}
            Err(Fault::Connection(e)) => {
                self.session.fail(conn, now, e);
                self.fetches.fail(e.to_string());
            }
            Err(Fault::Malformed(why)) => {
                let _ = conn.stop_sending(id, code::MESSAGE_ERROR);
                self.fetches.fail(format!("malformed response: {why}"));
            }
            Err(Fault::Failed(why)) => {
                let _ = conn.stop_sending(id, code::REQUEST_CANCELLED);
                self.fetches.fail(why);
            }
        }
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        if self.session.is_our_control(id) {
            self.session.flush_control(conn);
        }
    }

    fn on_stopped(&mut self, conn: &mut Connection, id: StreamId, _code: u64, now: Instant) {
        // §6.2.1: the receiver must not ask us to close the control stream. A request
        // stream the server stops reading is no failure: its response still comes (§4.1.1).
        if self.session.is_our_control(id) {
            let e = H3Error::new(code::CLOSED_CRITICAL_STREAM, "control stream stopped");
            self.session.fail(conn, now, e);
            self.fetches.fail(e.to_string());
        }
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, code: u64, now: Instant) {
        if !id.is_bidi() {
            return self.session.on_uni_reset(conn, id, now);
        }
        self.fetches
            .fail(format!("stream {id} reset with code {code:#x}"));
    }

    fn on_closed(&mut self, reason: &CloseReason) {
        self.fetches.on_closed(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_need_one_valid_status() {
        use super::fields::f;
        assert_eq!(
            parse_response(&[f(":status", "200"), f("content-length", "5")]),
            Ok((200, Some(5)))
        );
        assert!(parse_response(&[f("content-length", "5")]).is_err());
        assert!(parse_response(&[f(":status", "20")]).is_err());
        assert!(parse_response(&[f(":status", "101")]).is_err());
        assert!(parse_response(&[f(":status", "200"), f(":status", "200")]).is_err());
        assert!(parse_response(&[f(":method", "GET"), f(":status", "200")]).is_err());
    }
}
