//! `quench serve`: pinned workers, one per core, each with its own datapath — a
//! SO_REUSEPORT UDP socket ([`start_udp_server`]) or an AF_XDP socket fed by the XDP
//! steering program ([`start_xdp_server`]). The worker loop is the same for both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::app::{AppFactory, BuiltinApps};
use crate::conn::TransportConfig;
use crate::endpoint::{Endpoint, EndpointConfig, QuicLbConfig, SourceLimit};
use crate::io::udp::{cid_steering_program, UdpDatapath, UdpOptions};
use crate::io::Datapath;
use crate::tls::session::ServerCert;
use crate::tls::tickets::TicketKeyFile;
use crate::tls::Resumption;
use crate::worker::{Handoff, Worker, WorkerCounters};

#[derive(thiserror::Error, Debug)]
pub enum ServerError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot create the workers' wake-up eventfds: {0}")]
    Wakeup(std::io::Error),
    #[cfg(feature = "xdp")]
    #[error("AF_XDP datapath: {0}")]
    Xdp(#[from] crate::io::xdp::XdpError),
}

pub struct ServerOptions {
    pub listen: SocketAddr,
    /// The certificate: fixed, or read from files and re-read when they change
    /// (`tls::cert_reload`, watched while the server runs), so a renewal needs no restart.
    pub cert: ServerCert,
    pub alpns: Vec<Vec<u8>>,
    pub root: Option<PathBuf>,
    pub workers: usize,
    pub transport: TransportConfig,
    pub require_retry: bool,
    /// Retry while this many handshakes per worker wait for address validation
    /// (`EndpointConfig::retry_above_unvalidated`).
    pub retry_above_unvalidated: Option<usize>,
    /// Session ticket key file shared by a fleet (`tls::tickets::TicketKeyFile`); `None`
    /// uses keys of this process alone.
    pub ticket_keys: Option<PathBuf>,
    /// Accept 0-RTT, keeping up to this many single-use sessions in memory
    /// (`tls::Resumption::EarlyData`); exclusive with `ticket_keys`.
    pub early_data_sessions: Option<usize>,
    /// QUIC versions accepted (`EndpointConfig::versions`).
    pub versions: Vec<u32>,
    /// Versions clients are moved to when their first flight converts to one
    /// (`EndpointConfig::preferred_versions`).
    pub preferred_versions: Vec<u32>,
    /// Most connections per worker; beyond it new clients get CONNECTION_REFUSED.
    pub max_connections: usize,
    pub pin: bool,
    /// UDP datapath with several workers: steer short-header datagrams to the socket of
    /// the worker their CID names inside the kernel (SO_ATTACH_REUSEPORT_CBPF), so clients
    /// that change address reach their connection without a hand-off between workers.
    /// Off (or where the kernel refuses the program), workers hand such datagrams over.
    pub kernel_steering: bool,
    /// The CIDs' QUIC-LB layout: config rotation, this server's id, nonce length, for a
    /// load balancer in front that routes by CID.
    pub quic_lb: QuicLbConfig,
    /// Handshakes per client address and worker (`endpoint::source_limit`); `None`, none.
    pub handshakes_per_source: Option<SourceLimit>,
}

