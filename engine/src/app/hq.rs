//! `hq-interop`: HTTP/0.9 over QUIC as used by the QUIC interop runner. The client sends
//! `GET /path\r\n` and FIN; the server answers with the raw body and FIN.
//! Files are served from `--root`; a path `/N` naming no file returns N bytes; any other
//! path naming no file gets its stream reset.

use foldhash::{HashMap, HashMapExt};
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use crate::app::fetches::Fetches;
use crate::app::{discard_all, write_zeros, Application};
use crate::conn::{CloseReason, Connection, StreamId};

/// Longest request line we accept before giving up on a stream.
const MAX_REQUEST: usize = 4096;
/// RESET_STREAM / STOP_SENDING code for a request that gets no body: malformed, naming
/// nothing, or its file failing mid-way. HTTP/0.9 has no status line, so a reset is the
/// only way to tell the client (an empty body with FIN would read as an empty file).
const REQUEST_FAILED: u64 = 0x10;

enum Body {
    File {
        file: File,
        buf: Vec<u8>,
        pos: usize,
    },
    Synthetic {
        remaining: u64,
    },
}

#[derive(Default)]
struct ServerStream {
    request: Vec<u8>,
    body: Option<Body>,
    /// The request line was complete and answered: later data (a FIN sent on its own, as
    /// quinn does after `write_all`) is read and dropped, never parsed as a new request.
    answered: bool,
    /// The request side's FIN was read.
    request_done: bool,
    /// The whole response, FIN included, is written.
    response_done: bool,
}

pub struct HqServer {
    root: Option<PathBuf>,
    streams: HashMap<StreamId, ServerStream>,
}

impl HqServer {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            streams: HashMap::new(),
        }
    }

    fn respond(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.answered = true;
        let Some(path) = parse_request(&s.request) else {
            let _ = conn.reset_stream(id, REQUEST_FAILED);
            self.abandon(conn, id);
            return;
        };
        let body = match resolve(self.root.as_deref(), &path) {
            Some(p) => match File::open(&p) {
                Ok(file) => Some(Body::File {
                    file,
                    buf: Vec::new(),
                    pos: 0,
                }),
                Err(_) => None,
            },
            None => None,
        };
        let body = body.or_else(|| {
            path.strip_prefix('/')
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| Body::Synthetic { remaining: n })
        });
        match body {
            Some(b) => s.body = Some(b),
            None => {
                // Not found: the other hq-interop servers (quinn's, aioquic's, quiche's)
                // reset the stream too.
                let _ = conn.reset_stream(id, REQUEST_FAILED);
                self.abandon(conn, id);
                return;
            }
        }
        self.pump(conn, id);
    }

    fn pump(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // Some(true): the body is complete; Some(false): the file failed mid-way.
        let end = match s.body.as_mut() {
            None => None,
            Some(Body::Synthetic { remaining }) => {
                *remaining -= write_zeros(conn, id, *remaining);
                (*remaining == 0).then_some(true)
            }
            Some(Body::File { file, buf, pos }) => loop {
                if *pos == buf.len() {
                    buf.resize(64 * 1024, 0);
                    match file.read(buf) {
                        Ok(0) => break Some(true),
                        Err(_) => break Some(false),
                        Ok(n) => {
                            buf.truncate(n);
                            *pos = 0;
                        }
                    }
                }
                match conn.write(id, &buf[*pos..]) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => *pos += n,
                }
            },
        };
        if let Some(complete) = end {
            // A body cut short by a read error must not look complete: reset, not FIN.
            let _ = if complete {
                conn.finish(id)
            } else {
                conn.reset_stream(id, REQUEST_FAILED)
            };
            s.body = None;
            s.response_done = true;
            self.forget_if_done(id);
        }
    }

    /// Forgets `id` now; a request side still open is stopped, so that the stream ends on
    /// both sides and is not left holding a stream slot.
    fn abandon(&mut self, conn: &mut Connection, id: StreamId) {
        if let Some(s) = self.streams.remove(&id) {
            if !s.request_done {
                let _ = conn.stop_sending(id, REQUEST_FAILED);
            }
        }
    }

    /// After the request line: whatever else the request side brings (a FIN sent on its
    /// own, as quinn does after `write_all`, or stray bytes) is read and dropped, never
    /// parsed as another request. Read to the end, or no further Readable would come.
    fn drop_rest_of_request(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 1024];
        while !s.request_done {
            match conn.read(id, &mut chunk, now) {
                Ok((_, true)) => s.request_done = true,
                Ok((0, false)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        self.forget_if_done(id);
    }

    /// A stream is forgotten once both its request and its response are complete.
    fn forget_if_done(&mut self, id: StreamId) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.request_done && s.response_done)
        {
            self.streams.remove(&id);
        }
    }
}

/// `GET /path` (optionally followed by CRLF) → "/path".
fn parse_request(req: &[u8]) -> Option<String> {
    let line = req.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches('\r')
        .trim();
    let path = line.strip_prefix("GET ")?.trim();
    path.starts_with('/').then(|| path.to_string())
}

