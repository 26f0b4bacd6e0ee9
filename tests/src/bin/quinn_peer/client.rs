//! Client role: open `--conns` connections, run `--streams` perf streams (or the hq-interop
//! GETs) on each concurrently, then print one JSON report line.
//!
//! `--down`/`--up` are totals for the whole run, split as evenly as possible over all
//! streams of all connections (the first streams take the remainder).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use quench_tests::report::Report;
use quench_tests::{args, hq, perf, share};
use quinn::VarInt;
use tokio::task::JoinSet;

use crate::{datagram, tls};

/// How long to wait for our CONNECTION_CLOSE to go out before exiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared client contract plus quinn-only extras.
#[derive(Args)]
pub struct QuinnClientArgs {
    #[command(flatten)]
    common: args::ClientArgs,
    /// One UDP socket (source port) per connection instead of one for all.
    #[arg(long)]
    socket_per_conn: bool,
    /// Move each connection's endpoint to a fresh socket (new source port: a NAT
    /// rebinding as the server sees it) once it has received this many bytes. With
    /// `--socket-per-conn` every connection moves on its own.
    #[arg(long)]
    rebind_after: Option<u64>,
    /// Before the transfer, open one connection and wait until the server hands it a
    /// NEW_TOKEN token (RFC 9000 §8.1.3), then close it: the transfer's first connection
    /// presents that token. Prints the tokens received and used on stderr.
    #[arg(long)]
    token_warm_up: bool,
    /// 0-RTT (RFC 9001 §4.6): a warm-up connection makes one small perf request, by whose
    /// answer the server's session tickets have arrived, then every transfer connection
    /// sends its requests as early data, before its handshake completes. The report's
    /// `early_data` counts the connections whose early data the server accepted (quinn
    /// sends the rest again in 1-RTT packets).
    #[arg(long)]
    early_data: bool,
}

/// quinn's own token cache, counting what goes in and out.
#[derive(Default)]
struct CountingTokens {
    cache: quinn::TokenMemoryCache,
    received: AtomicU64,
    used: AtomicU64,
}

impl quinn::TokenStore for CountingTokens {
    fn insert(&self, server_name: &str, token: bytes::Bytes) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(server_name, token);
    }

    fn take(&self, server_name: &str) -> Option<bytes::Bytes> {
        let token = self.cache.take(server_name);
        if token.is_some() {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
        token
    }
}

/// Watches a connection's received bytes: forces one key update, and rebinds its endpoint
/// to a fresh socket, each once past its threshold.
pub struct ReceiveTriggers {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    bind: SocketAddr,
    key_update_after: Option<u64>,
    rebind_after: Option<u64>,
    received: AtomicU64,
    key_updated: AtomicBool,
    rebound: AtomicBool,
}

/// True the first time `total` reaches `threshold` (`done` remembers it).
fn first_crossing(threshold: Option<u64>, total: u64, done: &AtomicBool) -> bool {
    threshold.is_some_and(|t| total >= t) && !done.swap(true, Ordering::Relaxed)
}

impl ReceiveTriggers {
    fn new(
        conn: quinn::Connection,
        endpoint: quinn::Endpoint,
        bind: SocketAddr,
        key_update_after: Option<u64>,
        rebind_after: Option<u64>,
    ) -> Self {
        Self {
            conn,
            endpoint,
            bind,
            key_update_after,
            rebind_after,
            received: AtomicU64::new(0),
            key_updated: AtomicBool::new(false),
            rebound: AtomicBool::new(false),
        }
    }

    pub fn on_received(&self, bytes: u64) {
        if self.key_update_after.is_none() && self.rebind_after.is_none() {
            return;
        }
        let total = self.received.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if first_crossing(self.key_update_after, total, &self.key_updated) {
            self.conn.force_key_update();
        }
        if first_crossing(self.rebind_after, total, &self.rebound) {
            match std::net::UdpSocket::bind(self.bind).and_then(|s| self.endpoint.rebind(s)) {
                Ok(()) => eprintln!("rebound to {:?}", self.endpoint.local_addr()),
                Err(e) => eprintln!("rebinding failed: {e}"),
            }
        }
    }

    fn key_updated(&self) -> bool {
        self.key_updated.load(Ordering::Relaxed)
    }
}

