//! `quench serve` over kernel UDP: one SO_REUSEPORT socket and one pinned worker per core.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{AppFactory, BuiltinApps};
use crate::conn::TransportConfig;
use crate::endpoint::{Endpoint, EndpointConfig};
use crate::io::udp::{UdpDatapath, UdpOptions};
use crate::io::Datapath;
use crate::tls::certs::CertifiedKey;
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
}

pub struct ServerOptions {
    pub listen: SocketAddr,
    pub cert: CertifiedKey,
    pub alpns: Vec<Vec<u8>>,
    pub root: Option<PathBuf>,
    pub workers: usize,
    pub transport: TransportConfig,
    pub require_retry: bool,
    pub pin: bool,
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
        self.shutdown
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn join(self) -> Result<(), ServerError> {
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServerError::Worker(i, e.to_string())),
                Err(_) => return Err(ServerError::Worker(i, "panicked".into())),
            }
        }
        Ok(())
    }
}

pub fn start_udp_server(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    let workers = opts.workers.clamp(1, 256);
    let tls = crate::tls::session::server_config(opts.cert, &opts.alpns)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let factory: Arc<dyn AppFactory> = Arc::new(BuiltinApps {
        alpns: opts.alpns.clone(),
        root: opts.root.clone(),
    });
    let mut base = EndpointConfig::new(opts.transport, Some(tls));
    base.require_retry = opts.require_retry;
    let shutdown = Arc::new(AtomicBool::new(false));
    let handoff = Handoff::new(workers);
    let cores = core_affinity::get_core_ids().unwrap_or_default();

    // Bind every socket up front so errors surface before we report "listening".
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = opts.listen;
    for _ in 0..workers {
        let udp_opts = UdpOptions {
            reuse_port: workers > 1,
            ..UdpOptions::default()
        };
        let dp = UdpDatapath::bind(addr, udp_opts)
            .map_err(|source| ServerError::Bind { addr, source })?;
        // With port 0 the first bind picks the port; the rest join its SO_REUSEPORT group.
        addr = dp.local_addr();
        sockets.push(dp);
    }

    let mut threads = Vec::with_capacity(workers);
    let mut counters = Vec::with_capacity(workers);
    for (id, dp) in sockets.into_iter().enumerate() {
        let mut cfg = base.clone();
        cfg.worker_id = id as u8;
        let c = Arc::new(WorkerCounters::default());
        counters.push(c.clone());
        let worker = Worker {
            id,
            datapath: dp,
            endpoint: Endpoint::new(cfg),
            factory: factory.clone(),
            shutdown: shutdown.clone(),
            handoff: Some(handoff.clone()),
            counters: c,
            drain_timeout: Duration::from_secs(2),
        };
        let core = if opts.pin && !cores.is_empty() {
            Some(cores[id % cores.len()])
        } else {
            None
        };
        let t = std::thread::Builder::new()
            .name(format!("quench-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                worker.run()
            })
            .map_err(|e| ServerError::Worker(id, e.to_string()))?;
        threads.push(t);
    }
    Ok(RunningServer {
        local_addr: addr,
        counters,
        shutdown,
        threads,
    })
}
