//! Client role: `--conns` connections from one UDP socket (told apart by the connection IDs
//! we chose), `--streams` perf streams on each (or the hq-interop GETs, round-robin over the
//! connections), all driven by one event loop; then one JSON report line. `--down`/`--up`
//! are totals split over all streams of all connections, as for every peer.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quench_tests::args::ClientArgs;
use quench_tests::report::Report;
use quench_tests::{hq, share};

use crate::close::{describe, unclean_close, NO_ERROR};
use crate::config::{self, Cids, CID_LEN};
use crate::net::Net;
use crate::streams::{Get, PerfRequest};

/// Application error code of the CONNECTION_CLOSE that ends a failed run.
const CLIENT_ERROR: u64 = 0x1;
/// Longest sleep when no timer is due sooner.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Limits on `--conns` and on streams in all (every stream's state is held until the end).
const MAX_CONNS: u64 = 1024;
const MAX_STREAMS: u64 = 100_000;

/// `early_data` (with `resume`): requests go out as 0-RTT where the ticket allows.
pub fn run(args: ClientArgs, resume: bool, early_data: bool) -> Result<()> {
    if args.alpn == "echo" {
        bail!("quiche-peer does not speak `echo` (DATAGRAM): only perf and hq-interop");
    }
    if args.key_update_after.is_some() {
        bail!("quiche-peer cannot force a key update: quiche 0.24 has no API to start one");
    }
    if args.datagrams > 0 {
        bail!("--datagrams needs `--alpn echo`, which quiche-peer does not speak");
    }
    if args.conns > MAX_CONNS || args.conns.saturating_mul(args.streams) > MAX_STREAMS {
        bail!("at most {MAX_CONNS} connections and {MAX_STREAMS} streams in all");
    }
    let server = args
        .connect
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.connect))?
        .next()
        .ok_or_else(|| anyhow!("{} resolves to no address", args.connect))?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut net = Net::bind(bind)?;
    // Bound to the unspecified address: quiche only needs the same local address for a
    // path each time, so this one stands for it.
    let local = net.local();
    let mut config = config::client(args.verify()?, &args.alpn)?;
    if early_data {
        config.enable_early_data();
    }
    let mut cids = Cids::open()?;
    let session = if resume {
        Some(warm_up(
            &mut net,
            &mut config,
            &mut cids,
            &args.server_name,
            server,
        )?)
    } else {
        None
    };

    // What each connection will do, in stream order.
    let total_streams = args.conns * args.streams;
    let mut work: Vec<VecDeque<Work>> = (0..args.conns).map(|_| VecDeque::new()).collect();
    let paths = if args.alpn == "perf" {
        for index in 0..total_streams {
            let down = share(args.down, total_streams, index);
            let up = share(args.up, total_streams, index);
            work[(index / args.streams) as usize].push_back(Work::Perf(PerfRequest::new(down, up)));
        }
        Vec::new()
    } else {
        let paths = hq::paths(&args.get, args.down, total_streams);
        for (index, path) in paths.iter().enumerate() {
            work[index % args.conns as usize].push_back(Work::Get(index, Get::new(path.clone())));
        }
        paths
    };

    let start = Instant::now();
    let mut conns = Vec::with_capacity(work.len());
    let mut routes = HashMap::new();
    for (index, queue) in work.into_iter().enumerate() {
        let scid = cids.next()?;
        let mut quic = quiche::connect(
            Some(&args.server_name),
            &quiche::ConnectionId::from_ref(&scid),
            local,
            server,
            &mut config,
        )
        .context("starting a connection")?;
        if let Some(session) = &session {
            quic.set_session(session)
                .context("setting the session to resume")?;
        }
        config::keylog(&mut quic);
        routes.insert(scid.to_vec(), index);
        conns.push(Conn {
            quic,
            begun: Instant::now(),
            handshake: None,
            queue,
            open: Vec::new(),
            next_stream: 0,
        });
    }

    let mut bodies: Vec<Vec<u8>> = vec![Vec::new(); paths.len()];
    let mut report = match drive(&mut net, &mut conns, &routes, server, &mut bodies) {
        Ok(report) => report,
        Err(e) => {
            // Tell the server rather than leave it to its idle timer.
            let _ = close_all(&mut net, &mut conns, CLIENT_ERROR);
            return Err(e);
        }
    };
    report.seconds = start.elapsed().as_secs_f64();
    let handshakes: Duration = conns.iter().filter_map(|c| c.handshake).sum();
    report.handshake_ms = handshakes.as_secs_f64() * 1e3 / conns.len() as f64;
    if args.alpn != "perf" {
        report = Report {
            seconds: report.seconds,
            handshake_ms: report.handshake_ms,
            ..hq::report(&bodies)
        };
    }
    // quiche does not expose its key phase: a key update the server starts is followed but
    // not counted (and this client starts none).
    report.key_updates = 0;
    // The largest datagram quiche sends on these connections (path MTU discovery is off:
    // the configured 1452, or less if the server takes less).
    report.max_datagram_size = conns
        .iter()
        .map(|c| c.quic.max_send_udp_payload_size() as u64)
        .max();

    report.resumed = session.map(|_| conns.iter().filter(|c| c.quic.is_resumed()).count() as u64);

    close_all(&mut net, &mut conns, NO_ERROR)?;
    println!("{}", report.to_json_line());
    Ok(())
}

