//! Stateless reset tokens (RFC 9000 §10.3.2) and address-validation tokens for Retry and
//! NEW_TOKEN (RFC 9000 §8.1.2–8.1.4).
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::hmac::{HmacHash, HmacKey};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::aead::TAG_LEN;
use crate::wire::net::canonical_ip;

/// Longest connection ID (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;
const NONCE_LEN: usize = 12;
/// Largest plaintext: kind, issued_at, QUIC version, IPv6, port, two length-prefixed CIDs.
const MAX_PLAIN: usize = 1 + 8 + 4 + 1 + 16 + 2 + 1 + MAX_CID_LEN + 1 + MAX_CID_LEN;
/// Binds tokens to their purpose so the key cannot be confused with another use.
const AAD: &[u8] = b"quench address token v2";
/// In clear in front of every token, with its kind: a token of another deployment or
/// implementation matches it by chance once in 2^32, not once in 256 as a kind byte alone.
const MAGIC: [u8; 3] = *b"qtk";
const KIND_RETRY: u8 = 0;
const KIND_NEW_TOKEN: u8 = 1;
/// Tolerated clock skew between workers for tokens "issued in the future".
const FUTURE_SKEW: Duration = Duration::from_secs(60);

/// A peer's stateless reset token as a hash-map key: compared in constant time, so a
/// lookup leaks nothing about stored tokens (RFC 9000 §10.3.1). The maps hashing it are
/// randomly seeded and read every byte.
#[derive(Clone, Copy, Debug)]
pub struct PeerResetToken(pub [u8; 16]);

impl PartialEq for PeerResetToken {
    fn eq(&self, other: &Self) -> bool {
        super::constant_time_eq(&self.0, &other.0)
    }
}

impl Eq for PeerResetToken {}

impl std::hash::Hash for PeerResetToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

fn random_32() -> [u8; 32] {
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).expect("system RNG available");
    secret
}

/// Derives stateless reset tokens: HMAC-SHA256(static key, cid) truncated to 16 bytes,
/// so any worker with the key can reset a connection it has no state for.
pub struct ResetTokenKey {
    key: HmacKey,
}

impl ResetTokenKey {
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            key: HmacKey::new(HmacHash::Sha256, secret),
        }
    }

    pub fn random() -> Self {
        Self::new(&random_32())
    }

    pub fn token(&self, cid: &[u8]) -> [u8; 16] {
        let tag = self.key.sign(&[cid]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }
}

