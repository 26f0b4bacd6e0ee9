//! Capturing TLS traffic secrets through rustls's `KeyLog` hook.
//!
//! rustls calls `KeyLog::log` synchronously, on the caller's thread, from inside
//! `read_hs`/`write_hs`. [`QuicKeyLog`] stores the secrets QUIC needs in a thread-local
//! that [`super::TlsSession`] clears before and drains right after each such call, so a
//! worker thread running many sessions never mixes them up. When `SSLKEYLOGFILE` is set,
//! every secret is also written there (NSS key log format) for Wireshark.
use std::cell::RefCell;
use std::sync::Arc;

use rustls::KeyLog;

/// Longest TLS 1.3 secret (SHA-384).
const MAX_SECRET: usize = 48;

/// The four secrets QUIC keys are built from, in NSS key log label order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretLabel {
    ClientHandshake = 0,
    ServerHandshake = 1,
    ClientTraffic = 2,
    ServerTraffic = 3,
}

impl SecretLabel {
    fn parse(label: &str) -> Option<Self> {
        Some(match label {
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET" => SecretLabel::ClientHandshake,
            "SERVER_HANDSHAKE_TRAFFIC_SECRET" => SecretLabel::ServerHandshake,
            "CLIENT_TRAFFIC_SECRET_0" => SecretLabel::ClientTraffic,
            "SERVER_TRAFFIC_SECRET_0" => SecretLabel::ServerTraffic,
            _ => return None,
        })
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One secret as rustls reported it.
pub struct Captured {
    pub label: SecretLabel,
    pub client_random: [u8; 32],
    len: u8,
    secret: [u8; MAX_SECRET],
}

impl Captured {
    pub fn secret(&self) -> &[u8] {
        &self.secret[..usize::from(self.len)]
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        self.secret.fill(0);
        std::hint::black_box(&self.secret);
    }
}

thread_local! {
    static CAPTURED: RefCell<Vec<Captured>> = const { RefCell::new(Vec::new()) };
}

/// Discards whatever an earlier call left behind.
pub fn clear() {
    CAPTURED.with(|c| c.borrow_mut().clear());
}

/// Hands every secret captured on this thread since the last `clear`/`drain` to `f`.
pub fn drain(mut f: impl FnMut(Captured)) {
    let captured = CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for c in captured {
        f(c);
    }
}

/// The `KeyLog` installed in every config we build.
pub struct QuicKeyLog {
    file: Option<rustls::KeyLogFile>,
}

impl std::fmt::Debug for QuicKeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicKeyLog")
            .field("sslkeylogfile", &self.file.is_some())
            .finish()
    }
}

impl QuicKeyLog {
    /// Forwards to `SSLKEYLOGFILE` when that variable is set.
    pub fn new() -> Self {
        let file = std::env::var_os("SSLKEYLOGFILE").map(|_| rustls::KeyLogFile::new());
        if file.is_some() {
            tracing::warn!("SSLKEYLOGFILE set: TLS secrets are being written to disk");
        }
        Self { file }
    }

    pub fn shared() -> Arc<dyn KeyLog> {
        Arc::new(Self::new())
    }
}

impl Default for QuicKeyLog {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyLog for QuicKeyLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        if let Some(file) = &self.file {
            file.log(label, client_random, secret);
        }
        let Some(label) = SecretLabel::parse(label) else {
            return;
        };
        let (Ok(client_random), true) = (client_random.try_into(), secret.len() <= MAX_SECRET)
        else {
            tracing::error!(?label, "unexpected secret or client random length");
            return;
        };
        let mut buf = [0u8; MAX_SECRET];
        buf[..secret.len()].copy_from_slice(secret);
        let captured = Captured {
            label,
            client_random,
            len: secret.len() as u8,
            secret: buf,
        };
        CAPTURED.with(|c| c.borrow_mut().push(captured));
    }

    fn will_log(&self, label: &str) -> bool {
        self.file.is_some() || SecretLabel::parse(label).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_only_quic_labels_per_thread() {
        let log = QuicKeyLog { file: None };
        clear();
        log.log("CLIENT_HANDSHAKE_TRAFFIC_SECRET", &[1; 32], &[9; 32]);
        log.log("EXPORTER_SECRET", &[1; 32], &[9; 32]);
        log.log("SERVER_TRAFFIC_SECRET_0", &[1; 32], &[8; 48]);
        log.log("SERVER_TRAFFIC_SECRET_0", &[1; 31], &[8; 48]);
        assert!(log.will_log("CLIENT_TRAFFIC_SECRET_0"));
        assert!(!log.will_log("EXPORTER_SECRET"));
        std::thread::spawn(|| {
            let mut n = 0;
            drain(|_| n += 1);
            assert_eq!(n, 0, "other threads see nothing");
        })
        .join()
        .unwrap();
        let mut got = Vec::new();
        drain(|c| got.push((c.label, c.client_random, c.secret().to_vec())));
        assert_eq!(
            got,
            vec![
                (SecretLabel::ClientHandshake, [1; 32], vec![9; 32]),
                (SecretLabel::ServerTraffic, [1; 32], vec![8; 48]),
            ]
        );
        drain(|_| panic!("drained twice"));
    }
}