/// `--resume`: one connection, driven until it is established and the server's session
/// ticket has arrived (quiche then holds the serialized session), then closed.
fn warm_up(
    net: &mut Net,
    config: &mut quiche::Config,
    cids: &mut Cids,
    server_name: &str,
    server: SocketAddr,
) -> Result<Vec<u8>> {
    let local = net.local();
    let scid = cids.next()?;
    let mut quic = quiche::connect(
        Some(server_name),
        &quiche::ConnectionId::from_ref(&scid),
        local,
        server,
        config,
    )
    .context("starting the warm-up connection")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        net.flush(&mut quic)?;
        if quic.is_established() {
            if let Some(session) = quic.session() {
                let session = session.to_vec();
                match quic.close(true, NO_ERROR, b"warm-up done") {
                    Ok(()) | Err(quiche::Error::Done) => {}
                    Err(e) => return Err(e).context("closing the warm-up connection"),
                }
                net.flush(&mut quic)?;
                eprintln!(
                    "session ticket received: {} bytes of session",
                    session.len()
                );
                return Ok(session);
            }
        }
        if quic.is_closed() {
            bail!("warm-up connection ended: {:?}", quic.peer_error());
        }
        if Instant::now() > deadline {
            bail!("no session ticket from the server within 5 s");
        }
        let wait = quic.timeout().unwrap_or(MAX_WAIT).min(MAX_WAIT);
        net.recv(wait, |datagram, from| {
            let _ = quic.recv(datagram, quiche::RecvInfo { from, to: local });
        })?;
        if quic.timeout_instant().is_some_and(|t| t <= Instant::now()) {
            quic.on_timeout();
        }
    }
}

/// Runs every connection's streams to the end; the report counts streams and perf bytes.
fn drive(
    net: &mut Net,
    conns: &mut [Conn],
    routes: &HashMap<Vec<u8>, usize>,
    server: SocketAddr,
    bodies: &mut [Vec<u8>],
) -> Result<Report> {
    let local = net.local();
    let mut report = Report::default();
    let mut buf = vec![0u8; 64 * 1024];
    // The Initials are ready to go: send them before waiting for anything.
    let mut more_to_send = true;
    loop {
        let wait = if more_to_send {
            Duration::ZERO
        } else {
            conns
                .iter()
                .filter_map(|c| c.quic.timeout())
                .min()
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT)
        };
        net.recv(wait, |datagram, from| {
            let Ok(header) = quiche::Header::from_slice(datagram, CID_LEN) else {
                return;
            };
            let Some(&index) = routes.get(header.dcid.as_ref()) else {
                return;
            };
            let info = quiche::RecvInfo { from, to: local };
            // quiche drops what it cannot use and closes the connection on what is fatal;
            // the loop below reports the latter.
            let _ = conns[index].quic.recv(datagram, info);
        })?;
        let now = Instant::now();
        let mut all_done = true;
        for conn in conns.iter_mut() {
            if conn.quic.timeout_instant().is_some_and(|t| t <= now) {
                conn.quic.on_timeout();
            }
            if conn.quic.is_closed() || conn.quic.is_draining() {
                bail!("{}", conn.failure(server));
            }
            if conn.quic.is_established() {
                conn.handshake.get_or_insert_with(|| conn.begun.elapsed());
            }
            if conn.quic.is_established() || conn.quic.is_in_early_data() {
                conn.step(&mut buf, &mut report, bodies)?;
            }
            all_done &= conn.queue.is_empty() && conn.open.is_empty();
        }
        if all_done {
            break;
        }
        more_to_send = false;
        for conn in conns.iter_mut() {
            more_to_send |= net.flush(&mut conn.quic)?;
            // The first flight made the 0-RTT keys: go round at once, so the requests
            // leave as early data before the server's answer completes the handshake.
            more_to_send |= conn.quic.is_in_early_data() && !conn.queue.is_empty();
        }
    }
    Ok(report)
}

