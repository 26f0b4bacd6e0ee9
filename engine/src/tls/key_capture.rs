//! Taking the QUIC packet keys rustls derives instead of deriving them a second time.
//!
//! At each key change `rustls::quic` runs HKDF-Expand-Label for the key, IV and header
//! protection key of both directions and hands that material to the suite's
//! [`quic::Algorithm`] to build its own key objects, which quench never uses (packet
//! protection is `crate::crypto`). The configs quench builds therefore carry cipher suites
//! whose `quic` algorithm is [`CaptureKeys`]: it builds *our* [`PacketKey`] / [`HeaderKey`]
//! from the material, parks them in a thread-local that [`super::TlsSession`] clears before
//! and drains right after each `write_hs` (as with the key log), and gives rustls inert
//! stand-ins. rustls cannot be kept from running the expansions themselves (they happen in
//! its `KeyBuilder` before the algorithm is called), but nothing is derived twice and no
//! AEAD/AES key schedule is built for rustls's unused objects.
//!
//! rustls builds the local direction first, then the remote (`quic::Keys::new`); within a
//! direction the header and packet keys are told apart by kind. A session whose config did
//! not come from here (no capture) derives its keys from the key-log secrets instead.
use std::cell::RefCell;
use std::sync::Mutex;

use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::quic;
use rustls::{CipherSuite, SupportedCipherSuite, Tls13CipherSuite};

use crate::crypto::{DirectionalKeys, HeaderKey, PacketKey, Suite};

/// A key rustls's key builder produced through [`CaptureKeys`].
enum Built {
    Header(HeaderKey),
    Packet(PacketKey),
}

thread_local! {
    static BUILT: RefCell<Vec<Built>> = const { RefCell::new(Vec::new()) };
}

/// Discards whatever an earlier call left behind.
pub fn clear() {
    BUILT.with(|b| b.borrow_mut().clear());
}

/// The keys captured since the last [`clear`] as (local, remote), if rustls built exactly
/// one header and one packet key per direction (one key change); `None` otherwise, and the
/// capture is emptied either way.
pub fn take() -> Option<(DirectionalKeys, DirectionalKeys)> {
    let [local, remote] = take_directions::<2>()?;
    Some((local, remote))
}

/// The one direction's keys captured since the last [`clear`] (rustls's 0-RTT keys), if
/// exactly one header and one packet key were built; the capture is emptied either way.
pub fn take_one() -> Option<DirectionalKeys> {
    let [keys] = take_directions::<1>()?;
    Some(keys)
}

/// The captured keys of `N` directions, in the order rustls built them, if it built
/// exactly `N` header and `N` packet keys; the capture is emptied either way.
fn take_directions<const N: usize>() -> Option<[DirectionalKeys; N]> {
    BUILT.with(|b| {
        let mut built = b.borrow_mut();
        let mut headers: [Option<HeaderKey>; N] = std::array::from_fn(|_| None);
        let mut packets: [Option<PacketKey>; N] = std::array::from_fn(|_| None);
        let (mut nh, mut np) = (0, 0);
        let mut extra = false;
        for key in built.drain(..) {
            match key {
                Built::Header(h) if nh < N => {
                    headers[nh] = Some(h);
                    nh += 1;
                }
                Built::Packet(p) if np < N => {
                    packets[np] = Some(p);
                    np += 1;
                }
                _ => extra = true,
            }
        }
        if extra || nh < N || np < N {
            return None;
        }
        let mut headers = headers.into_iter().flatten();
        let mut packets = packets.into_iter().flatten();
        Some(std::array::from_fn(|_| DirectionalKeys {
            header: headers.next().expect("N headers"),
            packet: packets.next().expect("N packets"),
        }))
    })
}

/// The `quic::Algorithm` of the suites in quench's configs; see the module docs.
struct CaptureKeys {
    suite: Suite,
    /// The provider's own algorithm, for the properties rustls asks about.
    inner: &'static dyn quic::Algorithm,
}

