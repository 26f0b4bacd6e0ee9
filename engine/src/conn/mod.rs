//! One connection, sans-IO (RFC 9000/9001/9002): no sockets, no clock reads; `now` is
//! always an argument, datagrams come in as `&mut [u8]` and go out into caller buffers.
mod aead_limits;
pub mod cids;
mod compatible_version;
pub mod config;
pub mod connection;
pub mod datagrams;
pub mod local_migration;
pub mod pmtud;
pub mod range_set;
pub mod recovery;
mod recv;
mod send;
pub mod sent;
pub mod space;
pub mod streams;
#[doc(hidden)]
pub mod testing;

pub use cids::{CidEvent, ConnectionIdGenerator};
pub use config::TransportConfig;
pub use connection::{
    CloseReason, Connection, ConnectionStats, Event, ServerConnectionParams, Transmit,
    VersionOffer, MIN_INITIAL_SIZE,
};
pub use datagrams::DatagramError;
pub use local_migration::MigrationError;
pub use streams::{StreamError, StreamEvent, StreamId};
