//! Several certificates on one server, chosen per handshake by the name the client asks
//! for (SNI, RFC 6066 §3): an edge serves many hostnames from one address and port.
//!
//! The first pair given is the default. It answers a client that sends no name (one
//! connecting to an IP address) and one asking for a name no pair has, as a web server's
//! default host does; a client that checks names then refuses it, which is the right end.
//! A name is served by the pair whose leaf lists it exactly, else by one listing the
//! wildcard of its parent: `*.example.com` covers `a.example.com`, not `example.com` nor
//! `a.b.example.com` (RFC 6125 §6.4.3). Case and a final dot do not matter. When two pairs
//! list the same name, the one given first serves it; that is warned about, since the
//! other pair's name can then never be chosen.
//!
//! Every pair is re-read when its files change ([`ReloadingCert`]), and the name index is
//! rebuilt after any change, since a renewal may add or drop names. Choosing costs a hash
//! lookup in an index loaded from an `ArcSwap`, once per handshake (never per packet).
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign;

use super::cert_reload::{CertFiles, ReloadingCert};
use super::session::TlsError;
use super::watched_file;

/// The certificates of a server, each from its own files and kept current.
pub struct CertStore {
    /// In the order given; the first is the default. Reloaded only through the store, so
    /// the snapshot follows every change.
    pairs: Vec<ReloadingCert>,
    /// What handshakes choose from: every pair's key and the name index, swapped as one,
    /// so a handshake never pairs a new index with an old key or the other way round.
    current: ArcSwap<Snapshot>,
    /// One reload pass at a time (the watcher, or a caller of `reload_if_changed`).
    reloading: Mutex<()>,
}

/// The pairs as of one reload pass.
struct Snapshot {
    keys: Vec<Arc<sign::CertifiedKey>>,
    index: NameIndex,
}

impl Snapshot {
    fn of(pairs: &[ReloadingCert]) -> Snapshot {
        let keys = pairs.iter().map(ReloadingCert::certified_key).collect();
        let names: Vec<Vec<String>> = pairs.iter().map(ReloadingCert::names).collect();
        let index = NameIndex::build(pairs, &names);
        Snapshot { keys, index }
    }
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|p| p.files()))
            .finish()
    }
}

impl CertStore {
    /// Reads every pair; any unusable one is an error naming its files (a server must not
    /// start without a certificate it was given).
    pub fn open(
        files: Vec<CertFiles>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        if files.is_empty() {
            return Err(TlsError::Pem("no certificate files given".into()));
        }
        let pairs = files
            .into_iter()
            .map(|f| ReloadingCert::open(f, Arc::clone(&provider)))
            .collect::<Result<Vec<_>, _>>()?;
        for p in &pairs {
            tracing::info!(cert = %p.files().cert.display(), names = ?p.names(), "certificate");
        }
        let snapshot = Snapshot::of(&pairs);
        Ok(Arc::new(Self {
            pairs,
            current: ArcSwap::from_pointee(snapshot),
            reloading: Mutex::new(()),
        }))
    }

    /// Each pair's DNS names, in the order given.
    pub fn names(&self) -> Vec<Vec<String>> {
        self.pairs.iter().map(ReloadingCert::names).collect()
    }

    /// Which pair serves a client asking for `server_name` (its SNI, if it sent one).
    pub fn select(&self, server_name: Option<&str>) -> usize {
        self.current.load().select(server_name)
    }

    /// Re-reads every pair whose files changed (or whose last read failed), then swaps in
    /// a new snapshot if any was taken. Returns whether one was.
    pub fn reload_if_changed(&self) -> bool {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = false;
        for p in &self.pairs {
            taken |= p.reload_if_changed();
        }
        if taken {
            self.current.store(Arc::new(Snapshot::of(&self.pairs)));
        }
        taken
    }

    /// Re-reads the files every [`watched_file::RELOAD_INTERVAL`] from a thread of its own,
    /// until `stop`.
    pub fn watch(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let store = Arc::clone(self);
        watched_file::watch("cert-files", stop, move || {
            store.reload_if_changed();
        })
    }
}

