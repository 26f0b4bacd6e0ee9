//! HTTP/3 (RFC 9114) over quench's streams.

pub mod qpack;
