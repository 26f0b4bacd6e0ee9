//! Session tickets for TLS 1.3 resumption (RFC 8446 §4.6.1, §2.2), stateless: the ticket
//! carries the session, sealed with a key only servers hold, so any worker, and any server
//! of a fleet sharing the key file, resumes it with no session cache and no lock shared
//! between workers.
//!
//! Two sources of keys:
//! - none given: rustls's `Ticketer` (random keys rolled every 6 hours, the previous one
//!   still accepted), which keeps tickets good within one process;
//! - a key file ([`TicketKeyFile`]): 32-byte keys in hex, one per line; the first seals,
//!   every one opens. The file is re-read when it changes, so operators rotate by putting a
//!   new key first and dropping the oldest, on every server at once, with no restart. A
//!   ticket sealed under a key no longer listed simply fails to open: the client does a
//!   full handshake.
//!
//! Ticket layout: key id (4 bytes, from SHA-256 of the key) | nonce (12) | AES-256-GCM
//! ciphertext | tag (16), with the key id as associated data.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{digest, SHA256};
use rustls::server::ProducesTickets;

use super::session::TlsError;
use super::watched_file::{self, FileStamp, Reloads};

const KEY_LEN: usize = 32;
const ID_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// More keys than this in one file is a mistake, not a rotation.
const MAX_KEYS: usize = 16;
/// The lifetime clients are told (RFC 8446 §4.6.1 caps it at 7 days). Rotating the file at
/// least this often is what bounds how long a stolen key decrypts old sessions.
pub const FILE_TICKET_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
pub use super::watched_file::RELOAD_INTERVAL;

/// One ticket key: its id and the AEAD key.
struct TicketKey {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

impl TicketKey {
    fn new(bytes: &[u8; KEY_LEN]) -> Self {
        let hash = digest(&SHA256, bytes);
        let id = hash.as_ref()[..ID_LEN].try_into().expect("4 bytes");
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key");
        Self {
            id,
            key: LessSafeKey::new(key),
        }
    }
}

/// The keys of one version of the file: `keys[0]` seals.
struct KeySet {
    keys: Vec<TicketKey>,
}

impl KeySet {
    /// Parses the file's text: 64 hex digits a line; blank lines and `#` comments skipped.
    fn parse(text: &str) -> Result<KeySet, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bytes: [u8; KEY_LEN] = hex::decode(line)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("line {}: not a 32-byte key in hex (64 digits)", n + 1))?;
            if keys.len() == MAX_KEYS {
                return Err(format!("more than {MAX_KEYS} keys"));
            }
            keys.push(TicketKey::new(&bytes));
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(KeySet { keys })
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut out[ID_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Any failure (unknown key, short, forged) is `None`: the client's ticket is ignored.
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let id = ticket.get(..ID_LEN)?;
        let nonce: [u8; NONCE_LEN] = ticket.get(ID_LEN..ID_LEN + NONCE_LEN)?.try_into().ok()?;
        let sealed = ticket.get(ID_LEN + NONCE_LEN..)?;
        if sealed.len() < TAG_LEN {
            return None;
        }
        let key = self.keys.iter().find(|k| k.id == id)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(plain);
        Some(buf)
    }
}

/// Ticket keys shared by a fleet: read from a file, re-read when it changes (or given as
/// text, e.g. from a secret store, with [`TicketKeyFile::from_text`]).
pub struct TicketKeyFile {
    /// `None` for keys given as text: nothing to re-read.
    path: Option<PathBuf>,
    keys: ArcSwap<KeySet>,
    /// The file as last taken, to tell a change.
    loaded: Mutex<Reloads<Option<FileStamp>>>,
}

impl std::fmt::Debug for TicketKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeyFile")
            .field("path", &self.path)
            .field("keys", &self.keys.load().keys.len())
            .finish()
    }
}

impl TicketKeyFile {
    /// Reads the file; an unreadable or malformed file is an error (the server should not
    /// start with resumption silently broken).
    pub fn open(path: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = FileStamp::of(path);
        let keys = read_keys(path)?;
        Ok(Arc::new(Self {
            path: Some(path.to_path_buf()),
            keys: ArcSwap::from_pointee(keys),
            loaded: Mutex::new(Reloads::new(stamp)),
        }))
    }

    /// Keys in the file's format, from wherever the caller keeps them; never re-read.
    pub fn from_text(text: &str) -> Result<Arc<Self>, TlsError> {
        let keys = KeySet::parse(text).map_err(TlsError::TicketKeys)?;
        Ok(Arc::new(Self {
            path: None,
            keys: ArcSwap::from_pointee(keys),
            loaded: Mutex::new(Reloads::new(None)),
        }))
    }

    /// Re-reads the file if it changed (time, inode or length) or the last read failed. A
    /// file that no longer parses, or is gone, keeps the keys in use (logged once per
    /// version of the file). Returns whether new keys were taken.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let stamp = FileStamp::of(path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let Some(keys) = loaded.check(stamp, "ticket key file", || read_keys(path)) else {
            return false;
        };
        tracing::info!(path = %path.display(), keys = keys.keys.len(), "ticket keys reloaded");
        self.keys.store(Arc::new(keys));
        true
    }

    /// Re-reads the file every [`RELOAD_INTERVAL`] from a thread of its own, until `stop`
    /// (nothing to watch for keys given as text).
    pub fn watch(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        if self.path.is_none() {
            return Ok(());
        }
        let keys = Arc::clone(self);
        watched_file::watch("ticket-keys", stop, move || {
            keys.reload_if_changed();
        })
    }
}

