//! Server role: one UDP socket, many connections routed by destination connection ID, each
//! bidirectional stream served with the protocol its connection negotiated by ALPN, until
//! SIGINT/SIGTERM; then every connection is closed with NO_ERROR and the process exits 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quench_tests::args::ServerArgs;
use quench_tests::serve;

use crate::close::{unclean_close, NO_ERROR};
use crate::config::{self, Cids, CID_LEN};
use crate::net::Net;
use crate::streams::{Protocol, ServerStream, REQUEST_REJECTED};

/// Connections served at once; Initials beyond this are dropped.
const MAX_CONNECTIONS: usize = 1024;
/// Smallest datagram a client's Initial may come in (RFC 9000 §14.1).
const MIN_INITIAL_DATAGRAM: usize = 1200;
/// Longest sleep between looks at the shutdown flag.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Transport error for an ALPN we do not serve (TLS alert no_application_protocol, RFC 9001
/// §8.1); quiche's TLS stack refuses one before this, so this only guards the match.
const NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;
/// Version Negotiation replies per wakeup, at most (datagrams for no connection that are
/// not Initials get no answer at all).
const MAX_REPLIES: usize = 64;

pub fn run(args: ServerArgs, early_data: bool) -> Result<()> {
    // Offer only what this peer speaks (as s2n-peer, no `echo`: see main.rs).
    let alpns: Vec<&str> = args
        .alpn
        .iter()
        .map(String::as_str)
        .filter(|a| config::ALPNS.contains(a))
        .collect();
    if alpns.is_empty() {
        bail!(
            "none of the ALPNs {:?} is one quiche-peer serves ({:?})",
            args.alpn,
            config::ALPNS
        );
    }
    let mut config = config::server(&args, &alpns)?;
    if early_data {
        config.enable_early_data();
    }
    let mut net = Net::bind(args.listen)?;
    let stop = shutdown_flag()?;
    serve::announce(net.local())?;

    let mut server = Server {
        config,
        local: net.local(),
        cids: Cids::open()?,
        root: args.root,
        conns: HashMap::new(),
        routes: HashMap::new(),
        next_id: 0,
        replies: Vec::new(),
        buf: vec![0; 64 * 1024],
    };
    let mut more_to_send = false;
    while !stop.load(Ordering::Relaxed) {
        let wait = if more_to_send {
            Duration::ZERO
        } else {
            server
                .conns
                .values()
                .filter_map(|c| c.quic.timeout())
                .min()
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT)
        };
        net.recv(wait, |datagram, from| server.on_datagram(datagram, from))?;
        for (reply, to) in std::mem::take(&mut server.replies) {
            if let Err(e) = net.send_to(&reply, to) {
                eprintln!("quiche-peer server: Version Negotiation to {to}: {e:#}");
            }
        }
        let now = Instant::now();
        more_to_send = false;
        for conn in server.conns.values_mut() {
            if conn.quic.timeout_instant().is_some_and(|t| t <= now) {
                conn.quic.on_timeout();
            }
            conn.serve(server.root.as_deref(), &mut server.buf);
            match net.flush(&mut conn.quic) {
                Ok(more) => more_to_send |= more,
                Err(e) => {
                    eprintln!("quiche-peer server: connection {}: {e:#}", conn.peer);
                    let _ = conn.quic.close(false, 0x1, b"internal error");
                }
            }
        }
        server.collect_closed();
    }

    // SIGINT/SIGTERM: close every connection, let the CONNECTION_CLOSEs out, exit 0.
    for conn in server.conns.values_mut() {
        match conn.quic.close(true, NO_ERROR, b"server shutting down") {
            Ok(()) | Err(quiche::Error::Done) => {}
            Err(e) => eprintln!("quiche-peer server: closing {}: {e}", conn.peer),
        }
        if let Err(e) = net.flush(&mut conn.quic) {
            eprintln!("quiche-peer server: closing {}: {e:#}", conn.peer);
        }
    }
    Ok(())
}

/// A flag set by the first SIGINT or SIGTERM. The handlers are in place when this returns,
/// so a signal sent once `listening on` is out cannot kill the process instead.
fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let installed = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let mut sigint = signal(SignalKind::interrupt())?;
                        let mut sigterm = signal(SignalKind::terminate())?;
                        let _ = ready_tx.send(Ok(()));
                        tokio::select! {
                            _ = sigint.recv() => {}
                            _ = sigterm.recv() => {}
                        }
                        flag.store(true, Ordering::Relaxed);
                        Ok(())
                    })
                });
            if let Err(e) = installed {
                let _ = ready_tx.send(Err(e));
            }
        })
        .context("starting the signal thread")?;
    ready_rx
        .recv()
        .map_err(|_| anyhow!("the signal thread ended early"))?
        .context("installing SIGINT/SIGTERM handlers")?;
    Ok(stop)
}

struct Server {
    config: quiche::Config,
    local: SocketAddr,
    cids: Cids,
    root: Option<PathBuf>,
    conns: HashMap<u64, Conn>,
    /// Connection IDs to connections: ours, and the client's original destination ID
    /// (until the client switches to ours, its Initials and Handshakes carry that).
    routes: HashMap<Vec<u8>, u64>,
    next_id: u64,
    /// Version Negotiation packets to send after this batch.
    replies: Vec<(Vec<u8>, SocketAddr)>,
    buf: Vec<u8>,
}

struct Conn {
    quic: quiche::Connection,
    peer: SocketAddr,
    routes: Vec<Vec<u8>>,
    protocol: Option<Protocol>,
    streams: HashMap<u64, ServerStream>,
}

