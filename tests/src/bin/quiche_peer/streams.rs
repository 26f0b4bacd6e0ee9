//! `perf` and `hq-interop` on quiche's streams, sans-IO: each stream is a small state machine
//! the event loop feeds when quiche reports it readable and pumps for as long as flow control
//! and the congestion window let it write. The protocol rules are those of
//! `quench_tests::{perf, hq}` (docs/interop.md), whose request parsing, paths and report this
//! reuses.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use quench_tests::hq::{self, resolve, MAX_REQUEST};

/// Payload of perf transfers and `/N` bodies: content is irrelevant, only the count matters.
static FILL: [u8; 64 * 1024] = [0; 64 * 1024];
/// Stream error code for a request we cannot serve (`quench_tests::hq`'s, as quiche takes it).
pub const REQUEST_REJECTED: u64 = hq::REQUEST_REJECTED as u64;
/// Largest hq-interop body the client keeps (bodies are hashed in request order, so they
/// are held until the run ends).
const MAX_BODY: usize = 1 << 30;

/// The rest of what a stream sends: a prefix (request line, perf size), then a body; FIN
/// after the last byte.
pub struct Outgoing {
    head: Vec<u8>,
    head_sent: usize,
    body: Body,
    /// FIN handed to quiche: nothing left to write.
    finished: bool,
}

enum Body {
    /// That many filler bytes.
    Fill(u64),
    /// A file, read in [`FILL`]-sized chunks as quiche takes them.
    File {
        file: File,
        /// Bytes of the file not yet read into `buf`.
        unread: u64,
        buf: Vec<u8>,
        start: usize,
    },
}

impl Outgoing {
    pub fn fill(head: Vec<u8>, len: u64) -> Outgoing {
        Outgoing {
            head,
            head_sent: 0,
            body: Body::Fill(len),
            finished: false,
        }
    }

    fn file(path: &Path) -> Result<Outgoing> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let unread = file.metadata()?.len();
        Ok(Outgoing {
            head: Vec::new(),
            head_sent: 0,
            body: Body::File {
                file,
                unread,
                buf: Vec::new(),
                start: 0,
            },
            finished: false,
        })
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    fn body_empty(&self) -> bool {
        match &self.body {
            Body::Fill(left) => *left == 0,
            Body::File {
                unread, buf, start, ..
            } => *unread == 0 && *start == buf.len(),
        }
    }

    /// Hands quiche as much as it takes now. Errors if the peer stopped the stream.
    pub fn pump(&mut self, conn: &mut quiche::Connection, id: u64) -> Result<()> {
        while !self.finished {
            let body_empty = self.body_empty();
            let (chunk, last): (&[u8], bool) = if self.head_sent < self.head.len() {
                (&self.head[self.head_sent..], body_empty)
            } else {
                match &mut self.body {
                    Body::Fill(left) => {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(FILL.len());
                        (&FILL[..n], *left == n as u64)
                    }
                    Body::File {
                        file,
                        unread,
                        buf,
                        start,
                    } => {
                        if *start == buf.len() && *unread > 0 {
                            let want = usize::try_from(*unread)
                                .unwrap_or(usize::MAX)
                                .min(FILL.len());
                            buf.resize(want, 0);
                            let n = file.read(buf)?;
                            if n == 0 {
                                bail!("file ended {unread} bytes early");
                            }
                            buf.truncate(n);
                            *start = 0;
                            *unread -= n as u64;
                        }
                        (&buf[*start..], *unread == 0)
                    }
                }
            };
            let len = chunk.len();
            let sent = match conn.stream_send(id, chunk, last) {
                Ok(sent) => sent,
                Err(quiche::Error::Done) => return Ok(()),
                Err(quiche::Error::StreamStopped(code)) => {
                    bail!("peer stopped the stream with code {code}")
                }
                Err(e) => return Err(e).context("stream_send"),
            };
            if self.head_sent < self.head.len() {
                self.head_sent += sent;
            } else {
                match &mut self.body {
                    Body::Fill(left) => *left -= sent as u64,
                    Body::File { start, .. } => *start += sent,
                }
            }
            if sent < len {
                // Out of flow-control credit or congestion window: quiche reports the
                // stream writable again later.
                return Ok(());
            }
            self.finished = last;
        }
        Ok(())
    }
}

/// Reads what stream `id` has now, handing each chunk to `on_data`; true once FIN is read.
fn read(
    conn: &mut quiche::Connection,
    id: u64,
    buf: &mut [u8],
    mut on_data: impl FnMut(&[u8]) -> Result<()>,
) -> Result<bool> {
    loop {
        match conn.stream_recv(id, buf) {
            Ok((len, fin)) => {
                on_data(&buf[..len])?;
                if fin {
                    return Ok(true);
                }
            }
            Err(quiche::Error::Done) => return Ok(false),
            Err(quiche::Error::StreamReset(code)) => {
                bail!("stream reset by peer: error {code}")
            }
            Err(e) => return Err(e).context("stream_recv"),
        }
    }
}

// ---- server -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    Perf,
    HqInterop,
}

/// Server side of one bidirectional stream.
pub struct ServerStream {
    protocol: Protocol,
    /// perf: the 8-byte size; hq-interop: the request line.
    request: Vec<u8>,
    response: Option<Outgoing>,
    recv_fin: bool,
}

impl ServerStream {
    pub fn new(protocol: Protocol) -> ServerStream {
        ServerStream {
            protocol,
            request: Vec::new(),
            response: None,
            recv_fin: false,
        }
    }

