//! Session tickets scoped to the QUIC version of the connection that got them (RFC 9369 §5:
//! "Servers MUST validate the originating version of any session ticket ... and not accept
//! one issued from a different version"; after compatible version negotiation, the
//! negotiated one).
//!
//! rustls's ticketer knows nothing of QUIC versions and is shared by every connection of a
//! config, so [`VersionScoped`] wraps whichever ticketer a server uses and puts the version
//! in front of the sealed session; the version comes from the connection whose TLS call is
//! running on this thread, which [`TlsSession`](super::TlsSession) sets for the length of
//! each call into rustls ([`enter`]), as it does for the key log. A ticket of another
//! version, or one opened outside such a call, does not open: a full handshake follows.
use std::cell::Cell;
use std::sync::Arc;

use rustls::server::ProducesTickets;

thread_local! {
    static QUIC_VERSION: Cell<u32> = const { Cell::new(0) };
}

/// The QUIC version of the TLS call under way on this thread until the guard drops.
pub fn enter(version: u32) -> VersionGuard {
    QUIC_VERSION.with(|v| v.set(version));
    VersionGuard(())
}

pub struct VersionGuard(());

impl Drop for VersionGuard {
    fn drop(&mut self) {
        QUIC_VERSION.with(|v| v.set(0));
    }
}

fn current() -> Option<u32> {
    Some(QUIC_VERSION.with(Cell::get)).filter(|&v| v != 0)
}

/// A ticketer whose tickets carry the QUIC version (4 bytes, big-endian) inside the seal.
#[derive(Debug)]
pub struct VersionScoped {
    inner: Arc<dyn ProducesTickets>,
}

impl VersionScoped {
    pub fn wrap(inner: Arc<dyn ProducesTickets>) -> Arc<dyn ProducesTickets> {
        Arc::new(Self { inner })
    }
}

impl ProducesTickets for VersionScoped {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let version = current()?;
        let mut tagged = Vec::with_capacity(4 + plain.len());
        tagged.extend_from_slice(&version.to_be_bytes());
        tagged.extend_from_slice(plain);
        self.inner.encrypt(&tagged)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let version = current()?;
        let mut plain = self.inner.decrypt(cipher)?;
        if plain.get(..4)? != version.to_be_bytes() {
            tracing::debug!("session ticket from another QUIC version: full handshake");
            return None;
        }
        plain.drain(..4);
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::{VERSION_1, VERSION_2};

    fn ticketer() -> Arc<dyn ProducesTickets> {
        VersionScoped::wrap(rustls::crypto::aws_lc_rs::Ticketer::new().unwrap())
    }

    #[test]
    fn a_ticket_opens_only_in_its_version() {
        let t = ticketer();
        let sealed = {
            let _v = enter(VERSION_2);
            t.encrypt(b"session state").unwrap()
        };
        {
            let _v = enter(VERSION_2);
            assert_eq!(t.decrypt(&sealed).as_deref(), Some(&b"session state"[..]));
        }
        {
            let _v = enter(VERSION_1);
            assert_eq!(t.decrypt(&sealed), None);
        }
        // Outside a connection's TLS call: nothing is sealed or opened.
        assert_eq!(t.decrypt(&sealed), None);
        assert_eq!(t.encrypt(b"x"), None);
    }
}
