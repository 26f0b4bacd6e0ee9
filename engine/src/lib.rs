//! quench: a kernel-bypass QUIC packet engine.
//!
//! Layers, in the direction of dependencies (see docs/architecture.md):
//! `wire` (bytes, no state) → `crypto` (packet and header protection) → `tls` (the
//! handshake through rustls) → `conn` (one connection, sans-IO) → `endpoint` (one per
//! worker: CID table, accept, stateless packets) → `app` (applications over streams).
//! `io` holds the datapaths and imports only `wire`; `worker` joins `endpoint`, `app` and
//! `io` on a pinned core.

/// Which end of a connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn is_server(self) -> bool {
        self == Side::Server
    }
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// Packet-number space / encryption epoch (RFC 9000 §12.3). 0-RTT shares `Data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Epoch {
    Initial = 0,
    Handshake = 1,
    Data = 2,
}

impl Epoch {
    pub const ALL: [Epoch; 3] = [Epoch::Initial, Epoch::Handshake, Epoch::Data];
    pub fn index(self) -> usize {
        self as usize
    }
}

pub mod app;
pub mod client;
pub mod conn;
pub mod crypto;
pub mod endpoint;
pub mod io;
pub mod metrics;
pub mod server;
pub mod tls;
pub mod wire;
pub mod worker;