/// A running server: its bound address, counters, and the threads to join.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub counters: Vec<Arc<WorkerCounters>>,
    pub shutdown: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// True once any worker thread has ended (an error, or shutdown completed).
    pub fn any_worker_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }

    /// A snapshot of every worker's counters.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.counters.iter().map(|c| WorkerStats::read(c)).collect()
    }

    /// One JSON object with the workers' counters (the `quench serve` stats line).
    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({
            "datapath": "udp",
            "workers": self.worker_stats().iter().map(WorkerStats::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn join(mut self) -> Result<(), ServerError> {
        self.join_workers()
    }

    /// Waits for every worker thread to end (after `request_shutdown`); the first failure
    /// is returned once all have been joined.
    pub fn join_workers(&mut self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            let r = match t.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServerError::Worker(i, e.to_string())),
                Err(_) => Err(ServerError::Worker(i, "panicked".into())),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// One worker's counters at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub datagrams_rx: u64,
    pub datagrams_tx: u64,
    /// Connections open now.
    pub connections: u64,
    /// Of those, connections whose client has not proved its address yet (forged
    /// Initials stay here until they time out): Retry starts at `--retry-above` of them.
    pub unvalidated_handshakes: u64,
    pub connections_accepted: u64,
    /// Datagrams this worker's UDP socket received for another worker (UDP datapath; the
    /// XDP datapath counts its hand-offs per socket).
    pub handed_off: u64,
    /// Hand-offs dropped because the owner's queue was full (UDP datapath).
    pub handoff_dropped: u64,
    pub stateless_resets: u64,
    /// Retry packets sent (`--retry`, or past `--retry-above`).
    pub retries: u64,
    /// New clients refused because the worker was at `--max-connections`.
    pub connections_refused: u64,
    /// Handshakes refused because their source used up its handshakes per second.
    pub handshakes_limited: u64,
    /// Version Negotiation packets sent (to clients in a version not accepted).
    pub version_negotiations: u64,
    /// NEW_TOKEN tokens handed to clients for their next connection (RFC 9000 §8.1.3).
    pub new_tokens: u64,
    /// Handshakes that resumed a session from a TLS ticket instead of signing with the
    /// certificate.
    pub resumed_handshakes: u64,
    /// Connections whose 0-RTT data was accepted (`--early-data`).
    pub early_data_accepted: u64,
    /// 0-RTT packets processed, over connections closed so far.
    pub zero_rtt_packets: u64,
    /// 0-RTT datagrams that came before their Initial: kept, and handed to the connection.
    pub early_packets_buffered: u64,
    pub early_packets_delivered: u64,
    pub compatible_version_switches: u64,
    /// Path MTU discovery, over connections closed so far.
    pub pmtu_probes_sent: u64,
    pub pmtu_probes_lost: u64,
    pub pmtu_black_holes: u64,
    /// Largest maximum datagram size a closed connection used.
    pub max_datagram_size_peak: u64,
    /// Over connections closed so far: packets sent, declared lost, discarded on receipt
    /// (for any reason), received twice, too late to tell from a duplicate, and failing
    /// authentication (RFC 9001 §6.6).
    pub packets_sent: u64,
    pub packets_lost: u64,
    pub packets_dropped: u64,
    pub duplicate_packets: u64,
    pub late_packets: u64,
    pub authentication_failures: u64,
    /// Congestion window reductions, and those undone as spurious (reordering, not loss).
    pub congestion_events: u64,
    pub spurious_congestion_events: u64,
    /// ECN over connections closed so far (see `EndpointStats`).
    pub ecn_capable_connections: u64,
    pub ecn_failures: u64,
    pub ecn_marked_sent: u64,
    pub ecn_ect0_received: u64,
    pub ecn_ce_events: u64,
}

impl WorkerStats {
    pub fn read(c: &WorkerCounters) -> WorkerStats {
        WorkerStats {
            datagrams_rx: c.datagrams_rx.load(Ordering::Relaxed),
            datagrams_tx: c.datagrams_tx.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            unvalidated_handshakes: c.unvalidated_handshakes.load(Ordering::Relaxed),
            connections_accepted: c.connections_accepted.load(Ordering::Relaxed),
            handed_off: c.handed_off.load(Ordering::Relaxed),
            handoff_dropped: c.handoff_dropped.load(Ordering::Relaxed),
            stateless_resets: c.stateless_resets.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            handshakes_limited: c.handshakes_limited.load(Ordering::Relaxed),
            version_negotiations: c.version_negotiations.load(Ordering::Relaxed),
            new_tokens: c.new_tokens.load(Ordering::Relaxed),
            resumed_handshakes: c.resumed_handshakes.load(Ordering::Relaxed),
            early_data_accepted: c.early_data_accepted.load(Ordering::Relaxed),
            zero_rtt_packets: c.zero_rtt_packets.load(Ordering::Relaxed),
            early_packets_buffered: c.early_packets_buffered.load(Ordering::Relaxed),
            early_packets_delivered: c.early_packets_delivered.load(Ordering::Relaxed),
            compatible_version_switches: c.compatible_version_switches.load(Ordering::Relaxed),
            pmtu_probes_sent: c.pmtu_probes_sent.load(Ordering::Relaxed),
            pmtu_probes_lost: c.pmtu_probes_lost.load(Ordering::Relaxed),
            pmtu_black_holes: c.pmtu_black_holes.load(Ordering::Relaxed),
            max_datagram_size_peak: c.max_datagram_size_peak.load(Ordering::Relaxed),
            packets_sent: c.packets_sent.load(Ordering::Relaxed),
            packets_lost: c.packets_lost.load(Ordering::Relaxed),
            packets_dropped: c.packets_dropped.load(Ordering::Relaxed),
            duplicate_packets: c.duplicate_packets.load(Ordering::Relaxed),
            late_packets: c.late_packets.load(Ordering::Relaxed),
            authentication_failures: c.authentication_failures.load(Ordering::Relaxed),
            congestion_events: c.congestion_events.load(Ordering::Relaxed),
            spurious_congestion_events: c.spurious_congestion_events.load(Ordering::Relaxed),
            ecn_capable_connections: c.ecn_capable_connections.load(Ordering::Relaxed),
            ecn_failures: c.ecn_failures.load(Ordering::Relaxed),
            ecn_marked_sent: c.ecn_marked_sent.load(Ordering::Relaxed),
            ecn_ect0_received: c.ecn_ect0_received.load(Ordering::Relaxed),
            ecn_ce_events: c.ecn_ce_events.load(Ordering::Relaxed),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "datagrams_rx": self.datagrams_rx,
            "datagrams_tx": self.datagrams_tx,
            "connections": self.connections,
            "unvalidated_handshakes": self.unvalidated_handshakes,
            "connections_accepted": self.connections_accepted,
            "handed_off": self.handed_off,
            "handoff_dropped": self.handoff_dropped,
            "stateless_resets": self.stateless_resets,
            "retries": self.retries,
            "connections_refused": self.connections_refused,
            "handshakes_limited": self.handshakes_limited,
            "version_negotiations": self.version_negotiations,
            "new_tokens": self.new_tokens,
            "resumed_handshakes": self.resumed_handshakes,
            "early_data_accepted": self.early_data_accepted,
            "zero_rtt_packets": self.zero_rtt_packets,
            "early_packets_buffered": self.early_packets_buffered,
            "early_packets_delivered": self.early_packets_delivered,
            "compatible_version_switches": self.compatible_version_switches,
            "pmtu_probes_sent": self.pmtu_probes_sent,
            "pmtu_probes_lost": self.pmtu_probes_lost,
            "pmtu_black_holes": self.pmtu_black_holes,
            "max_datagram_size_peak": self.max_datagram_size_peak,
            "packets_sent": self.packets_sent,
            "packets_lost": self.packets_lost,
            "packets_dropped": self.packets_dropped,
            "duplicate_packets": self.duplicate_packets,
            "late_packets": self.late_packets,
            "authentication_failures": self.authentication_failures,
            "congestion_events": self.congestion_events,
            "spurious_congestion_events": self.spurious_congestion_events,
            "ecn_capable_connections": self.ecn_capable_connections,
            "ecn_failures": self.ecn_failures,
            "ecn_marked_sent": self.ecn_marked_sent,
            "ecn_ect0_received": self.ecn_ect0_received,
            "ecn_ce_events": self.ecn_ce_events,
        })
    }
}

/// What every worker of one server shares, built once from the options.
struct WorkerBase {
    endpoint: EndpointConfig,
    factory: Arc<dyn AppFactory>,
    shutdown: Arc<AtomicBool>,
    pin: bool,
    /// Set once the workers run: until then `shutdown` is ours to raise on Drop, which
    /// stops the file watchers `new` started (certificate, ticket keys) when a step of the
    /// start fails.
    started: std::cell::Cell<bool>,
}

impl Drop for WorkerBase {
    fn drop(&mut self) {
        if !self.started.get() {
            self.shutdown.store(true, Ordering::Relaxed);
        }
    }
}

impl WorkerBase {
    fn new(opts: &ServerOptions) -> Result<WorkerBase, ServerError> {
        let shutdown = Arc::new(AtomicBool::new(false));
        // Watched once the base exists, whose Drop stops them if the start fails later.
        let mut ticket_keys = None;
        let resumption = match (&opts.ticket_keys, opts.early_data_sessions) {
            (Some(_), Some(_)) => return Err(ServerError::Config(
                "0-RTT keeps sessions in this process; a fleet's ticket keys cannot resume them"
                    .into(),
            )),
            (Some(path), None) => {
                let keys =
                    TicketKeyFile::open(path).map_err(|e| ServerError::Tls(e.to_string()))?;
                ticket_keys = Some(Arc::clone(&keys));
                Resumption::Stateless(Some(keys as Arc<dyn rustls::server::ProducesTickets>))
            }
            (None, Some(0)) => {
                return Err(ServerError::Config(
                    "--early-data needs room for at least one session".into(),
                ))
            }
            (None, Some(sessions)) => Resumption::EarlyData { sessions },
            (None, None) => Resumption::Stateless(None),
        };
        let tls = crate::tls::session::server_config_with_provider(
            opts.cert.clone(),
            &opts.alpns,
            rustls::crypto::aws_lc_rs::default_provider(),
            resumption,
        )
        .map_err(|e| ServerError::Tls(e.to_string()))?;
        let factory: Arc<dyn AppFactory> = Arc::new(BuiltinApps {
            alpns: opts.alpns.clone(),
            root: opts.root.clone(),
        });
        let mut endpoint = EndpointConfig::new(opts.transport.clone(), Some(tls));
        endpoint.require_retry = opts.require_retry;
        endpoint.retry_above_unvalidated = opts.retry_above_unvalidated;
        endpoint.versions = opts.versions.clone();
        endpoint.preferred_versions = opts.preferred_versions.clone();
        endpoint.max_connections = opts.max_connections.max(1);
        endpoint
            .set_quic_lb(&opts.quic_lb)
            .map_err(|e| ServerError::Config(format!("QUIC-LB: {e}")))?;
        if let Some(limit) = opts.handshakes_per_source {
            limit
                .check()
                .map_err(|e| ServerError::Config(e.to_string()))?;
        }
        endpoint.handshakes_per_source = opts.handshakes_per_source;
        let base = WorkerBase {
            endpoint,
            factory,
            shutdown,
            pin: opts.pin,
            started: std::cell::Cell::new(false),
        };
        if let Some(keys) = ticket_keys {
            keys.watch(base.shutdown.clone())
                .map_err(|e| ServerError::Tls(format!("ticket key watcher: {e}")))?;
        }
        if let ServerCert::Files(certs) = &opts.cert {
            certs
                .watch(base.shutdown.clone())
                .map_err(|e| ServerError::Tls(format!("certificate watcher: {e}")))?;
        }
        Ok(base)
    }

    /// Starts one pinned worker thread per datapath (worker id = index).
    fn spawn<D: Datapath + Send + 'static>(
        &self,
        datapaths: Vec<D>,
        handoff: Option<Handoff>,
        local_addr: SocketAddr,
    ) -> Result<RunningServer, ServerError> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(datapaths.len());
        let mut counters = Vec::with_capacity(datapaths.len());
        let mut failure = None;
        for (id, dp) in datapaths.into_iter().enumerate() {
            let mut cfg = self.endpoint.clone();
            cfg.worker_id = id as u8;
            cfg.limit_receive_payload(dp.capabilities().max_receive_payload);
            let c = Arc::new(WorkerCounters::default());
            counters.push(c.clone());
            let worker = Worker {
                id,
                datapath: dp,
                endpoint: Endpoint::new(cfg),
                factory: self.factory.clone(),
                shutdown: self.shutdown.clone(),
                handoff: handoff.clone(),
                counters: c,
                drain_timeout: Duration::from_secs(2),
            };
            let core = if self.pin && !cores.is_empty() {
                Some(cores[id % cores.len()])
            } else {
                None
            };
            let spawned = std::thread::Builder::new()
                .name(format!("quench-w{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker.run()
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    failure = Some(ServerError::Worker(id, e.to_string()));
                    break;
                }
            }
        }
        let server = RunningServer {
            local_addr,
            counters,
            shutdown: self.shutdown.clone(),
            threads,
        };
        if let Some(e) = failure {
            // Stop the workers already running before reporting.
            server.request_shutdown();
            let _ = server.join();
            return Err(e);
        }
        self.started.set(true);
        Ok(server)
    }
}

