//! Bytes on the wire, no state: pure parse/emit over slices.
//!
//! Parsers borrow from the input (zero copy) and never panic: malformed input is a
//! [`WireError`] for headers (drop the packet) or a [`TransportError`] for frames and
//! transport parameters (close the connection). Emitters write into caller buffers.
pub mod cid;
pub mod error;
pub mod frame;
pub mod header;
pub mod net;
pub mod packet_number;
pub mod steer;
pub mod transport_params;
pub mod varint;

pub use cid::ConnectionId;
pub use error::{TransportError, TransportErrorCode, WireError};
pub use varint::{Reader, Writer};
