//! `quench serve --metrics ADDR`: plain HTTP answering `GET /metrics` with the stats in the
//! Prometheus text format, for a scraper.
//!
//! The stats belong to the thread running the server, so the endpoint hands each scrape
//! over a channel and that thread answers it ([`MetricsEndpoint::serve_pending`]), at its
//! next tick. Written here rather than with a server crate: one route, a few connections
//! at a time, each held at most twice [`CLIENT_DEADLINE`] from accept to close whatever
//! the client does; a crate would bring more surface than it saves.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::prometheus::CONTENT_TYPE;

/// The most a request head may take; a scraper's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// How long reading the request and waiting for the server's thread may take, and then
/// again writing the response and draining what the client still sends: a connection
/// lasts at most twice this, whatever the client does.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Connections handled at once; more are closed at accept. A client that can reach the
/// endpoint can hold these slots (bind it where only the scraper can).
const MAX_CONNECTIONS: usize = 4;
/// Scrapes handed over and not yet answered; beyond them the server's thread is not
/// keeping up, and a scrape gets 503 at once.
const PENDING: usize = 4;
/// How often the idle listener looks for a shutdown.
const POLL: Duration = Duration::from_millis(50);

/// A scrape waiting for the stats: the rendered text goes back through it.
type Scrape = SyncSender<String>;

pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    scrapes: Receiver<Scrape>,
    stop: Arc<AtomicBool>,
}