pub fn start_udp_server(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    let workers = opts.workers.clamp(1, 256);
    let base = WorkerBase::new(&opts)?;

    // Bind every socket up front so errors surface before we report "listening".
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = opts.listen;
    for _ in 0..workers {
        let udp_opts = UdpOptions {
            reuse_port: workers > 1,
            max_datagram_size: crate::io::udp::buffer_size_for(opts.transport.max_datagram_size),
            ..UdpOptions::default()
        };
        let dp = UdpDatapath::bind(addr, udp_opts)
            .map_err(|source| ServerError::Bind { addr, source })?;
        // With port 0 the first bind picks the port; the rest join its SO_REUSEPORT group.
        addr = dp.local_addr();
        sockets.push(dp);
    }
    let handoff = Handoff::new(workers).map_err(ServerError::Wakeup)?;
    if workers > 1 && opts.kernel_steering {
        let program = cid_steering_program(&base.endpoint.layout(), workers as u32);
        match sockets[0].attach_reuseport_cbpf(&program) {
            Ok(()) => tracing::debug!("the kernel steers short headers to their worker by CID"),
            Err(e) => tracing::warn!(
                "kernel steering by CID unavailable ({e}); workers hand off datagrams instead"
            ),
        }
    }
    base.spawn(sockets, Some(handoff), addr)
}

