//! The TLS 1.3 handshake through rustls's QUIC module; we own everything after the secrets.
//!
//! rustls turns CRYPTO frame bytes into handshake messages and back ([`TlsSession`]).
//! Traffic secrets are captured through its `KeyLog` hook ([`keylog`]) and turned into our
//! own packet keys (`crate::crypto`), so packet protection never goes through rustls.
pub mod certs;
pub mod keylog;
pub mod session;

pub use certs::{generate_self_signed, load_pem, write_pem, CertifiedKey};
pub use session::{
    client_config, client_config_with_provider, server_config, server_config_with_provider,
    KeyChange, ServerVerification, TlsAlertError, TlsError, TlsSession,
};
