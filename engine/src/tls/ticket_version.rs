//! Session tickets scoped to the QUIC version of the connection that got them (RFC 9369 §5:
//! clients must not use a ticket from one version to start a connection in another, and
//! servers must not accept one; after compatible version negotiation, a ticket belongs to
//! the negotiated version).
//!
//! rustls's ticketer and session store know nothing of QUIC versions and are shared by
//! every connection of a config, so the version comes from the connection whose TLS call
//! is running on this thread, which [`TlsSession`](super::TlsSession) sets for the length
//! of each call into rustls ([`enter`]), as it does for the key log:
//! - server: [`VersionScoped`] wraps whichever ticketer it uses and seals the version with
//!   the session; a ticket of another version, or one opened outside such a call, does not
//!   open, and a full handshake follows;
//! - server with 0-RTT: [`VersionScopedStore`] does the same for the sessions kept in
//!   memory instead of sealed in tickets;
//! - client: [`VersionScopedSessions`] keeps tickets apart by the version of the
//!   connection that got them and hands a connection only those of its first flight's
//!   version (a client moved from v1 to v2 thus keeps v2 tickets, which its next v1 first
//!   flight does not use).
use std::cell::Cell;
use std::sync::Arc;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::server::{ProducesTickets, StoresServerSessions};
use rustls::NamedGroup;

use crate::wire::header::SUPPORTED_VERSIONS;

thread_local! {
    /// (QUIC version, early-data terms) of the TLS call under way.
    static SCOPE: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
}

/// The QUIC version of the TLS call under way on this thread until the guard drops (calls
/// nest: `read_handshake` pumps the output too).
pub fn enter(version: u32) -> VersionGuard {
    enter_with_terms(version, 0)
}

/// `enter`, for a server whose sessions allow early data: `terms` digests the transport
/// parameters its 0-RTT clients rely on (RFC 9000 §7.4.1), and a session stored under other
/// terms does not resume (`VersionScopedStore`).
pub fn enter_with_terms(version: u32, terms: u64) -> VersionGuard {
    VersionGuard {
        previous: SCOPE.with(|v| v.replace((version, terms))),
    }
}

pub struct VersionGuard {
    previous: (u32, u64),
}

impl Drop for VersionGuard {
    fn drop(&mut self) {
        SCOPE.with(|v| v.set(self.previous));
    }
}

pub(crate) fn current() -> Option<u32> {
    Some(SCOPE.with(Cell::get).0).filter(|&v| v != 0)
}

fn current_terms() -> u64 {
    SCOPE.with(Cell::get).1
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

/// A server's session store for 0-RTT, whose values carry the QUIC version (4 bytes,
/// big-endian) and the early-data terms (8 bytes, `enter_with_terms`) they were stored
/// under: a session resumes only in its own version, and only where the transport
/// parameters its client remembered still hold (RFC 9000 §7.4.1: a server accepting 0-RTT
/// must not lower them; a session from other terms gets a full handshake instead). rustls
/// takes a session out when its ticket comes back (`take`), so every ticket resumes, and
/// carries early data, once.
#[derive(Debug)]
pub struct VersionScopedStore {
    inner: Arc<dyn StoresServerSessions>,
}

impl VersionScopedStore {
    pub fn wrap(inner: Arc<dyn StoresServerSessions>) -> Arc<dyn StoresServerSessions> {
        Arc::new(Self { inner })
    }

    const PREFIX: usize = 12;

    fn prefix() -> Option<[u8; Self::PREFIX]> {
        let mut p = [0u8; Self::PREFIX];
        p[..4].copy_from_slice(&current()?.to_be_bytes());
        p[4..].copy_from_slice(&current_terms().to_be_bytes());
        Some(p)
    }

    fn unwrap_value(mut value: Vec<u8>) -> Option<Vec<u8>> {
        if value.get(..Self::PREFIX)? != Self::prefix()? {
            tracing::debug!("stored session from another QUIC version or terms: full handshake");
            return None;
        }
        value.drain(..Self::PREFIX);
        Some(value)
    }
}

impl StoresServerSessions for VersionScopedStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let Some(prefix) = Self::prefix() else {
            return false;
        };
        let mut tagged = Vec::with_capacity(prefix.len() + value.len());
        tagged.extend_from_slice(&prefix);
        tagged.extend_from_slice(&value);
        self.inner.put(key, tagged)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(key).and_then(Self::unwrap_value)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        // Taken whatever its version: a ticket is spent by its first presentation.
        self.inner.take(key).and_then(Self::unwrap_value)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// A client session store per QUIC version; key-exchange hints (not version-bound) go to
/// the first. QUIC is TLS 1.3 only, so TLS 1.2 sessions are never kept.
#[derive(Debug)]
pub struct VersionScopedSessions {
    by_version: Vec<(u32, Arc<dyn ClientSessionStore>)>,
}

impl VersionScopedSessions {
    pub fn new(make: impl Fn() -> Arc<dyn ClientSessionStore>) -> Arc<Self> {
        Arc::new(Self {
            by_version: SUPPORTED_VERSIONS.iter().map(|&v| (v, make())).collect(),
        })
    }

    fn for_current(&self) -> Option<&dyn ClientSessionStore> {
        let version = current()?;
        self.by_version
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, s)| s.as_ref())
    }

    fn hints(&self) -> &dyn ClientSessionStore {
        self.by_version[0].1.as_ref()
    }
}

