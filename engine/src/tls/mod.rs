//! The TLS 1.3 handshake through rustls's QUIC module; we own everything after the secrets.
pub mod certs;
pub mod keylog;
pub mod session;