impl Server {
    fn on_datagram(&mut self, datagram: &mut [u8], from: SocketAddr) {
        let Ok(header) = quiche::Header::from_slice(datagram, CID_LEN) else {
            return;
        };
        let len = datagram.len();
        let (id, fresh) = match self.routes.get(header.dcid.as_ref()) {
            Some(&id) => (id, false),
            None => match self.accept(&header, len, from) {
                Ok(Some(id)) => (id, true),
                Ok(None) => return,
                Err(e) => {
                    eprintln!("quiche-peer server: accepting {from}: {e:#}");
                    return;
                }
            },
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let info = quiche::RecvInfo {
            from,
            to: self.local,
        };
        // A packet quiche cannot use is dropped by it; a fatal error closes the connection,
        // which the loop then reports and collects. A connection whose very first datagram
        // failed never started (no timer would ever end it): forget it at once.
        if conn.quic.recv(datagram, info).is_err() && fresh {
            self.forget(id);
        }
    }

    /// A new connection for a client's first Initial; None for anything else unknown.
    fn accept(
        &mut self,
        header: &quiche::Header<'_>,
        len: usize,
        from: SocketAddr,
    ) -> Result<Option<u64>> {
        // RFC 9000 §14.1: a first datagram under 1200 bytes is discarded (not even Version
        // Negotiation answers it).
        if len < MIN_INITIAL_DATAGRAM {
            return Ok(None);
        }
        // Any long header but Version Negotiation's own carries a version; quiche reads the
        // type bits as v1's, so the version goes first (a v2 Initial looks like 0-RTT).
        let long = !matches!(
            header.ty,
            quiche::Type::Short | quiche::Type::VersionNegotiation
        );
        if long && !quiche::version_is_supported(header.version) {
            if self.replies.len() < MAX_REPLIES {
                let mut out = vec![0; 1350];
                let len = quiche::negotiate_version(&header.scid, &header.dcid, &mut out)?;
                out.truncate(len);
                self.replies.push((out, from));
            }
            return Ok(None);
        }
        if header.ty != quiche::Type::Initial || self.conns.len() >= MAX_CONNECTIONS {
            return Ok(None);
        }
        let scid = self.cids.next()?;
        let mut quic = quiche::accept(
            &quiche::ConnectionId::from_ref(&scid),
            None,
            self.local,
            from,
            &mut self.config,
        )?;
        config::keylog(&mut quic);
        let id = self.next_id;
        self.next_id += 1;
        let routes = vec![scid.to_vec(), header.dcid.as_ref().to_vec()];
        for route in &routes {
            self.routes.insert(route.clone(), id);
        }
        self.conns.insert(
            id,
            Conn {
                quic,
                peer: from,
                routes,
                protocol: None,
                streams: HashMap::new(),
            },
        );
        Ok(Some(id))
    }

    /// Forgets connections quiche is done with, saying why if it was not a clean end.
    fn collect_closed(&mut self) {
        let closed: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.quic.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in closed {
            let Some(conn) = self.forget(id) else {
                continue;
            };
            if let Some(problem) = unclean_close(&conn.quic) {
                eprintln!("quiche-peer server: connection {}: {problem}", conn.peer);
            }
        }
    }

    /// Removes connection `id` and its routes.
    fn forget(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        for route in &conn.routes {
            self.routes.remove(route);
        }
        Some(conn)
    }
}

impl Conn {
    /// Reads every readable stream, writes every stream with something to send.
    fn serve(&mut self, root: Option<&std::path::Path>, buf: &mut [u8]) {
        let usable = self.quic.is_established() || self.quic.is_in_early_data();
        if !usable || self.quic.is_closed() || self.quic.is_draining() {
            return;
        }
        let protocol = match self.protocol {
            Some(p) => p,
            None => match self.quic.application_proto() {
                b"perf" => *self.protocol.insert(Protocol::Perf),
                b"hq-interop" => *self.protocol.insert(Protocol::HqInterop),
                other => {
                    eprintln!(
                        "quiche-peer server: connection {}: unsupported ALPN {:?}",
                        self.peer,
                        String::from_utf8_lossy(other)
                    );
                    let _ = self
                        .quic
                        .close(false, NO_APPLICATION_PROTOCOL, b"unsupported ALPN");
                    return;
                }
            },
        };
        for id in self.quic.readable() {
            // Only bidirectional streams carry requests (the client may open no others:
            // its unidirectional stream limit is 0).
            if id & 0x2 != 0 {
                continue;
            }
            let stream = self
                .streams
                .entry(id)
                .or_insert_with(|| ServerStream::new(protocol));
            if let Err(e) = stream.on_readable(&mut self.quic, id, buf, root) {
                self.reject(id, &e);
            }
        }
        let mut failed = Vec::new();
        for (&id, stream) in &mut self.streams {
            if let Err(e) = stream.pump(&mut self.quic, id) {
                failed.push((id, e));
            }
        }
        for (id, e) in failed {
            self.reject(id, &e);
        }
        self.streams.retain(|_, s| !s.done());
    }

    /// Abandons stream `id` both ways with REQUEST_REJECTED.
    fn reject(&mut self, id: u64, e: &anyhow::Error) {
        eprintln!(
            "quiche-peer server: connection {}: stream {id}: {e:#}",
            self.peer
        );
        let _ = self
            .quic
            .stream_shutdown(id, quiche::Shutdown::Write, REQUEST_REJECTED);
        let _ = self
            .quic
            .stream_shutdown(id, quiche::Shutdown::Read, REQUEST_REJECTED);
        self.streams.remove(&id);
    }
}