impl ClientSessionStore for VersionScopedSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.hints().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.hints().kx_hint(server_name)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        if let Some(store) = self.for_current() {
            store.insert_tls13_ticket(name, value)
        }
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.for_current()?.take_tls13_ticket(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::{VERSION_1, VERSION_2};

    fn ticketer() -> Arc<dyn ProducesTickets> {
        VersionScoped::wrap(rustls::crypto::aws_lc_rs::Ticketer::new().unwrap())
    }

    /// Counts the ticket calls that reach it.
    #[derive(Debug, Default)]
    struct Recording {
        inserts: std::sync::atomic::AtomicUsize,
        takes: std::sync::atomic::AtomicUsize,
    }

    impl ClientSessionStore for Recording {
        fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
        fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
            None
        }
        fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
        fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
            None
        }
        fn remove_tls12_session(&self, _: &ServerName<'static>) {}
        fn insert_tls13_ticket(&self, _: ServerName<'static>, _: Tls13ClientSessionValue) {
            self.inserts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
            self.takes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }

    /// A client asks for tickets only in the store of the version it starts in; outside a
    /// connection's TLS call it gets none.
    #[test]
    fn a_client_looks_for_tickets_of_its_version_only() {
        use std::sync::atomic::Ordering::Relaxed;
        let made: std::sync::Mutex<Vec<Arc<Recording>>> = Default::default();
        let sessions = VersionScopedSessions::new(|| {
            let r = Arc::new(Recording::default());
            made.lock().unwrap().push(r.clone());
            r
        });
        let made = made.into_inner().unwrap();
        let name = ServerName::try_from("example.com").unwrap();
        {
            let _v = enter(VERSION_2);
            assert!(sessions.take_tls13_ticket(&name).is_none());
        }
        assert!(sessions.take_tls13_ticket(&name).is_none());
        let takes: Vec<usize> = made.iter().map(|r| r.takes.load(Relaxed)).collect();
        let v2 = SUPPORTED_VERSIONS
            .iter()
            .position(|&v| v == VERSION_2)
            .unwrap();
        let mut want = vec![0; SUPPORTED_VERSIONS.len()];
        want[v2] = 1;
        assert_eq!(takes, want);
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

    #[test]
    fn a_stored_session_resumes_once_and_only_in_its_version() {
        let store = VersionScopedStore::wrap(rustls::server::ServerSessionMemoryCache::new(16));
        {
            let _v = enter(VERSION_1);
            assert!(store.put(b"id-1".to_vec(), b"session".to_vec()));
            assert!(store.put(b"id-2".to_vec(), b"other".to_vec()));
            assert_eq!(store.get(b"id-1").as_deref(), Some(&b"session"[..]));
            assert_eq!(store.take(b"id-1").as_deref(), Some(&b"session"[..]));
            assert_eq!(store.take(b"id-1"), None, "a ticket is single-use");
        }
        {
            let _v = enter(VERSION_2);
            assert_eq!(
                store.take(b"id-2"),
                None,
                "a v1 session does not resume in v2"
            );
        }
        let _v = enter(VERSION_1);
        assert_eq!(store.take(b"id-2"), None, "and the attempt spent it");
        drop(_v);
        assert!(
            !store.put(b"id-3".to_vec(), b"x".to_vec()),
            "no version, nothing kept"
        );
        {
            let _v = enter_with_terms(VERSION_1, 7);
            assert!(store.put(b"id-4".to_vec(), b"terms 7".to_vec()));
        }
        let _v = enter_with_terms(VERSION_1, 8);
        assert_eq!(
            store.take(b"id-4"),
            None,
            "stored under other transport parameters"
        );
    }
}