#[cfg(feature = "xdp")]
pub use xdp_server::{start_xdp_server, RunningXdpServer, XdpOptions};

#[cfg(feature = "xdp")]
mod xdp_server {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::{RunningServer, ServerError, ServerOptions, WorkerBase, WorkerStats};
    use crate::io::xdp::{
        self, AddrWatch, BindMode, ProgramStats, ServedChange, SocketStats, XdpConfig, XdpDatapath,
        XdpError, XdpMode, XdpProgram, XdpSetup, ZeroCopy,
    };
    use crate::io::{Capabilities, Datapath, RxMeta, TxMeta};
    use crate::Side;

    /// How often a worker copies its socket's counters out for the stats line.
    const PUBLISH_EVERY: Duration = Duration::from_millis(100);

    /// The AF_XDP side of `quench serve --datapath xdp`.
    #[derive(Clone, Debug)]
    pub struct XdpOptions {
        /// Interface to attach to; its address is the one served.
        pub iface: String,
        /// RX queues to bind (worker `w` takes `queues[w % len]`). Default: queues
        /// `0..min(workers, the interface's RX queues)`.
        pub queues: Option<Vec<u32>>,
        pub mode: XdpMode,
        pub zero_copy: ZeroCopy,
        /// Back each UMEM with 2 MiB huge pages when available.
        pub huge_pages: bool,
    }

