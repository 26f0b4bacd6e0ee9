//! A closed-loop load generator over quench's client endpoint: `conns` connections, each
//! running `requests` perf requests one after another (`pipeline` at a time), recording
//! every request's latency (stream opened → response FIN read) in an HDR histogram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use quench::conn::{CloseReason, Connection, Event, StreamEvent, StreamId, TransportConfig};
use quench::endpoint::{Endpoint, EndpointConfig, EventHandler};
use quench::io::udp::{UdpDatapath, UdpOptions};
use quench::io::Datapath;
use quench::wire::header::VERSION_1;
use quench::worker::drive_until;

use crate::perf_request;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub connect: SocketAddr,
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub conns: usize,
    /// Requests per connection.
    pub requests: u64,
    /// Response bytes asked for by each request.
    pub size: u64,
    /// Request bytes sent (length header included, at least 8).
    pub upload: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct LoadReport {
    pub connections: usize,
    pub requests: u64,
    pub failed: u64,
    pub seconds: f64,
    /// The run hit its timeout before every request completed.
    pub timed_out: bool,
    pub bytes_down: u64,
    /// Request latency in µs.
    pub latency: Histogram<u64>,
    /// Handshake time in µs.
    pub handshake: Histogram<u64>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn to_json(&self) -> String {
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
        serde_json::json!({
            "connections": self.connections,
            "requests": self.requests,
            "failed": self.failed,
            "seconds": self.seconds,
            "timed_out": self.timed_out,
            "requests_per_second": self.requests_per_second(),
            "throughput_mbps": self.bytes_down as f64 * 8.0 / self.seconds / 1e6,
            "latency_us": {
                "p50": q(&self.latency, 0.5),
                "p90": q(&self.latency, 0.9),
                "p99": q(&self.latency, 0.99),
                "p999": q(&self.latency, 0.999),
                "max": self.latency.max(),
                "mean": self.latency.mean(),
            },
            "latency_distribution_us": distribution(&self.latency),
            "handshake_us": {
                "p50": q(&self.handshake, 0.5),
                "p99": q(&self.handshake, 0.99),
                "max": self.handshake.max(),
            },
        })
        .to_string()
    }
}

/// The latency at quantiles spaced evenly on a log scale of 1/(1 - q) (eight a decade:
/// 0, 0.25, 0.44, ..., 0.99, ..., 0.9999), then the maximum: `[quantile, µs]` pairs, what
/// a percentile plot (`scripts/plot.py`) draws.
fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut points: Vec<(f64, u64)> = (0..=32)
        .map(|k| {
            let q = 1.0 - 10f64.powf(-f64::from(k) / 8.0);
            (q, h.value_at_quantile(q))
        })
        .collect();
    points.push((1.0, h.max()));
    points
}

/// One connection's requests.
#[derive(Default)]
pub struct ConnLoad {
    started_at: Option<Instant>,
    issued: u64,
    completed: u64,
    /// (stream, opened at, bytes read)
    in_flight: Vec<(StreamId, Instant, u64)>,
    closed: Option<CloseReason>,
}

struct Handler {
    opts: LoadOptions,
    request: Vec<u8>,
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
    completed: u64,
    failed: u64,
    bytes_down: u64,
    finished_conns: usize,
}

impl Handler {
    fn issue(&mut self, now: Instant, conn: &mut Connection, st: &mut ConnLoad) {
        while st.in_flight.len() < self.opts.pipeline && st.issued < self.opts.requests {
            let Some(id) = conn.open_stream(true) else {
                return; // StreamsAvailable will call again
            };
            match conn.write(id, &self.request) {
                Ok(n) if n == self.request.len() => {}
                _ => {
                    self.failed += 1;
                    let _ = conn.reset_stream(id, 0);
                    st.issued += 1;
                    continue;
                }
            }
            let _ = conn.finish(id);
            st.issued += 1;
            st.in_flight.push((id, now, 0));
        }
    }