/// Maps a request path under `root`, refusing anything that would escape it.
pub(crate) fn resolve(root: Option<&Path>, path: &str) -> Option<PathBuf> {
    let root = root?;
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(rel);
    full.is_file().then_some(full)
}

impl Application for HqServer {
    fn on_stream_opened(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if id.is_bidi() {
            self.streams.insert(id, ServerStream::default());
        }
        self.on_readable(conn, id, now);
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            // HTTP/0.9 has no unidirectional streams: don't let one hold credit.
            return discard_all(conn, id, now);
        }
        // Only streams opened and not yet forgotten: one answered and done is over.
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 1024];
        while !s.answered {
            match conn.read(id, &mut chunk, now) {
                Ok((n, fin)) => {
                    s.request.extend_from_slice(&chunk[..n]);
                    s.request_done |= fin;
                    if s.request.len() > MAX_REQUEST {
                        let _ = conn.reset_stream(id, REQUEST_FAILED);
                        self.abandon(conn, id);
                        return;
                    }
                    if fin || s.request.contains(&b'\n') {
                        self.respond(conn, id);
                        break;
                    }
                    if n == 0 {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        self.drop_rest_of_request(conn, id, now);
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        self.pump(conn, id);
    }

    fn on_stopped(&mut self, conn: &mut Connection, id: StreamId, _code: u64, _now: Instant) {
        // The transport reset our side: no response to finish.
        self.abandon(conn, id);
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, code: u64, now: Instant) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // Reading the reset acknowledges it and ends the request side.
        let _ = conn.read(id, &mut [], now);
        s.request_done = true;
        if s.answered {
            // A response under way still finishes.
            self.forget_if_done(id);
        } else {
            // No complete request: abandon our side too, so the stream ends.
            let _ = conn.reset_stream(id, code);
            self.streams.remove(&id);
        }
    }
}

/// Client side: GET each path in turn over its own stream, hashing the bodies in request order.
pub struct HqClient {
    pub fetches: Fetches,
    current: Option<StreamId>,
}

impl HqClient {
    pub fn new(paths: Vec<String>) -> Self {
        Self {
            fetches: Fetches::new(paths),
            current: None,
        }
    }

    fn request_next(&mut self, conn: &mut Connection) {
        if !self.fetches.has_more() {
            self.fetches.next_path();
            return;
        }
        let Some(id) = conn.open_stream(true) else {
            // The server frees a stream slot only once it has reaped the last one: wait for
            // its MAX_STREAMS (`on_streams_available`).
            return;
        };
        let Some(path) = self.fetches.next_path() else {
            return;
        };
        let req = format!("GET {path}\r\n");
        match conn.write(id, req.as_bytes()) {
            Ok(n) if n == req.len() => {}
            _ => {
                self.fetches
                    .fail("request did not fit the stream window".into());
                return;
            }
        }
        let _ = conn.finish(id);
        self.current = Some(id);
    }
}

impl Application for HqClient {
    fn on_connected(&mut self, conn: &mut Connection, _now: Instant) {
        self.request_next(conn);
    }

    fn on_streams_available(&mut self, conn: &mut Connection, bidi: bool, _now: Instant) {
        if bidi && self.current.is_none() && !self.fetches.is_done() {
            self.request_next(conn);
        }
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if self.current != Some(id) {
            return;
        }
        let mut chunk = [0u8; 32 * 1024];
        loop {
            match conn.read(id, &mut chunk, now) {
                Ok((n, fin)) => {
                    self.fetches.body(&chunk[..n]);
                    if fin {
                        self.current = None;
                        self.fetches.complete();
                        self.request_next(conn);
                        return;
                    }
                    if n == 0 {
                        return;
                    }
                }
                Err(e) => {
                    self.fetches.fail(format!("stream {id}: {e}"));
                    return;
                }
            }
        }
    }

    fn on_reset(&mut self, _conn: &mut Connection, id: StreamId, code: u64, _now: Instant) {
        self.fetches
            .fail(format!("stream {id} reset with code {code}"));
    }

    fn on_closed(&mut self, reason: &CloseReason) {
        self.fetches.on_closed(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_paths_stay_under_root() {
        assert_eq!(
            parse_request(b"GET /a/b.txt\r\n").as_deref(),
            Some("/a/b.txt")
        );
        assert_eq!(parse_request(b"GET /1000").as_deref(), Some("/1000"));
        assert_eq!(parse_request(b"POST /x\r\n"), None);
        assert_eq!(parse_request(b"GET x\r\n"), None);
        let dir = std::env::temp_dir();
        assert_eq!(resolve(Some(&dir), "/../etc/passwd"), None);
        assert_eq!(resolve(Some(&dir), "/a/../../b"), None);
        assert_eq!(resolve(None, "/x"), None);
    }
}