    /// An AF_XDP datapath that copies its socket statistics out every [`PUBLISH_EVERY`]
    /// (and when the worker ends), so the main thread can print them.
    struct Published {
        inner: XdpDatapath,
        out: Arc<Mutex<SocketStats>>,
        next: Instant,
    }

    impl Published {
        fn maybe_publish(&mut self) {
            let now = Instant::now();
            if now >= self.next {
                self.next = now + PUBLISH_EVERY;
                self.publish();
            }
        }

        fn publish(&mut self) {
            let s = self.inner.stats();
            if let Ok(mut o) = self.out.lock() {
                *o = s;
            }
        }
    }

    impl Drop for Published {
        fn drop(&mut self) {
            self.publish();
        }
    }

    impl Datapath for Published {
        fn local_addr(&self) -> SocketAddr {
            self.inner.local_addr()
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        fn recv_batch(
            &mut self,
            on_datagram: &mut dyn FnMut(RxMeta, &mut [u8]),
        ) -> std::io::Result<usize> {
            let n = self.inner.recv_batch(on_datagram)?;
            self.maybe_publish();
            Ok(n)
        }
        fn recv_batch_vouched(
            &mut self,
            on_datagram: &mut dyn FnMut(RxMeta, &mut [u8]) -> bool,
        ) -> std::io::Result<usize> {
            let n = self.inner.recv_batch_vouched(on_datagram)?;
            self.maybe_publish();
            Ok(n)
        }
        fn push_tx(&mut self, write: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>) -> bool {
            self.inner.push_tx(write)
        }
        fn flush(&mut self) -> std::io::Result<usize> {
            self.inner.flush()
        }
        fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
            self.inner.wait(timeout)
        }
    }

    /// A server on AF_XDP. Holds the XDP program, which is not `Send`: keep this on the
    /// thread that started it. Dropping it (or `join`) detaches the program.
    pub struct RunningXdpServer {
        pub server: RunningServer,
        program: XdpProgram,
        sockets: Vec<Arc<Mutex<SocketStats>>>,
        queues: Vec<u32>,
        bind_modes: Vec<BindMode>,
        iface: String,
        /// Serving every address of the host: keeps them current (`refresh_addresses`).
        watch: Option<AddrWatch>,
    }

