//! A server certificate read from PEM files and re-read when they change, so an operator
//! renews it (ACME every 60–90 days, say) with no restart: handshakes that start after the
//! change present the new chain, and established connections are untouched (TLS is done
//! with the certificate once the handshake ends).
//!
//! rustls asks the server's certificate store (`cert_select::CertStore`) once per handshake
//! (never per packet), which answers with an `Arc` loaded from an `ArcSwap`, no lock. A change is taken only whole:
//! a chain that does not parse, or a key that is not the leaf's (a renewal caught between
//! writing the two files), is logged and the certificate in use kept; the next change of
//! either file is tried again.
//!
//! Each pair also knows the DNS names its leaf is for, which [`super::cert_select`] uses
//! to pick among several pairs by the name a client asks for.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::sign;

use super::certs::load_pem;
use super::session::TlsError;
use super::watched_file::{FileStamp, Reloads};

/// The certificate and key files of a server, as `--cert` and `--key` name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificate of [`CertFiles`], kept current.
pub struct ReloadingCert {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Loaded>,
    /// Both files as last taken, to tell a change.
    loaded: Mutex<Reloads<(Option<FileStamp>, Option<FileStamp>)>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish()
    }
}

/// A pair as loaded: the signing key with its chain, and the leaf's names.
struct Loaded {
    key: Arc<sign::CertifiedKey>,
    names: Vec<String>,
}

impl ReloadingCert {
    /// Reads both files; an unusable pair is an error (a server must not start without a
    /// certificate).
    pub fn open(files: CertFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamps = stamps(&files);
        let loaded = certified(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            current: ArcSwap::from_pointee(loaded),
            loaded: Mutex::new(Reloads::new(stamps)),
        })
    }

    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// The chain handshakes present now, leaf first.
    pub fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.current.load().key.cert.clone()
    }

    /// What a handshake given this pair presents now.
    pub fn certified_key(&self) -> Arc<sign::CertifiedKey> {
        Arc::clone(&self.current.load().key)
    }

    /// The DNS names (subjectAltName) the current leaf is for, lower-case, wildcards as
    /// `*.example.com`.
    pub fn names(&self) -> Vec<String> {
        self.current.load().names.clone()
    }

    /// Re-reads the files if either changed (time, inode or length) or the last read
    /// failed. A pair that does not load keeps the certificate in use (logged once per
    /// version of the files). Returns whether a new one was taken.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let what = format!("certificate files {}", self.files.cert.display());
        let Some(pair) = loaded.check(now, &what, || certified(&self.files, &self.provider)) else {
            return false;
        };
        tracing::info!(
            cert = %self.files.cert.display(),
            chain = pair.key.cert.len(),
            names = ?pair.names,
            "certificate reloaded"
        );
        self.current.store(Arc::new(pair));
        true
    }
}

fn stamps(files: &CertFiles) -> (Option<FileStamp>, Option<FileStamp>) {
    (FileStamp::of(&files.cert), FileStamp::of(&files.key))
}

/// The pair loaded and checked: the key must be the leaf certificate's.
fn certified(files: &CertFiles, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let pem = load_pem(&files.cert, &files.key)?;
    let key = sign::CertifiedKey::from_der(pem.chain, pem.key, provider).map_err(|e| {
        TlsError::Pem(format!(
            "{} and {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    let names = leaf_names(&key.cert[0])
        .map_err(|e| TlsError::Pem(format!("{}: leaf certificate: {e}", files.cert.display())))?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
    })
}

/// The DNS names of a leaf's subjectAltName extension, lower-case and without a final dot,
/// as clients match them (RFC 6125 §6.4). IP addresses and other name types are left out:
/// clients send no SNI for an address (RFC 6066 §3).
fn leaf_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let mut names: Vec<String> = cert
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    // Equal once lower-cased, or listed twice: the index wants each once.
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::{generate_self_signed, write_pem};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn leaf(c: &ReloadingCert) -> Vec<u8> {
        c.chain()[0].as_ref().to_vec()
    }

    /// Writes a pair and moves its mtime a little, as a later write would.
    fn write(files: &CertFiles, cert: &crate::tls::CertifiedKey, age: u64) {
        write_pem(cert, &files.cert, &files.key).unwrap();
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(age);
        for p in [&files.cert, &files.key] {
            std::fs::File::options()
                .append(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }

    #[test]
    fn a_renewed_pair_is_taken_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let first = generate_self_signed(&["localhost".into()]).unwrap();
        write(&files, &first, 0);
        let c = ReloadingCert::open(files.clone(), provider()).unwrap();
        assert_eq!(leaf(&c), first.chain[0].as_ref());
        assert!(!c.reload_if_changed(), "unchanged");

        let second = generate_self_signed(&["localhost".into()]).unwrap();
        write(&files, &second, 2);
        assert!(c.reload_if_changed());
        assert_eq!(leaf(&c), second.chain[0].as_ref());

        // A renewal caught half-written: the new chain with the old key. Kept out, and
        // taken once the key file follows.
        let third = generate_self_signed(&["localhost".into()]).unwrap();
        let mixed = crate::tls::CertifiedKey {
            chain: third.chain.clone(),
            key: second.key.clone_key(),
        };
        write(&files, &mixed, 4);
        assert!(!c.reload_if_changed(), "a key that is not the leaf's");
        assert_eq!(leaf(&c), second.chain[0].as_ref());
        write(&files, &third, 6);
        assert!(c.reload_if_changed());
        assert_eq!(leaf(&c), third.chain[0].as_ref());

        // A read that fails, then the same files readable again with stamps no different
        // (as after a chown or chmod): taken at the next check all the same.
        let fourth = generate_self_signed(&["localhost".into()]).unwrap();
        write(&files, &fourth, 8);
        let key = std::fs::read(&files.key).unwrap();
        let at = std::fs::metadata(&files.key).unwrap().modified().unwrap();
        let put = |bytes: &[u8]| {
            std::fs::write(&files.key, bytes).unwrap();
            std::fs::File::options()
                .append(true)
                .open(&files.key)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        put(&vec![b' '; key.len()]);
        let failing = FileStamp::of(&files.key);
        assert!(!c.reload_if_changed(), "no key in the file");
        put(&key);
        assert_eq!(FileStamp::of(&files.key), failing, "nothing the stamps see");
        assert!(c.reload_if_changed(), "retried after a failure");
        assert_eq!(leaf(&c), fourth.chain[0].as_ref());

        std::fs::write(&files.cert, "not PEM").unwrap();
        assert!(!c.reload_if_changed(), "garbage");
        std::fs::remove_file(&files.key).unwrap();
        assert!(!c.reload_if_changed(), "gone");
        assert_eq!(
            leaf(&c),
            fourth.chain[0].as_ref(),
            "still the last good one"
        );
    }

    #[test]
    fn an_unusable_pair_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let a = generate_self_signed(&["localhost".into()]).unwrap();
        let b = generate_self_signed(&["localhost".into()]).unwrap();
        write(
            &files,
            &crate::tls::CertifiedKey {
                chain: a.chain,
                key: b.key,
            },
            0,
        );
        let e = ReloadingCert::open(files, provider()).unwrap_err();
        assert!(e.to_string().contains("cert.pem"), "{e}");
    }
}
