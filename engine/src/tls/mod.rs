//! The TLS 1.3 handshake through rustls's QUIC module; we own everything after the secrets.
//!
//! rustls turns CRYPTO frame bytes into handshake messages and back ([`TlsSession`]).
//! Traffic secrets are captured through its `KeyLog` hook ([`keylog`]); the packet keys
//! rustls derives from them are built as our own (`crate::crypto`) through its QUIC key
//! hook ([`key_capture`]), so packet protection never goes through rustls and no key is
//! derived twice. The secrets remain the root for key updates.
pub mod cert_reload;
pub mod cert_select;
pub mod certs;
pub mod client_hello;
pub mod key_capture;
pub mod keylog;
pub mod session;
pub mod ticket_version;
pub mod tickets;
pub mod watched_file;

pub use cert_reload::{CertFiles, ReloadingCert};
pub use cert_select::CertStore;
pub use certs::{generate_self_signed, load_pem, write_pem, CertifiedKey};
pub use session::{
    client_config, client_config_with_provider, server_config, server_config_with_provider,
    KeyChange, Resumption, ServerCert, ServerVerification, TlsAlertError, TlsError, TlsSession,
};