impl Snapshot {
    fn select(&self, server_name: Option<&str>) -> usize {
        server_name.and_then(|n| self.index.select(n)).unwrap_or(0)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<sign::CertifiedKey>> {
        let snapshot = self.current.load();
        Some(Arc::clone(
            &snapshot.keys[snapshot.select(hello.server_name())],
        ))
    }
}

/// Which pair serves which name: exact names, and the parents of wildcard names.
#[derive(Debug, Default)]
struct NameIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` is kept as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl NameIndex {
    /// Indexes the pairs' current names, the first pair listing a name keeping it. Warns
    /// of each name shadowed that way and of each pair past the first that no name leads
    /// to (it is never presented).
    fn build(pairs: &[ReloadingCert], names: &[Vec<String>]) -> Self {
        let mut index = NameIndex::default();
        for (i, (p, names)) in pairs.iter().zip(names).enumerate() {
            let mut reachable = i == 0;
            for name in names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut index.wildcard, parent.to_string()),
                    None => (&mut index.exact, name.to_string()),
                };
                let owner = *map.entry(key).or_insert(i);
                if owner == i {
                    reachable = true;
                } else {
                    tracing::warn!(
                        name,
                        served_by = %pairs[owner].files().cert.display(),
                        shadowed = %p.files().cert.display(),
                        "a certificate name is in two certificates; the one given first serves it"
                    );
                }
            }
            if !reachable {
                tracing::warn!(
                    cert = %p.files().cert.display(),
                    "no name leads to this certificate (none, or all served by one given before it): it is never presented"
                );
            }
        }
        index
    }

    fn select(&self, name: &str) -> Option<usize> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        // A wildcard stands for exactly one whole label.
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::{generate_self_signed, write_pem};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A self-signed pair for `names`, written under `dir` as `tag`.
    fn pair(dir: &std::path::Path, tag: &str, names: &[&str], age: u64) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{tag}.pem")),
            key: dir.join(format!("{tag}.key.pem")),
        };
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = generate_self_signed(&names).unwrap();
        write_pem(&cert, &files.cert, &files.key).unwrap();
        // As a later write would: move the stamps on.
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(age);
        for p in [&files.cert, &files.key] {
            std::fs::File::options()
                .append(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        files
    }

    #[test]
    fn the_name_asked_for_picks_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.example", "shared.example"], 0);
        let b = pair(
            dir.path(),
            "b",
            &[
                "*.b.example",
                "shared.example",
                "Upper.Example",
                "127.0.0.1",
            ],
            0,
        );
        let store = CertStore::open(vec![a, b], provider()).unwrap();
        assert_eq!(
            store.names()[1],
            ["*.b.example", "shared.example", "upper.example"],
            "DNS names only, lower-case"
        );
        let cases: &[(Option<&str>, usize)] = &[
            (None, 0),
            (Some("a.example"), 0),
            (Some("A.Example."), 0),
            (Some("x.b.example"), 1),
            (Some("X.B.EXAMPLE"), 1),
            (Some("upper.example"), 1),
            // A wildcard covers one label, not its parent nor two labels.
            (Some("b.example"), 0),
            (Some("y.x.b.example"), 0),
            (Some(".b.example"), 0),
            // Listed by both: the first given serves it.
            (Some("shared.example"), 0),
            (Some("unknown.example"), 0),
            (Some("127.0.0.1"), 0),
        ];
        for &(name, want) in cases {
            assert_eq!(store.select(name), want, "{name:?}");
        }
    }

    #[test]
    fn a_renewal_that_changes_names_changes_the_choice() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.example"], 0);
        let b = pair(dir.path(), "b", &["b.example"], 0);
        let store = CertStore::open(vec![a, b.clone()], provider()).unwrap();
        assert_eq!(store.select(Some("b.example")), 1);
        assert!(!store.reload_if_changed(), "unchanged");

        let renewed = pair(dir.path(), "b", &["c.example", "*.d.example"], 2);
        assert_eq!(renewed, b);
        assert!(store.reload_if_changed());
        assert_eq!(store.select(Some("b.example")), 0, "dropped by the renewal");
        assert_eq!(store.select(Some("c.example")), 1);
        assert_eq!(store.select(Some("x.d.example")), 1);

        // A broken renewal keeps the pair and its names.
        std::fs::write(&b.cert, "not PEM").unwrap();
        assert!(!store.reload_if_changed());
        assert_eq!(store.select(Some("c.example")), 1);
    }

    #[test]
    fn a_leaf_the_tls_library_cannot_read_stops_the_start() {
        // An unknown critical extension: refused (by rustls, which reads the leaf with
        // webpki as `leaf_names` does), with the file named.
        let mut params = rcgen::CertificateParams::new(vec!["odd.example".into()]).unwrap();
        let mut ext =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let odd = CertFiles {
            cert: dir.path().join("odd.pem"),
            key: dir.path().join("odd.key.pem"),
        };
        std::fs::write(&odd.cert, cert.pem()).unwrap();
        std::fs::write(&odd.key, key.serialize_pem()).unwrap();
        let e = CertStore::open(vec![odd], provider()).unwrap_err();
        assert!(e.to_string().contains("odd.pem"), "{e}");
    }

    #[test]
    fn every_pair_must_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.example"], 0);
        let missing = CertFiles {
            cert: dir.path().join("gone.pem"),
            key: dir.path().join("gone.key.pem"),
        };
        let e = CertStore::open(vec![a, missing], provider()).unwrap_err();
        assert!(e.to_string().contains("gone.pem"), "{e}");
        let e = CertStore::open(vec![], provider()).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
