//! Client role: open `--conns` connections, run `--streams` perf streams (or the hq-interop
//! GETs) on each concurrently, then print one JSON report line. `--down`/`--up` are totals
//! split over all streams of all connections, as for every peer (`quench_tests::share`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quench_tests::args::ClientArgs;
use quench_tests::report::Report;
use quench_tests::{hq, perf, share};
use s2n_quic::client::Connect;
use s2n_quic::connection::Handle;
use tokio::task::JoinSet;

use crate::config;

/// How long to wait for our CONNECTION_CLOSE to go out before exiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Application error code of the CONNECTION_CLOSE that ends a successful run.
const NO_ERROR: u32 = 0;

pub async fn run(args: ClientArgs) -> Result<()> {
    if args.alpn == "echo" {
        bail!("s2n-peer does not speak `echo`: s2n-quic's DATAGRAM API is unstable");
    }
    if args.key_update_after.is_some() {
        bail!("s2n-peer cannot force a key update: s2n-quic has no API for it");
    }
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
    let mut client = s2n_quic::Client::builder()
        .with_tls(config::client_tls(args.verify()?, &args.alpn)?)?
        .with_io(bind)?
        .with_limits(config::limits()?)?
        .start()
        .map_err(|e| anyhow!("starting the s2n-quic client: {e}"))?;

    let start = Instant::now();
    let mut handshakes = JoinSet::new();
    for index in 0..args.conns {
        let connect = Connect::new(server).with_server_name(args.server_name.as_str());
        let attempt = client.connect(connect);
        handshakes.spawn(async move {
            let begun = Instant::now();
            let conn = attempt.await.context("handshake")?;
            Ok::<_, anyhow::Error>((index, conn, begun.elapsed()))
        });
    }
    let mut conns = Vec::with_capacity(args.conns as usize);
    let mut handshake_total = Duration::ZERO;
    while let Some(joined) = handshakes.join_next().await {
        let (index, conn, took) = joined??;
        handshake_total += took;
        conns.push((index, conn));
    }
    conns.sort_by_key(|(index, _)| *index);
    // The connections stay owned here until the end; tasks open streams through handles.
    let conns: Vec<s2n_quic::Connection> = conns.into_iter().map(|(_, c)| c).collect();
    let handles: Vec<Handle> = conns.iter().map(|c| c.handle()).collect();

    let mut report = match args.alpn.as_str() {
        "perf" => run_perf(&args, &handles).await?,
        _ => run_hq(&args, &handles).await?,
    };
    report.seconds = start.elapsed().as_secs_f64();
    report.handshake_ms = handshake_total.as_secs_f64() * 1e3 / conns.len() as f64;
    // s2n-quic exposes neither key updates nor the path MTU: report 0 and null.
    report.key_updates = 0;
    report.max_datagram_size = None;

    for conn in &conns {
        conn.close(NO_ERROR.into());
    }
    drop(conns);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.wait_idle()).await;
    println!("{}", report.to_json_line());
    Ok(())
}

async fn run_perf(args: &ClientArgs, conns: &[Handle]) -> Result<Report> {
    let total_streams = args.conns * args.streams;
    let mut tasks = JoinSet::new();
    for (c, conn) in conns.iter().enumerate() {
        for s in 0..args.streams {
            let index = c as u64 * args.streams + s;
            let down = share(args.down, total_streams, index);
            let up = share(args.up, total_streams, index);
            let mut conn = conn.clone();
            tasks.spawn(async move {
                let stream = conn.open_bidirectional_stream().await?;
                let (recv, send) = stream.split();
                perf::request(send, recv, down, up, |_| {}).await
            });
        }
    }
    let mut report = Report::default();
    while let Some(joined) = tasks.join_next().await {
        let transfer = joined??;
        report.bytes_down += transfer.down;
        report.bytes_up += transfer.up;
        report.streams += 1;
    }
    Ok(report)
}

async fn run_hq(args: &ClientArgs, conns: &[Handle]) -> Result<Report> {
    let paths = hq::paths(&args.get, args.down, args.conns * args.streams);
    let mut tasks = JoinSet::new();
    for (index, path) in paths.iter().enumerate() {
        let mut conn = conns[index % conns.len()].clone();
        let path = path.clone();
        tasks.spawn(async move {
            let stream = conn
                .open_bidirectional_stream()
                .await
                .context("opening stream")?;
            let (recv, send) = stream.split();
            let body = hq::get(send, recv, &path, |_| {}).await?;
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