    fn read(&mut self, now: Instant, conn: &mut Connection, st: &mut ConnLoad, id: StreamId) {
        let Some(i) = st.in_flight.iter().position(|f| f.0 == id) else {
            return;
        };
        loop {
            match conn.discard(id, usize::MAX, now) {
                Ok((n, fin)) => {
                    st.in_flight[i].2 += n as u64;
                    self.bytes_down += n as u64;
                    if fin {
                        let (_, opened, got) = st.in_flight.swap_remove(i);
                        if got == self.opts.size {
                            let us = now.duration_since(opened).as_micros() as u64;
                            self.latency.saturating_record(us.max(1));
                            self.completed += 1;
                        } else {
                            self.failed += 1;
                        }
                        st.completed += 1;
                        if st.completed == self.opts.requests {
                            self.finished_conns += 1;
                        }
                        self.issue(now, conn, st);
                        return;
                    }
                    if n == 0 {
                        return;
                    }
                }
                Err(_) => {
                    st.in_flight.swap_remove(i);
                    self.failed += 1;
                    st.completed += 1;
                    if st.completed == self.opts.requests {
                        self.finished_conns += 1;
                    }
                    self.issue(now, conn, st);
                    return;
                }
            }
        }
    }
}

impl EventHandler<ConnLoad> for Handler {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, st: &mut ConnLoad, event: Event) {
        match event {
            Event::Connected => {
                if let Some(t) = st.started_at {
                    let us = now.duration_since(t).as_micros() as u64;
                    self.handshake.saturating_record(us.max(1));
                }
                self.issue(now, conn, st);
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read(now, conn, st, id),
            Event::Stream(StreamEvent::StreamsAvailable { .. }) => self.issue(now, conn, st),
            Event::Stream(StreamEvent::Reset { id, .. }) => {
                if let Some(i) = st.in_flight.iter().position(|f| f.0 == id) {
                    st.in_flight.swap_remove(i);
                    self.failed += 1;
                    st.completed += 1;
                    if st.completed == self.opts.requests {
                        self.finished_conns += 1;
                    }
                }
            }
            Event::Closed(reason) => {
                if st.completed < self.opts.requests {
                    // What never completed counts as failed, once.
                    self.failed += self.opts.requests - st.completed;
                    st.completed = self.opts.requests;
                    self.finished_conns += 1;
                }
                st.closed = Some(reason);
            }
            _ => {}
        }
    }
}

pub fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    if opts.conns == 0 || opts.requests == 0 || opts.pipeline == 0 {
        bail!("--conns, --requests and --pipeline must be at least 1");
    }
    let bind: SocketAddr = if opts.connect.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut dp = UdpDatapath::bind(bind, UdpOptions::default()).context("binding UDP socket")?;
    let mut transport = TransportConfig::default();
    transport.streams.max_concurrent_bidi = transport
        .streams
        .max_concurrent_bidi
        .max(opts.pipeline as u64);
    let mut endpoint: Endpoint<ConnLoad> = Endpoint::new(EndpointConfig::new(transport, None));
    let mut handler = Handler {
        request: perf_request(opts.upload, opts.size),
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        handshake: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        completed: 0,
        failed: 0,
        bytes_down: 0,
        finished_conns: 0,
        opts: opts.clone(),
    };
    let start = Instant::now();
    for _ in 0..opts.conns {
        let h = endpoint
            .connect(
                Instant::now(),
                opts.tls.clone(),
                &opts.server_name,
                opts.connect,
                VERSION_1,
            )
            .map_err(|e| anyhow::anyhow!("connect: {e:?}"))?;
        endpoint.with_state(h, |_, st| st.started_at = Some(Instant::now()));
    }
    let conns = opts.conns;
    let finished = drive_until(
        &mut dp,
        &mut endpoint,
        &mut handler,
        start + opts.timeout,
        |_, h, _| h.finished_conns >= conns,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    endpoint.close_all(Instant::now(), 0, "done");
    let flush_until = Instant::now() + Duration::from_millis(50);
    drive_until(
        &mut dp,
        &mut endpoint,
        &mut handler,
        flush_until,
        |ep, _, _| ep.connection_count() == 0,
    )?;
    let _ = dp.flush();
    let expected = opts.conns as u64 * opts.requests;
    Ok(LoadReport {
        connections: opts.conns,
        requests: handler.completed,
        failed: handler.failed + expected.saturating_sub(handler.completed + handler.failed),
        seconds,
        timed_out: !finished,
        bytes_down: handler.bytes_down,
        latency: handler.latency,
        handshake: handler.handshake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_rises_to_the_maximum() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let d = distribution(&h);
        assert_eq!(d.len(), 34);
        assert_eq!(d[0].0, 0.0);
        assert!((d[8].0 - 0.9).abs() < 1e-12 && (d[16].0 - 0.99).abs() < 1e-12);
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(*d.last().unwrap(), (1.0, h.max()));
        let median = d.iter().find(|(q, _)| (*q - 0.5).abs() < 0.07).unwrap().1;
        assert!((4_000..=6_000).contains(&median), "{median}");
    }
}