fn read_keys(path: &Path) -> Result<KeySet, TlsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TlsError::TicketKeys(format!("{}: {e}", path.display())))?;
    KeySet::parse(&text).map_err(|e| TlsError::TicketKeys(format!("{}: {e}", path.display())))
}

impl ProducesTickets for TicketKeyFile {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        FILE_TICKET_LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "f0e0d0c0b0a090807060504030201000ffeeddccbbaa99887766554433221100";

    fn file(text: &str) -> (tempfile_dir::Dir, Arc<TicketKeyFile>) {
        let dir = tempfile_dir::Dir::new();
        let path = dir.path.join("tickets.keys");
        std::fs::write(&path, text).unwrap();
        let keys = TicketKeyFile::open(&path).unwrap();
        (dir, keys)
    }

    /// A directory removed on drop (the engine has no tempfile dependency).
    mod tempfile_dir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }

        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "quench-tickets-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    #[test]
    fn seals_and_opens_and_servers_sharing_the_file_agree() {
        let (_d1, a) = file(&format!("# fleet key\n{KEY_A}\n"));
        let (_d2, b) = file(KEY_A);
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), ID_LEN + NONCE_LEN + 13 + TAG_LEN);
        assert_eq!(a.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(
            b.decrypt(&ticket).unwrap(),
            b"session state",
            "another server"
        );
        assert_ne!(
            a.encrypt(b"session state").unwrap(),
            ticket,
            "fresh nonce each time"
        );
        assert!(a.enabled());
        assert_eq!(a.lifetime(), 12 * 60 * 60);
    }

    #[test]
    fn rotation_opens_tickets_of_every_listed_key_and_seals_with_the_first() {
        let (_d1, old) = file(KEY_A);
        let (_d2, rotated) = file(&format!("{KEY_B}\n{KEY_A}\n"));
        let (_d3, other) = file(KEY_B);
        let from_old = old.encrypt(b"old").unwrap();
        assert_eq!(rotated.decrypt(&from_old).unwrap(), b"old");
        let from_new = rotated.encrypt(b"new").unwrap();
        assert_eq!(
            other.decrypt(&from_new).unwrap(),
            b"new",
            "sealed with the first key"
        );
        assert!(old.decrypt(&from_new).is_none(), "a key it does not list");
    }

    #[test]
    fn reload_takes_a_changed_file_and_keeps_keys_on_a_broken_one() {
        let (dir, keys) = file(KEY_A);
        let path = dir.path.join("tickets.keys");
        let before = keys.encrypt(b"x").unwrap();
        assert!(!keys.reload_if_changed(), "unchanged");
        // Some filesystems keep whole-second times: make the change visible.
        let later = std::time::SystemTime::now() + Duration::from_secs(2);
        std::fs::write(&path, "not hex\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(!keys.reload_if_changed(), "a broken file is not taken");
        assert_eq!(keys.decrypt(&before).unwrap(), b"x");
        std::fs::write(&path, KEY_B).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + Duration::from_secs(2))
            .unwrap();
        assert!(keys.reload_if_changed());
        assert!(keys.decrypt(&before).is_none(), "KEY_A is gone");
        // Replaced by a rename with the same time and length (`cp -p` and `mv`): the
        // inode tells.
        let fresh = dir.path.join("tickets.keys.new");
        std::fs::write(&fresh, KEY_A).unwrap();
        let same_time = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&fresh)
            .unwrap()
            .set_modified(same_time)
            .unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        assert!(keys.reload_if_changed());
        assert_eq!(keys.decrypt(&before).unwrap(), b"x", "KEY_A is back");
    }

    #[test]
    fn malformed_files_are_errors() {
        for (text, expected) in [
            ("", "no keys"),
            ("# only a comment\n\n", "no keys"),
            ("0011", "line 1: not a 32-byte key"),
            (
                &format!("{KEY_A}\nzz{}", &KEY_B[2..]),
                "line 2: not a 32-byte key",
            ),
            (&format!("{KEY_A}00"), "line 1"),
            (&format!("{KEY_A}\n").repeat(17), "more than 16 keys"),
        ] {
            let err = KeySet::parse(text).err().unwrap_or_default();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let missing = TicketKeyFile::open(Path::new("/nonexistent/quench.keys")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/quench.keys"),
            "{missing}"
        );
    }

    proptest! {
        /// Whatever a client presents, opening never panics and only our own tickets open;
        /// any flipped bit fails.
        #[test]
        fn hostile_tickets_never_open(
            junk in proptest::collection::vec(any::<u8>(), 0..200),
            plain in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<prop::sample::Index>(),
            bit in 0..8u8,
        ) {
            let keys = KeySet::parse(KEY_A).unwrap();
            prop_assert!(keys.open(&junk).is_none());
            let mut ticket = keys.seal(&plain).unwrap();
            prop_assert_eq!(keys.open(&ticket).unwrap(), plain);
            let i = flip.index(ticket.len());
            ticket[i] ^= 1 << bit;
            prop_assert!(keys.open(&ticket).is_none());
        }
    }
}