/// Closes every connection with application error `code` and sends the CONNECTION_CLOSEs.
/// quiche would then wait out a closing period (RFC 9000 §10.2) only to repeat them; on
/// loopback one copy arrives, and the server's own idle timer covers the rare loss.
fn close_all(net: &mut Net, conns: &mut [Conn], code: u64) -> Result<()> {
    for conn in conns.iter_mut() {
        match conn.quic.close(true, code, b"") {
            Ok(()) | Err(quiche::Error::Done) => {}
            Err(e) => return Err(e).context("closing"),
        }
        net.flush(&mut conn.quic)?;
    }
    Ok(())
}

enum Work {
    Perf(PerfRequest),
    /// An hq-interop GET and its index in `--get` order.
    Get(usize, Get),
}

struct Conn {
    quic: quiche::Connection,
    begun: Instant,
    handshake: Option<Duration>,
    /// Streams not yet opened (the server's stream limit may hold them back).
    queue: VecDeque<Work>,
    /// Open streams and their IDs.
    open: Vec<(u64, Work)>,
    next_stream: u64,
}

impl Conn {
    /// Opens what the stream limit allows, reads and writes every open stream, and retires
    /// those that are over into `report` / `bodies`.
    fn step(&mut self, buf: &mut [u8], report: &mut Report, bodies: &mut [Vec<u8>]) -> Result<()> {
        while !self.queue.is_empty() && self.quic.peer_streams_left_bidi() > 0 {
            let id = self.next_stream;
            // An empty write creates the stream, taking one of the server's stream credits.
            self.quic
                .stream_send(id, &[], false)
                .with_context(|| format!("opening stream {id}"))?;
            self.next_stream += 4;
            if let Some(work) = self.queue.pop_front() {
                self.open.push((id, work));
            }
        }
        for (id, work) in &mut self.open {
            let id = *id;
            match work {
                Work::Perf(perf) => {
                    perf.on_readable(&mut self.quic, id, buf)
                        .with_context(|| format!("perf stream {id}"))?;
                    perf.pump(&mut self.quic, id)
                        .with_context(|| format!("perf stream {id}"))?;
                }
                Work::Get(_, get) => {
                    get.on_readable(&mut self.quic, id, buf)?;
                    get.pump(&mut self.quic, id)?;
                }
            }
        }
        let mut still_open = Vec::with_capacity(self.open.len());
        for (id, work) in self.open.drain(..) {
            let done = match &work {
                Work::Perf(perf) => perf
                    .done(&mut self.quic, id)
                    .with_context(|| format!("perf stream {id}"))?,
                Work::Get(_, get) => get.done(),
            };
            if !done {
                still_open.push((id, work));
                continue;
            }
            report.streams += 1;
            match work {
                Work::Perf(perf) => {
                    report.bytes_down += perf.down;
                    report.bytes_up += perf.up;
                }
                Work::Get(index, get) => bodies[index] = get.body,
            }
        }
        self.open = still_open;
        Ok(())
    }

    /// Why the connection ended before the run did.
    fn failure(&self, server: SocketAddr) -> String {
        let why = unclean_close(&self.quic)
            .or_else(|| {
                self.quic
                    .peer_error()
                    .map(|e| format!("closed by the peer: {}", describe(e)))
            })
            .unwrap_or_else(|| "closed".to_string());
        if self.quic.is_established() {
            format!("connection to {server} ended early: {why}")
        } else {
            format!("handshake with {server} failed: {why}")
        }
    }
}