/// A connection ID carried inside a token, without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenCid {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl TokenCid {
    fn new(cid: &[u8]) -> Option<Self> {
        if cid.len() > MAX_CID_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_CID_LEN];
        bytes[..cid.len()].copy_from_slice(cid);
        Some(Self {
            len: cid.len() as u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::ops::Deref for TokenCid {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for TokenCid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What a valid token held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidatedToken {
    /// From our Retry: the Initial's original DCID and the SCID we chose in the Retry
    /// (both go into transport parameters, RFC 9000 §7.3).
    Retry {
        original_dcid: TokenCid,
        retry_scid: TokenCid,
    },
    /// From a NEW_TOKEN frame on an earlier connection.
    NewToken,
}

/// How old a token of each kind may be when it comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLifetimes {
    /// Retry tokens come back within a round trip.
    pub retry: Duration,
    /// NEW_TOKEN tokens come back with a later connection, hours or days on.
    pub new_token: Duration,
}

impl From<Duration> for TokenLifetimes {
    /// The same bound for both kinds.
    fn from(d: Duration) -> Self {
        Self {
            retry: d,
            new_token: d,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TokenError {
    /// Not sealed by our key, altered, or not a token of ours at all.
    #[error("token is forged or malformed")]
    Invalid,
    /// Issued for another client address (Retry tokens: address and port).
    #[error("token was issued to another address")]
    WrongAddress,
    #[error("token expired")]
    Expired,
    /// Issued on a connection of another QUIC version (RFC 9369 §5; a Retry's, §4).
    #[error("token was issued for another QUIC version")]
    WrongVersion,
}

/// Seals and opens address-validation tokens: AES-256-GCM with a random nonce,
/// token = "qtk" | kind | nonce | ciphertext | tag. The kind is in clear (and
/// authenticated as AAD) so that a token we cannot open still tells how it was given out
/// (RFC 9000 §8.1.1): an invalid Retry token closes with INVALID_TOKEN, any other is ignored.
pub struct TokenKey {
    key: LessSafeKey,
}

/// What a token of `kind` is sealed with: the purpose string, then the kind.
fn aad(kind: u8) -> [u8; AAD.len() + 1] {
    let mut aad = [kind; AAD.len() + 1];
    aad[..AAD.len()].copy_from_slice(AAD);
    aad
}

/// A token's nonce: random, unique per token, and authenticated with it.
pub type TokenNonce = [u8; NONCE_LEN];

/// The nonce of a token that has our shape (valid or not: check with `open` first).
pub fn nonce_of(token: &[u8]) -> Option<TokenNonce> {
    let at = MAGIC.len() + 1;
    token.get(at..at + NONCE_LEN)?.try_into().ok()
}

/// True if `token` says it came from a Retry (its clear kind byte), whether or not it is
/// valid: a client that used one will not accept another Retry (RFC 9000 §8.1.2).
pub fn claims_retry(token: &[u8]) -> bool {
    token.len() > MAGIC.len() && token[..MAGIC.len()] == MAGIC && token[MAGIC.len()] == KIND_RETRY
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Appends the family-tagged IP address.
fn put_ip(buf: &mut [u8; MAX_PLAIN], at: &mut usize, ip: IpAddr) {
    // Normalise v4-mapped addresses so dual-stack sockets match either way.
    match canonical_ip(ip) {
        IpAddr::V4(v4) => put(buf, at, &[4]).and_then(|_| put(buf, at, &v4.octets())),
        IpAddr::V6(v6) => put(buf, at, &[6]).and_then(|_| put(buf, at, &v6.octets())),
    };
}

fn put(buf: &mut [u8; MAX_PLAIN], at: &mut usize, bytes: &[u8]) -> Option<()> {
    buf.get_mut(*at..*at + bytes.len())?.copy_from_slice(bytes);
    *at += bytes.len();
    Some(())
}

/// A bounds-checked reader over a decrypted token.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn ip(&mut self) -> Option<IpAddr> {
        match self.u8()? {
            4 => <[u8; 4]>::try_from(self.take(4)?).ok().map(IpAddr::from),
            6 => <[u8; 16]>::try_from(self.take(16)?).ok().map(IpAddr::from),
            _ => None,
        }
    }

    fn cid(&mut self) -> Option<TokenCid> {
        let len = usize::from(self.u8()?);
        TokenCid::new(self.take(len)?)
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    canonical_ip(a) == canonical_ip(b)
}

impl TokenKey {
    pub fn new(secret: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, secret).expect("AES-256 key is 32 bytes");
        Self {
            key: LessSafeKey::new(key),
        }
    }

    pub fn random() -> Self {
        Self::new(&random_32())
    }

    /// A Retry token bound to the client's address and port (RFC 9000 §8.1.2). CIDs
    /// longer than 20 bytes are not valid QUIC; they are truncated to 20.
    pub fn seal_retry(
        &self,
        client: SocketAddr,
        version: u32,
        original_dcid: &[u8],
        retry_scid: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) {
        let mut plain = [0u8; MAX_PLAIN];
        let mut at = 0;
        let odcid = &original_dcid[..original_dcid.len().min(MAX_CID_LEN)];
        let scid = &retry_scid[..retry_scid.len().min(MAX_CID_LEN)];
        put(&mut plain, &mut at, &[KIND_RETRY]);
        put(&mut plain, &mut at, &unix_secs(now).to_be_bytes());
        put(&mut plain, &mut at, &version.to_be_bytes());
        put_ip(&mut plain, &mut at, client.ip());
        put(&mut plain, &mut at, &client.port().to_be_bytes());
        put(&mut plain, &mut at, &[odcid.len() as u8]);
        put(&mut plain, &mut at, odcid);
        put(&mut plain, &mut at, &[scid.len() as u8]);
        put(&mut plain, &mut at, scid);
        self.seal(&mut plain[..at], out);
    }

    /// A NEW_TOKEN token bound to the client's IP only: ports change across connections
    /// through NATs (RFC 9000 §8.1.3). `version`: the connection's (RFC 9369 §5).
    pub fn seal_new_token(&self, client: IpAddr, version: u32, now: SystemTime, out: &mut Vec<u8>) {
        let mut plain = [0u8; MAX_PLAIN];
        let mut at = 0;
        put(&mut plain, &mut at, &[KIND_NEW_TOKEN]);
        put(&mut plain, &mut at, &unix_secs(now).to_be_bytes());
        put(&mut plain, &mut at, &version.to_be_bytes());
        put_ip(&mut plain, &mut at, client);
        self.seal(&mut plain[..at], out);
    }

    /// `plain` starts with its kind byte, which also goes in clear in front.
    fn seal(&self, plain: &mut [u8], out: &mut Vec<u8>) {
        let kind = plain[0];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system RNG available");
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind)),
                plain,
            )
            .expect("token plaintext is small");
        out.reserve(MAGIC.len() + 1 + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(kind);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        out.extend_from_slice(tag.as_ref());
    }

    /// Validates a token from a client Initial at `client` in `version`; `lifetimes` bound
    /// its age by kind.
    pub fn open(
        &self,
        token: &[u8],
        client: SocketAddr,
        version: u32,
        now: SystemTime,
        lifetimes: impl Into<TokenLifetimes>,
    ) -> Result<ValidatedToken, TokenError> {
        let lifetimes = lifetimes.into();
        const CLEAR: usize = MAGIC.len() + 1;
        if token.len() < CLEAR + NONCE_LEN + TAG_LEN
            || token.len() > CLEAR + NONCE_LEN + MAX_PLAIN + TAG_LEN
            || token[..MAGIC.len()] != MAGIC
        {
            return Err(TokenError::Invalid);
        }
        let (clear_kind, token) = token[MAGIC.len()..].split_at(1);
        let (nonce, sealed) = token.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| TokenError::Invalid)?;
        let mut buf = [0u8; MAX_PLAIN + TAG_LEN];
        let buf = &mut buf[..sealed.len()];
        buf.copy_from_slice(sealed);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(clear_kind[0])),
                buf,
            )
            .map_err(|_| TokenError::Invalid)?;
        let mut r = Reader(plain);
        let kind = r.u8().ok_or(TokenError::Invalid)?;
        if kind != clear_kind[0] {
            return Err(TokenError::Invalid);
        }
        let issued = r.take(8).ok_or(TokenError::Invalid)?;
        let issued = u64::from_be_bytes(issued.try_into().map_err(|_| TokenError::Invalid)?);
        let issued_for = r.take(4).ok_or(TokenError::Invalid)?;
        let issued_for =
            u32::from_be_bytes(issued_for.try_into().map_err(|_| TokenError::Invalid)?);
        let ip = r.ip().ok_or(TokenError::Invalid)?;
        let result = match kind {
            KIND_RETRY => {
                let port = r.take(2).ok_or(TokenError::Invalid)?;
                let port = u16::from_be_bytes([port[0], port[1]]);
                let original_dcid = r.cid().ok_or(TokenError::Invalid)?;
                let retry_scid = r.cid().ok_or(TokenError::Invalid)?;
                if !same_ip(ip, client.ip()) || port != client.port() {
                    return Err(TokenError::WrongAddress);
                }
                ValidatedToken::Retry {
                    original_dcid,
                    retry_scid,
                }
            }
            KIND_NEW_TOKEN => {
                if !same_ip(ip, client.ip()) {
                    return Err(TokenError::WrongAddress);
                }
                ValidatedToken::NewToken
            }
            _ => return Err(TokenError::Invalid),
        };
        if !r.0.is_empty() {
            return Err(TokenError::Invalid);
        }
        if issued_for != version {
            return Err(TokenError::WrongVersion);
        }
        let lifetime = match result {
            ValidatedToken::Retry { .. } => lifetimes.retry,
            ValidatedToken::NewToken => lifetimes.new_token,
        };
        let now = unix_secs(now);
        if issued > now.saturating_add(FUTURE_SKEW.as_secs())
            || now.saturating_sub(issued) > lifetime.as_secs()
        {
            return Err(TokenError::Expired);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    const V1: u32 = crate::wire::header::VERSION_1;
    const V2: u32 = crate::wire::header::VERSION_2;
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reset_token_is_deterministic_per_key_and_cid() {
        let a = ResetTokenKey::new(&[1; 32]);
        let b = ResetTokenKey::new(&[2; 32]);
        assert_eq!(a.token(b"cid-1"), a.token(b"cid-1"));
        assert_ne!(a.token(b"cid-1"), a.token(b"cid-2"));
        assert_ne!(a.token(b"cid-1"), b.token(b"cid-1"));
        assert_ne!(
            ResetTokenKey::random().token(b"x"),
            ResetTokenKey::random().token(b"x")
        );
    }

    #[test]
    fn retry_token_round_trip() {
        let key = TokenKey::new(&[9; 32]);
        let now = SystemTime::now();
        let client = addr("192.0.2.1:4433");
        let mut tok = Vec::new();
        key.seal_retry(
            client,
            V1,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0xaa; 20],
            now,
            &mut tok,
        );
        let life = Duration::from_secs(10);
        match key.open(&tok, client, V1, now + Duration::from_secs(3), life) {
            Ok(ValidatedToken::Retry {
                original_dcid,
                retry_scid,
            }) => {
                assert_eq!(&*original_dcid, &[1, 2, 3, 4, 5, 6, 7, 8]);
                assert_eq!(&*retry_scid, &[0xaa; 20]);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Same IP, other port: Retry tokens are bound to the port too.
        assert_eq!(
            key.open(&tok, addr("192.0.2.1:4434"), V1, now, life),
            Err(TokenError::WrongAddress)
        );
        assert_eq!(
            key.open(&tok, addr("192.0.2.2:4433"), V1, now, life),
            Err(TokenError::WrongAddress)
        );
        // A v4-mapped v6 peer address is the same client.
        assert!(key
            .open(&tok, addr("[::ffff:192.0.2.1]:4433"), V1, now, life)
            .is_ok());
        assert_eq!(
            key.open(&tok, client, V1, now + Duration::from_secs(11), life),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key.open(&tok, client, V1, now - Duration::from_secs(3600), life),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn each_kind_has_its_own_lifetime() {
        let key = TokenKey::random();
        let issued = SystemTime::now();
        let client = addr("192.0.2.1:4433");
        let mut new_token = Vec::new();
        key.seal_new_token(client.ip(), V1, issued, &mut new_token);
        let mut retry = Vec::new();
        let cid = [7u8; 8];
        key.seal_retry(client, V1, &cid, &cid, issued, &mut retry);
        let lifetimes = TokenLifetimes {
            retry: Duration::from_secs(10),
            new_token: Duration::from_secs(86_400),
        };
        let an_hour_on = issued + Duration::from_secs(3600);
        assert_eq!(
            key.open(&new_token, client, V1, an_hour_on, lifetimes),
            Ok(ValidatedToken::NewToken)
        );
        assert_eq!(
            key.open(&retry, client, V1, an_hour_on, lifetimes),
            Err(TokenError::Expired)
        );
        let two_days_on = issued + Duration::from_secs(2 * 86_400);
        assert_eq!(
            key.open(&new_token, client, V1, two_days_on, lifetimes),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn new_token_round_trip_ignores_port() {
        let key = TokenKey::random();
        let now = SystemTime::now();
        let mut tok = Vec::new();
        key.seal_new_token("2001:db8::1".parse().unwrap(), V1, now, &mut tok);
        let life = Duration::from_secs(86400);
        assert_eq!(
            key.open(&tok, addr("[2001:db8::1]:1"), V1, now, life),
            Ok(ValidatedToken::NewToken)
        );
        assert_eq!(
            key.open(&tok, addr("[2001:db8::2]:1"), V1, now, life),
            Err(TokenError::WrongAddress)
        );
        assert_eq!(
            key.open(
                &tok,
                addr("[2001:db8::1]:1"),
                V1,
                now + Duration::from_secs(86401),
                life
            ),
            Err(TokenError::Expired)
        );
    }

    /// RFC 9369 §5: a token is good only for a connection in the version it was issued
    /// for; a Retry token's client must not switch versions either (§4).
    #[test]
    fn tokens_are_bound_to_their_quic_version() {
        let key = TokenKey::random();
        let now = SystemTime::now();
        let client = addr("192.0.2.1:4433");
        let life = Duration::from_secs(60);
        let mut new_token = Vec::new();
        key.seal_new_token(client.ip(), V2, now, &mut new_token);
        assert_eq!(
            key.open(&new_token, client, V2, now, life),
            Ok(ValidatedToken::NewToken)
        );
        assert_eq!(
            key.open(&new_token, client, V1, now, life),
            Err(TokenError::WrongVersion)
        );
        let mut retry = Vec::new();
        key.seal_retry(client, V1, &[1; 8], &[2; 8], now, &mut retry);
        assert!(key.open(&retry, client, V1, now, life).is_ok());
        assert_eq!(
            key.open(&retry, client, V2, now, life),
            Err(TokenError::WrongVersion)
        );
    }

    #[test]
    fn forged_tokens_are_rejected() {
        let key = TokenKey::new(&[9; 32]);
        let other = TokenKey::new(&[8; 32]);
        let now = SystemTime::now();
        let client = addr("10.0.0.1:1000");
        let life = Duration::from_secs(60);
        let mut tok = Vec::new();
        key.seal_new_token(client.ip(), V1, now, &mut tok);
        assert_eq!(
            other.open(&tok, client, V1, now, life),
            Err(TokenError::Invalid)
        );
        for i in 0..tok.len() {
            let mut bad = tok.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                key.open(&bad, client, V1, now, life),
                Err(TokenError::Invalid)
            );
        }
        for len in 0..tok.len() {
            assert_eq!(
                key.open(&tok[..len], client, V1, now, life),
                Err(TokenError::Invalid)
            );
        }
        assert_eq!(
            key.open(&[0; 500], client, V1, now, life),
            Err(TokenError::Invalid)
        );
        // The clear kind says how a token was given out, even one we cannot open.
        let mut retry = Vec::new();
        key.seal_retry(client, V1, &[1; 8], &[2; 8], now, &mut retry);
        assert!(claims_retry(&retry) && !claims_retry(&tok));
        let mut relabelled = tok.clone();
        relabelled[MAGIC.len()] = retry[MAGIC.len()];
        assert_eq!(
            key.open(&relabelled, client, V1, now, life),
            Err(TokenError::Invalid),
            "the kind is authenticated"
        );
        // Two seals of the same content differ (random nonce).
        let mut tok2 = Vec::new();
        key.seal_new_token(client.ip(), V1, now, &mut tok2);
        assert_ne!(tok, tok2);
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(token in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let key = TokenKey::new(&[3; 32]);
            let client = addr("10.0.0.1:1");
            proptest::prop_assert_eq!(
                key.open(&token, client, V1, SystemTime::now(), Duration::from_secs(60)),
                Err(TokenError::Invalid)
            );
        }
    }
}