    /// Takes what the client sent; starts the response once the request is complete.
    pub fn on_readable(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        buf: &mut [u8],
        root: Option<&Path>,
    ) -> Result<()> {
        if self.recv_fin {
            return Ok(());
        }
        let request = &mut self.request;
        let protocol = self.protocol;
        self.recv_fin = read(conn, id, buf, |data| {
            match protocol {
                // perf: the size, then an upload to discard.
                Protocol::Perf => {
                    let take = (8 - request.len()).min(data.len());
                    request.extend_from_slice(&data[..take]);
                }
                Protocol::HqInterop => {
                    if request.len() + data.len() > MAX_REQUEST {
                        bail!("request longer than {MAX_REQUEST} bytes");
                    }
                    request.extend_from_slice(data);
                }
            }
            Ok(())
        })?;
        if self.response.is_some() {
            return Ok(());
        }
        match self.protocol {
            Protocol::Perf => {
                if let Ok(size) = <[u8; 8]>::try_from(&self.request[..]) {
                    // Respond while still draining the upload, as `quench_tests::perf`.
                    self.response = Some(Outgoing::fill(Vec::new(), u64::from_be_bytes(size)));
                } else if self.recv_fin {
                    bail!(
                        "perf request ended after {} of 8 size bytes",
                        self.request.len()
                    );
                }
            }
            Protocol::HqInterop => {
                if self.recv_fin {
                    self.response = Some(hq_response(&self.request, root)?);
                }
            }
        }
        Ok(())
    }

    pub fn pump(&mut self, conn: &mut quiche::Connection, id: u64) -> Result<()> {
        match &mut self.response {
            Some(response) => response.pump(conn, id),
            None => Ok(()),
        }
    }

    /// Both directions are over on our side: nothing left to read or to write.
    pub fn done(&self) -> bool {
        self.recv_fin && self.response.as_ref().is_some_and(Outgoing::finished)
    }
}

/// The answer to an hq-interop request: the file under `root`, else `/N` bytes.
fn hq_response(request: &[u8], root: Option<&Path>) -> Result<Outgoing> {
    let path = hq::parse_request(request)?;
    match root.and_then(|root| resolve(root, path)) {
        Some(file) if file.is_file() => Outgoing::file(&file),
        _ => match path[1..].parse::<u64>() {
            Ok(len) => Ok(Outgoing::fill(Vec::new(), len)),
            Err(_) => Err(anyhow!("no such file: {path}")),
        },
    }
}

// ---- client -----------------------------------------------------------------------------------

/// Client side of one perf stream: ask for `down` bytes, upload `up`.
pub struct PerfRequest {
    pub down: u64,
    pub up: u64,
    got: u64,
    upload: Outgoing,
    recv_fin: bool,
}

impl PerfRequest {
    pub fn new(down: u64, up: u64) -> PerfRequest {
        PerfRequest {
            down,
            up,
            got: 0,
            upload: Outgoing::fill(down.to_be_bytes().to_vec(), up),
            recv_fin: false,
        }
    }

    pub fn pump(&mut self, conn: &mut quiche::Connection, id: u64) -> Result<()> {
        self.upload.pump(conn, id)
    }

    pub fn on_readable(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        if self.recv_fin {
            return Ok(());
        }
        let got = &mut self.got;
        self.recv_fin = read(conn, id, buf, |data| {
            *got += data.len() as u64;
            Ok(())
        })?;
        if self.got > self.down || (self.recv_fin && self.got != self.down) {
            bail!(
                "perf: asked for {} bytes, received {}{}",
                self.down,
                self.got,
                if self.recv_fin { "" } else { " so far" }
            );
        }
        Ok(())
    }

    /// The whole download arrived and the peer acknowledged all of the upload and its FIN:
    /// quiche forgets a stream (`stream_capacity` fails with `InvalidStreamState`) only once
    /// both hold, so an upload counts only what certainly arrived.
    pub fn done(&self, conn: &mut quiche::Connection, id: u64) -> Result<bool> {
        if !(self.recv_fin && self.upload.finished()) {
            return Ok(false);
        }
        match conn.stream_capacity(id) {
            Err(quiche::Error::InvalidStreamState(_)) => Ok(true),
            Err(quiche::Error::StreamStopped(code)) => {
                bail!("peer stopped the stream with code {code}")
            }
            Ok(_) => Ok(false),
            Err(e) => Err(e).context("stream_capacity"),
        }
    }
}

/// Client side of one hq-interop GET.
pub struct Get {
    pub path: String,
    request: Outgoing,
    pub body: Vec<u8>,
    recv_fin: bool,
}

impl Get {
    pub fn new(path: String) -> Get {
        let request = Outgoing::fill(format!("GET {path}\r\n").into_bytes(), 0);
        Get {
            path,
            request,
            body: Vec::new(),
            recv_fin: false,
        }
    }

    pub fn pump(&mut self, conn: &mut quiche::Connection, id: u64) -> Result<()> {
        self.request
            .pump(conn, id)
            .with_context(|| format!("GET {}", self.path))
    }

    pub fn on_readable(
        &mut self,
        conn: &mut quiche::Connection,
        id: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        if self.recv_fin {
            return Ok(());
        }
        let body = &mut self.body;
        self.recv_fin = read(conn, id, buf, |data| {
            if body.len() + data.len() > MAX_BODY {
                bail!("body longer than {MAX_BODY} bytes");
            }
            body.extend_from_slice(data);
            Ok(())
        })
        .with_context(|| format!("GET {}", self.path))?;
        Ok(())
    }

    pub fn done(&self) -> bool {
        self.recv_fin
    }
}