impl quic::Algorithm for CaptureKeys {
    fn packet_key(&self, key: AeadKey, iv: Iv) -> Box<dyn quic::PacketKey> {
        match PacketKey::try_new(self.suite, key.as_ref(), iv.as_ref()) {
            Ok(k) => BUILT.with(|b| b.borrow_mut().push(Built::Packet(k))),
            // Cannot happen for lengths rustls derived for this suite; without a capture the
            // session falls back to the key-log secrets.
            Err(e) => tracing::error!(?e, "unexpected QUIC packet key material from rustls"),
        }
        Box::new(Inert)
    }

    fn header_protection_key(&self, key: AeadKey) -> Box<dyn quic::HeaderProtectionKey> {
        match HeaderKey::try_new(self.suite, key.as_ref()) {
            Ok(k) => BUILT.with(|b| b.borrow_mut().push(Built::Header(k))),
            Err(e) => tracing::error!(?e, "unexpected QUIC header key material from rustls"),
        }
        Box::new(Inert)
    }

    fn aead_key_len(&self) -> usize {
        self.inner.aead_key_len()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// What rustls holds in place of its own QUIC keys. quench never passes packets through
/// rustls, so these are never asked to protect anything; if they were, they refuse.
struct Inert;

impl quic::PacketKey for Inert {
    fn encrypt_in_place(
        &self,
        _packet_number: u64,
        _header: &[u8],
        _payload: &mut [u8],
    ) -> Result<quic::Tag, rustls::Error> {
        Err(rustls::Error::EncryptError)
    }

    fn decrypt_in_place<'a>(
        &self,
        _packet_number: u64,
        _header: &[u8],
        _payload: &'a mut [u8],
    ) -> Result<&'a [u8], rustls::Error> {
        Err(rustls::Error::DecryptError)
    }

    fn tag_len(&self) -> usize {
        crate::crypto::TAG_LEN
    }

    fn confidentiality_limit(&self) -> u64 {
        0
    }

    fn integrity_limit(&self) -> u64 {
        0
    }
}

impl quic::HeaderProtectionKey for Inert {
    fn encrypt_in_place(
        &self,
        _sample: &[u8],
        _first: &mut u8,
        _packet_number: &mut [u8],
    ) -> Result<(), rustls::Error> {
        Err(rustls::Error::EncryptError)
    }

    fn decrypt_in_place(
        &self,
        _sample: &[u8],
        _first: &mut u8,
        _packet_number: &mut [u8],
    ) -> Result<(), rustls::Error> {
        Err(rustls::Error::DecryptError)
    }

    fn sample_len(&self) -> usize {
        crate::crypto::SAMPLE_LEN
    }
}

fn our_suite(suite: CipherSuite) -> Option<Suite> {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::ChaCha20Poly1305),
        _ => None,
    }
}

/// `suite` with [`CaptureKeys`] as its QUIC algorithm. rustls wants `&'static` suites, so
/// each distinct suite is wrapped once per process and kept (providers' suites are statics,
/// so this is a handful of small allocations). Suites quench has no keys for, or without
/// QUIC support, are returned unchanged.
pub fn capturing(suite: SupportedCipherSuite) -> SupportedCipherSuite {
    let SupportedCipherSuite::Tls13(original) = suite else {
        return suite;
    };
    let (Some(ours), Some(inner)) = (our_suite(original.common.suite), original.quic) else {
        return suite;
    };
    /// (original, wrapped) by address.
    static WRAPPED: Mutex<Vec<(usize, &'static Tls13CipherSuite)>> = Mutex::new(Vec::new());
    let addr = |s: &'static Tls13CipherSuite| s as *const Tls13CipherSuite as usize;
    let mut wrapped = WRAPPED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, w)) = wrapped
        .iter()
        .find(|(o, w)| *o == addr(original) || addr(w) == addr(original))
    {
        return SupportedCipherSuite::Tls13(w);
    }
    let quic: &'static CaptureKeys = Box::leak(Box::new(CaptureKeys { suite: ours, inner }));
    let w: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: original.common.suite,
            hash_provider: original.common.hash_provider,
            confidentiality_limit: original.common.confidentiality_limit,
        },
        hkdf_provider: original.hkdf_provider,
        aead_alg: original.aead_alg,
        quic: Some(quic),
    }));
    wrapped.push((addr(original), w));
    SupportedCipherSuite::Tls13(w)
}
