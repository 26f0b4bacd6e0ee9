//! Bytes on the wire, no state: pure parse/emit over slices.
pub mod cid;
pub mod error;
pub mod frame;
pub mod header;
pub mod net;
pub mod packet_number;
pub mod steer;
pub mod transport_params;
pub mod varint;