    impl RunningXdpServer {
        /// e.g. `xdp on eth0 queues [0, 1], native, copy mode`.
        pub fn describe(&self) -> String {
            let copy = match self.bind_modes.first() {
                Some(BindMode::ZeroCopy) => "zero-copy",
                _ => "copy mode",
            };
            format!(
                "xdp on {} queues {:?}, {}, {copy}",
                self.iface,
                self.queues,
                self.program.attach_mode().unwrap_or("detached")
            )
        }

        /// The XDP program's per-outcome counters.
        pub fn program_stats(&self) -> ProgramStats {
            self.program.stats()
        }

        /// Packets the program steered to each worker.
        pub fn worker_hits(&self) -> Vec<u64> {
            self.program.worker_hits(self.sockets.len() as u32)
        }

        /// Each worker's socket counters, as last published (at most ~100 ms old).
        pub fn socket_stats(&self) -> Vec<SocketStats> {
            self.sockets
                .iter()
                .map(|s| s.lock().map(|s| *s).unwrap_or_default())
                .collect()
        }

        pub fn is_attached(&self) -> bool {
            self.program.is_attached()
        }

        /// Serving every address of the host: re-reads them and, if they changed, steers
        /// and answers on the new list (see `io::xdp::served`). Call it every
        /// [`xdp::served::REFRESH_EVERY`] or so; `None` when nothing changed or one address
        /// is served. On an error the addresses served stay as they were.
        pub fn refresh_addresses(&mut self) -> Result<Option<ServedChange>, XdpError> {
            match self.watch.as_mut() {
                Some(watch) => watch.refresh(&self.program),
                None => Ok(None),
            }
        }

        /// The addresses the program steers now, sorted.
        pub fn served_addresses(&self) -> Vec<std::net::IpAddr> {
            match &self.watch {
                Some(w) => w.served().to_vec(),
                None => vec![self.server.local_addr.ip().to_canonical()],
            }
        }

        /// The stats line: workers, program counters, per-socket counters.
        pub fn stats_json(&self) -> serde_json::Value {
            let p = self.program_stats();
            let sockets: Vec<serde_json::Value> = self
                .socket_stats()
                .iter()
                .zip(&self.bind_modes)
                .enumerate()
                .map(|(w, (s, mode))| {
                    let c = &s.counters;
                    let k = &s.kernel;
                    serde_json::json!({
                        "worker": w,
                        "queue": self.queues[w % self.queues.len()],
                        "bind": format!("{mode:?}").to_lowercase(),
                        "rx_packets": c.rx_packets,
                        "rx_handed_off": c.rx_handed_off,
                        "rx_from_handoff": c.rx_from_handoff,
                        "handoff_dropped": c.handoff_dropped,
                        "rx_malformed": c.rx_malformed,
                        "tx_packets": c.tx_packets,
                        "tx_no_neighbor": c.tx_no_neighbor,
                        "bad_descs": c.bad_descs,
                        "kernel_rx_dropped": k.rx_dropped,
                        "kernel_rx_ring_full": k.rx_ring_full,
                        "kernel_rx_fill_ring_empty": k.rx_fill_ring_empty_descs,
                        "kernel_tx_ring_empty": k.tx_ring_empty_descs,
                        "kernel_invalid_descs": k.rx_invalid_descs + k.tx_invalid_descs,
                        "frames_free": s.frames.free,
                        "frames_fill": s.frames.fill,
                        "frames_rx": s.frames.rx,
                        "frames_tx": s.frames.tx,
                        "frame_violations": s.frame_violations,
                    })
                })
                .collect();
            serde_json::json!({
                "datapath": "xdp",
                "workers": self.server.worker_stats().iter().map(WorkerStats::to_json).collect::<Vec<_>>(),
                "xdp": {
                    "attached": self.program.attach_mode(),
                    "program": {
                        "redirect": p.redirect,
                        "redirect_missteered": p.redirect_missteered,
                        "redirect_failed": p.redirect_failed,
                        "pass_no_socket": p.pass_no_socket,
                        "pass_not_local": p.pass_not_local,
                        "pass_not_ip": p.pass_not_ip,
                        "pass_not_udp": p.pass_not_udp,
                        "pass_other_port": p.pass_other_port,
                        "pass_malformed": p.pass_malformed,
                        "drop_short_initial": p.drop_short_initial,
                        "drop_fixed_bit": p.drop_fixed_bit,
                        "drop_bad_short": p.drop_bad_short,
                        "drop_bad_long": p.drop_bad_long,
                    },
                    "worker_hits": self.worker_hits(),
                    "served_addresses": self.served_addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "served_address_changes": self.watch.as_ref().map_or(0, AddrWatch::changes),
                    "sockets": sockets,
                },
            })
        }