impl MetricsEndpoint {
    /// Binds `addr` and starts answering on a thread of its own.
    pub fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let (tx, scrapes) = mpsc::sync_channel(PENDING);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept_loop(listener, tx, stopped))?;
        Ok(Self {
            local_addr,
            scrapes,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answers the scrapes waiting, each with what `render` returns. Call it often (the
    /// server's main loop does, every 50 ms) from the thread that owns the stats.
    pub fn serve_pending(&self, mut render: impl FnMut() -> String) {
        loop {
            match self.scrapes.try_recv() {
                // The scrape may have given up meanwhile: nothing to do about it.
                Ok(reply) => drop(reply.try_send(render())),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: TcpListener, scrapes: SyncSender<Scrape>, stop: Arc<AtomicBool>) {
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    tracing::debug!(%peer, "metrics endpoint busy; connection closed");
                    continue;
                }
                let slot = Slot(Arc::clone(&busy));
                let scrapes = scrapes.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = answer(stream, &scrapes) {
                            tracing::debug!(%peer, %e, "metrics request failed");
                        }
                    });
                // On failure the closure, and the slot in it, is dropped: the slot is free.
                if let Err(e) = spawned {
                    tracing::warn!(%e, "metrics endpoint: no thread for a connection");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(%e, "metrics endpoint: accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// A connection's place among the [`MAX_CONNECTIONS`], given back when dropped (also if
/// its thread panics).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    Bad,
}

fn answer(mut stream: TcpStream, scrapes: &SyncSender<Scrape>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let head = read_head(&mut stream, deadline)?;
    let request = parse(&head);
    let head_only = matches!(request, Request::Metrics { head_only: true });
    let (status, body) = match request {
        Request::Metrics { .. } => match scrape(scrapes, deadline) {
            Some(text) => ("200 OK", text),
            None => ("503 Service Unavailable", "stats unavailable\n".into()),
        },
        Request::NotFound => ("404 Not Found", "try /metrics\n".into()),
        Request::MethodNotAllowed => ("405 Method Not Allowed", String::new()),
        Request::Bad => ("400 Bad Request", String::new()),
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    // RFC 9110 §9.3.2: no content in a response to HEAD, whatever the status.
    if !head_only {
        response.push_str(&body);
    }
    // A budget of its own: a request that used all of its own still gets its answer.
    let deadline = Instant::now() + CLIENT_DEADLINE;
    write_by(&mut stream, response.as_bytes(), deadline)?;
    linger_close(stream, deadline)
}

/// `write_all`, given up at `deadline`: a client reading slowly cannot stretch it.
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends the response, then reads what the client may still be sending, until `deadline`
/// at the latest, before closing: closing with unread input makes the kernel reset the
/// connection, which can destroy the response before the client reads it.
fn linger_close(mut stream: TcpStream, deadline: Instant) -> io::Result<()> {
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// Reads up to the blank line ending the head, within `deadline` and [`MAX_REQUEST`]
/// bytes; a head that does not end by then is returned as it is (and found bad).
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n.min(MAX_REQUEST - head.len())]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        }
    }
    Ok(head)
}

fn parse(head: &[u8]) -> Request {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Request::Bad;
    };
    let Ok(head) = std::str::from_utf8(&head[..end]) else {
        return Request::Bad;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Request::Metrics { head_only }
    } else {
        Request::NotFound
    }
}

/// The stats from the server's thread, or `None` if it does not answer by `deadline`.
fn scrape(scrapes: &SyncSender<Scrape>, deadline: Instant) -> Option<String> {
    let (tx, rx) = mpsc::sync_channel(1);
    scrapes.try_send(tx).ok()?;
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_strictly() {
        let cases: &[(&[u8], Request)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (
                b"GET /metrics?name[]=a HTTP/1.0\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Request::Metrics { head_only: true },
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::MethodNotAllowed),
            (b"GET /metrics HTTP/1.1\r\n", Request::Bad),
            (b"GET /metrics\r\n\r\n", Request::Bad),
            (b"GET /metrics SPDY/3\r\n\r\n", Request::Bad),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Request::Bad),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Request::Bad),
            (b"", Request::Bad),
        ];
        for (head, want) in cases {
            assert_eq!(&parse(head), want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    fn request(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn scrapes_are_answered_by_the_owning_thread() {
        let endpoint = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let owner = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    endpoint.serve_pending(|| {
                        n += 1;
                        format!("quench_scrapes_total {n}\n")
                    });
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("\r\n\r\nquench_scrapes_total 1\n"), "{ok}");
        let head = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.ends_with("Content-Length: 23\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        assert!(request(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let post = request(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
        let huge = vec![b'a'; 3 * MAX_REQUEST];
        assert!(request(addr, &huge).starts_with("HTTP/1.1 400"));
        // A client that never finishes its request is cut off at the deadline; the next
        // scrape is answered.
        let mut silent = TcpStream::connect(addr).unwrap();
        silent.write_all(b"GET /metr").unwrap();
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.ends_with("quench_scrapes_total 3\n"), "{ok}");
        let mut rest = String::new();
        silent.read_to_string(&mut rest).unwrap();
        assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
        drop(silent);
        std::thread::sleep(Duration::from_millis(300));
        // Clients holding every slot: one more is closed unanswered, and once they time
        // out scrapes are answered again.
        let holders: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut extra = TcpStream::connect(addr).unwrap();
        let mut got = Vec::new();
        let _ = extra.read_to_end(&mut got);
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        std::thread::sleep(CLIENT_DEADLINE + Duration::from_secs(1));
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.ends_with("quench_scrapes_total 4\n"), "{ok}");
        drop(holders);
        stop.store(true, Ordering::Relaxed);
        owner.join().unwrap();
    }

    #[test]
    fn a_server_thread_that_does_not_answer_gives_503() {
        let endpoint = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let out = request(endpoint.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        let head = request(endpoint.local_addr(), b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");
        drop(endpoint);
    }

    proptest::proptest! {
        /// Any bytes parse to some answer, never a panic; a well-formed GET is for
        /// `/metrics` exactly when its path (before any query) is.
        #[test]
        fn request_heads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn only_the_metrics_path_is_served(path in "/[a-z/?=]{0,12}") {
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let want = path.split('?').next() == Some("/metrics");
            proptest::prop_assert_eq!(
                parse(head.as_bytes()) == Request::Metrics { head_only: false },
                want
            );
        }
    }
}