pub async fn run(args: QuinnClientArgs) -> Result<()> {
    let QuinnClientArgs {
        common,
        socket_per_conn,
        rebind_after,
        token_warm_up,
        early_data,
    } = args;
    let args = &common;
    if early_data && args.alpn != "perf" {
        return Err(anyhow!("--early-data makes perf requests (--alpn perf)"));
    }
    let mut config = tls::client_config(args.verify()?, &args.alpn, early_data)?;
    let tokens = Arc::new(CountingTokens::default());
    config.token_store(tokens.clone());
    let server = tokio::net::lookup_host(&args.connect)
        .await
        .with_context(|| format!("resolving {}", args.connect))?
        .next()
        .ok_or_else(|| anyhow!("{} resolves to no address", args.connect))?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let new_endpoint = || -> Result<quinn::Endpoint> {
        let mut e = quinn::Endpoint::client(bind).context("binding client socket")?;
        e.set_default_client_config(config.clone());
        Ok(e)
    };
    let shared = new_endpoint()?;
    let mut endpoints = vec![shared.clone()];
    if token_warm_up {
        let conn = shared
            .connect(server, &args.server_name)?
            .await
            .context("warm-up handshake")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokens.received.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return Err(anyhow!("no NEW_TOKEN from the server within 5 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        conn.close(VarInt::from_u32(0), b"warm-up done");
    }
    if early_data {
        let conn = shared
            .connect(server, &args.server_name)?
            .await
            .context("warm-up handshake")?;
        let (send, recv) = conn.open_bi().await.context("warm-up stream")?;
        perf::request(send, recv, 1, 0, |_| {})
            .await
            .context("warm-up request")?;
        conn.close(VarInt::from_u32(0), b"warm-up done");
    }

    let start = Instant::now();
    let mut handshakes = JoinSet::new();
    let mut conns = Vec::with_capacity(args.conns as usize);
    let mut early = Vec::new();
    let mut early_requests = JoinSet::new();
    for index in 0..args.conns {
        let endpoint = if socket_per_conn && index > 0 {
            let e = new_endpoint()?;
            endpoints.push(e.clone());
            e
        } else {
            shared.clone()
        };
        let connecting = endpoint.connect(server, &args.server_name)?;
        if early_data {
            // The connection is usable at once, and its requests start now, before its
            // handshake can complete: they go out as early data.
            let begun = Instant::now();
            let (conn, accepted) = connecting
                .into_0rtt()
                .map_err(|_| anyhow!("no session ticket allowing 0-RTT for connection {index}"))?;
            // Resolves when the handshake completes: the handshake time, and the verdict.
            early.push(tokio::spawn(
                async move { (accepted.await, begun.elapsed()) },
            ));
            let conn = Arc::new(ReceiveTriggers::new(
                conn,
                endpoint,
                bind,
                args.key_update_after,
                rebind_after,
            ));
            spawn_early_perf_streams(&mut early_requests, args, index, &conn).await?;
            conns.push((index, conn));
            continue;
        }
        handshakes.spawn(async move {
            let begun = Instant::now();
            let conn = connecting.await.context("handshake")?;
            Ok::<_, anyhow::Error>((index, conn, endpoint, begun.elapsed()))
        });
    }
    let mut handshake_total = Duration::ZERO;
    while let Some(joined) = handshakes.join_next().await {
        let (index, conn, endpoint, took) = joined??;
        handshake_total += took;
        conns.push((
            index,
            Arc::new(ReceiveTriggers::new(
                conn,
                endpoint,
                bind,
                args.key_update_after,
                rebind_after,
            )),
        ));
    }
    conns.sort_by_key(|(index, _)| *index);
    let conns: Vec<Arc<ReceiveTriggers>> = conns.into_iter().map(|(_, c)| c).collect();

    let mut report = match args.alpn.as_str() {
        "perf" if early_data => collect_perf(early_requests).await?,
        "perf" => run_perf(args, &conns).await?,
        "echo" => run_datagrams(args, &conns).await?,
        _ => run_hq(args, &conns).await?,
    };
    if early_data {
        let mut accepted = 0;
        for verdict in early {
            let (ok, took) = verdict.await?;
            accepted += u64::from(ok);
            handshake_total += took;
        }
        report.early_data = Some(accepted);
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.handshake_ms = handshake_total.as_secs_f64() * 1e3 / conns.len() as f64;
    report.key_updates = conns.iter().filter(|c| c.key_updated()).count() as u64;
    report.max_datagram_size = conns
        .iter()
        .map(|c| u64::from(c.conn.stats().path.current_mtu))
        .max();

    for c in &conns {
        c.conn.close(VarInt::from_u32(0), b"done");
    }
    let idle = async {
        for e in &endpoints {
            e.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, idle).await;
    eprintln!(
        "NEW_TOKEN tokens received {}, used {}",
        tokens.received.load(Ordering::Relaxed),
        tokens.used.load(Ordering::Relaxed)
    );
    println!("{}", report.to_json_line());
    Ok(())
}

async fn run_perf(args: &args::ClientArgs, conns: &[Arc<ReceiveTriggers>]) -> Result<Report> {
    let mut tasks = JoinSet::new();
    for (c, conn) in conns.iter().enumerate() {
        spawn_perf_streams(&mut tasks, args, c as u64, conn);
    }
    collect_perf(tasks).await
}

/// Starts connection `c`'s share of the perf streams.
fn spawn_perf_streams(
    tasks: &mut JoinSet<Result<perf::Transfer>>,
    args: &args::ClientArgs,
    c: u64,
    conn: &Arc<ReceiveTriggers>,
) {
    let total_streams = args.conns * args.streams;
    for s in 0..args.streams {
        let index = c * args.streams + s;
        let down = share(args.down, total_streams, index);
        let up = share(args.up, total_streams, index);
        let conn = conn.clone();
        tasks.spawn(async move {
            let (send, recv) = conn.conn.open_bi().await.context("opening stream")?;
            perf::request(send, recv, down, up, |n| conn.on_received(n)).await
        });
    }
}

/// `spawn_perf_streams` for a connection still in its handshake: each stream is opened and
/// its request header written here, before anything else runs, so the requests go out as
/// early data however late the spawned tasks get to run (on a loaded host they could
/// otherwise start after the handshake, and send nothing as 0-RTT).
async fn spawn_early_perf_streams(
    tasks: &mut JoinSet<Result<perf::Transfer>>,
    args: &args::ClientArgs,
    c: u64,
    conn: &Arc<ReceiveTriggers>,
) -> Result<()> {
    let total_streams = args.conns * args.streams;
    for s in 0..args.streams {
        let index = c * args.streams + s;
        let down = share(args.down, total_streams, index);
        let up = share(args.up, total_streams, index);
        let (mut send, recv) = conn.conn.open_bi().await.context("opening stream")?;
        perf::send_request_header(&mut send, down).await?;
        let conn = conn.clone();
        tasks.spawn(async move {
            perf::request_after_header(send, recv, down, up, |n| conn.on_received(n)).await
        });
    }
    Ok(())
}

async fn collect_perf(mut tasks: JoinSet<Result<perf::Transfer>>) -> Result<Report> {
    let mut report = Report::default();
    while let Some(joined) = tasks.join_next().await {
        let transfer = joined??;
        report.bytes_down += transfer.down;
        report.bytes_up += transfer.up;
        report.streams += 1;
    }
    Ok(report)
}

async fn run_datagrams(args: &args::ClientArgs, conns: &[Arc<ReceiveTriggers>]) -> Result<Report> {
    let mut tasks = JoinSet::new();
    for conn in conns {
        let (conn, count) = (conn.clone(), args.datagrams);
        tasks.spawn(async move { datagram::echo(&conn.conn, count).await });
    }
    let mut report = Report::default();
    let (mut sent, mut echoed_total) = (0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (echoed, down, up) = joined??;
        report.bytes_down += down;
        report.bytes_up += up;
        sent += u64::from(args.datagrams);
        echoed_total += u64::from(echoed);
    }
    report.datagrams_sent = Some(sent);
    report.datagrams_echoed = Some(echoed_total);
    Ok(report)
}

async fn run_hq(args: &args::ClientArgs, conns: &[Arc<ReceiveTriggers>]) -> Result<Report> {
    let paths = hq::paths(&args.get, args.down, args.conns * args.streams);
    let mut tasks = JoinSet::new();
    for (index, path) in paths.iter().enumerate() {
        let conn = conns[index % conns.len()].clone();
        let path = path.clone();
        tasks.spawn(async move {
            let (send, recv) = conn.conn.open_bi().await.context("opening stream")?;
            let body = hq::get(send, recv, &path, |n| conn.on_received(n)).await?;
            Ok::<_, anyhow::Error>((index, body))
        });
    }
    let mut bodies: Vec<Vec<u8>> = vec![Vec::new(); paths.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, body) = joined??;
        bodies[index] = body;
    }
    Ok(hq::report(&bodies))
}