        /// Waits for the workers to end (after `server.request_shutdown()`); the program
        /// stays attached, and its counters readable, until this value is dropped.
        pub fn join_workers(&mut self) -> Result<(), ServerError> {
            self.server.join_workers()
        }

        /// Waits for the workers to end, then detaches the program.
        pub fn join(mut self) -> Result<(), ServerError> {
            let r = self.join_workers();
            self.program.detach();
            r
        }
    }

    /// Loads and attaches the XDP program on `xdp.iface`, binds one AF_XDP socket per
    /// worker and starts the workers. The served address is the interface's: `opts.listen`
    /// gives the port, and its IP must be the interface's or unspecified.
    pub fn start_xdp_server(
        opts: ServerOptions,
        xdp: XdpOptions,
    ) -> Result<RunningXdpServer, ServerError> {
        let workers = opts.workers.max(1);
        if workers > xdp::loader::MAX_WORKERS as usize {
            return Err(ServerError::Config(format!(
                "the XDP datapath supports at most {} workers",
                xdp::loader::MAX_WORKERS
            )));
        }
        let port = opts.listen.port();
        if port == 0 {
            return Err(ServerError::Config(
                "the XDP datapath needs an explicit --listen port".into(),
            ));
        }
        if xdp::syscall::if_nametoindex(&xdp.iface).is_none() {
            return Err(xdp::XdpError::IfaceNotFound(xdp.iface.clone()).into());
        }
        let iface = xdp::local_iface(&xdp.iface, port)?;
        let local_addr = match opts.listen.ip().to_canonical() {
            ip if ip.is_unspecified() => match (iface.v4, iface.v6) {
                (Some(v4), _) if ip.is_ipv4() => SocketAddr::new(IpAddr::V4(v4), port),
                (_, Some(v6)) => SocketAddr::new(IpAddr::V6(v6), port),
                (Some(v4), None) => SocketAddr::new(IpAddr::V4(v4), port),
                (None, None) => {
                    return Err(ServerError::Config(format!(
                        "interface {} has no IP address to serve",
                        xdp.iface
                    )))
                }
            },
            ip if iface.addrs.contains(&ip) => SocketAddr::new(ip, port),
            ip => {
                let has: Vec<String> = iface.addrs.iter().map(|a| a.to_string()).collect();
                return Err(ServerError::Config(format!(
                    "--listen {ip} is not an address of this host (it has {}); give one of \
                     them, or an unspecified address to serve them all",
                    if has.is_empty() {
                        "none".to_string()
                    } else {
                        has.join(", ")
                    },
                )));
            }
        };
        let queues = match xdp.queues.clone() {
            Some(q) => q,
            None => {
                let available = xdp::syscall::if_rx_queues(&xdp.iface).unwrap_or(1).max(1);
                (0..(workers as u32).min(available)).collect()
            }
        };
        let base = WorkerBase::new(&opts)?;
        let cfg = XdpConfig {
            iface: xdp.iface.clone(),
            queues: queues.clone(),
            workers,
            mode: xdp.mode,
            ports: vec![port],
            listen_ip: Some(opts.listen.ip()),
            layout: base.endpoint.layout(),
            zero_copy: xdp.zero_copy,
            side: Side::Server,
            huge_pages: xdp.huge_pages,
            ..XdpConfig::default()
        };
        let (program, paths, watch) = XdpSetup::start_watching(&cfg)?;
        let bind_modes: Vec<BindMode> = paths.iter().map(|p| p.bind_mode()).collect();
        let mut sockets = Vec::with_capacity(paths.len());
        let published: Vec<Published> = paths
            .into_iter()
            .map(|inner| {
                let out = Arc::new(Mutex::new(SocketStats::default()));
                sockets.push(out.clone());
                Published {
                    inner,
                    out,
                    next: Instant::now(),
                }
            })
            .collect();
        // Mis-steered datagrams are handed over inside the datapath (by the same CID
        // function the program uses), so the worker needs no hand-off of its own.
        let server = base.spawn(published, None, local_addr)?;
        Ok(RunningXdpServer {
            server,
            program,
            sockets,
            queues,
            bind_modes,
            iface: xdp.iface,
            watch,
        })
    }
}
