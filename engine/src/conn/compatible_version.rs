//! Compatible version negotiation (RFC 9368 §2.3) between QUIC v1 and v2 (RFC 9369 §4).
//!
//! The client sends its first flight in its original version and lists in version_information
//! the versions that flight converts to. A server that prefers one of those reads the
//! ClientHello before its TLS session answers it, switches, and sends every CRYPTO frame in
//! the negotiated version; the client learns it from the first long header in another
//! version that decrypts under that version's Initial keys. No round trip is spent.
use std::sync::Arc;

use super::connection::{server_tls, tls_failure, Connection};
use crate::crypto::secrets::{initial_keys, Keys};
use crate::crypto::DirectionalKeys;
use crate::tls::client_hello::{self, HelloPeek};
use crate::wire::error::TransportError;
use crate::wire::header::SUPPORTED_VERSIONS;
use crate::wire::transport_params::{peek_version_information, TransportParameters};
use crate::{Epoch, Side};

/// RFC 9369 §4: v1 and v2 are compatible with each other, in both directions.
pub(crate) fn compatible(from: u32, to: u32) -> bool {
    from != to && SUPPORTED_VERSIONS.contains(&from) && SUPPORTED_VERSIONS.contains(&to)
}

/// The state of a negotiation that is not decided yet, or its leftover on the server.
pub(crate) enum CompatibleNegotiation {
    /// Server: the client's Initial CRYPTO bytes, held until its ClientHello is whole.
    Server(Box<ServerPending>),
    /// Client: versions the server may move the connection to (our Available Versions), and
    /// the Initial keys of the one a server packet came in, once derived.
    Client {
        available: Vec<u32>,
        candidate: Option<Box<(u32, Keys)>>,
    },
    /// Server, after switching: the client's original-version Initial receive keys, for the
    /// rest of its first flight (RFC 9369 §4: kept until the Initial keys are discarded).
    OriginalInitial {
        version: u32,
        remote: DirectionalKeys,
    },
}

/// What a server needs to remake its TLS session in another version.
pub(crate) struct ServerPending {
    hello: Vec<u8>,
    tls_config: Arc<rustls::ServerConfig>,
    params: TransportParameters,
    /// The server's preference, most preferred first (`EndpointConfig::preferred_versions`).
    preferred: Vec<u32>,
}

impl ServerPending {
    pub(crate) fn new(
        tls_config: Arc<rustls::ServerConfig>,
        params: TransportParameters,
        preferred: Vec<u32>,
    ) -> Self {
        Self {
            hello: Vec::new(),
            tls_config,
            params,
            preferred,
        }
    }
}

/// The server's choice (§2.3): its most preferred version that the client's first flight
/// converts to, or the client's own if that comes first or nothing else qualifies.
pub(crate) fn choose_for_server(
    current: u32,
    preferred: &[u32],
    client_available: Option<&[u32]>,
) -> u32 {
    let Some(available) = client_available else {
        return current;
    };
    preferred
        .iter()
        .copied()
        .find(|&v| v == current || (available.contains(&v) && compatible(current, v)))
        .unwrap_or(current)
}

/// The versions a client lists as Available (RFC 9368 §3): every version of its
/// preference its first flight in `original` converts to, in preference order, `original`
/// included (first when it is not in `preference`).
pub(crate) fn client_available(original: u32, preference: &[u32]) -> Vec<u32> {
    let mut available: Vec<u32> = preference
        .iter()
        .copied()
        .filter(|&v| v == original || compatible(original, v))
        .collect();
    if !available.contains(&original) {
        available.insert(0, original);
    }
    available
}

impl Connection {
    /// Server, at the Initial epoch while a negotiation is pending: keeps the client's
    /// CRYPTO bytes until its ClientHello is whole, then picks the version, remakes the TLS
    /// session for it if it changed, and gives TLS the bytes. Returns whether TLS may read
    /// (false: still waiting for the rest of the ClientHello).
    #[cold]
    #[inline(never)]
    pub(crate) fn negotiate_from_client_hello(&mut self) -> Result<bool, TransportError> {
        let mut pending = match self.compatible.take() {
            Some(CompatibleNegotiation::Server(pending)) => pending,
            other => {
                self.compatible = other;
                return Ok(true);
            }
        };
        let crypto = &mut self.spaces[Epoch::Initial.index()].crypto;
        while let Some(chunk) = crypto.read_chunk() {
            pending.hello.extend_from_slice(chunk);
        }
        let chosen = match client_hello::peek(&pending.hello) {
            HelloPeek::Incomplete => {
                self.compatible = Some(CompatibleNegotiation::Server(pending));
                return Ok(false);
            }
            HelloPeek::Unusable => self.version,
            HelloPeek::Complete {
                transport_parameters,
            } => {
                let vi = transport_parameters.and_then(peek_version_information);
                let available = vi
                    .as_ref()
                    .filter(|vi| vi.chosen == self.version)
                    .map(|vi| vi.available.as_slice());
                choose_for_server(self.version, &pending.preferred, available)
            }
        };
        let ServerPending {
            hello,
            tls_config,
            mut params,
            ..
        } = *pending;
        if chosen != self.version {
            if let Some(vi) = params.version_information.as_mut() {
                vi.chosen = chosen;
            }
            self.tls = server_tls(&tls_config, chosen, &params)?;
            let dcid = self.retry_scid.unwrap_or(self.original_dcid);
            let keys = initial_keys(chosen, &dcid, Side::Server);
            let original = self.spaces[Epoch::Initial.index()].keys.replace(keys);
            tracing::debug!(
                from = self.version,
                to = chosen,
                "compatible version negotiation"
            );
            if let Some(original) = original {
                self.compatible = Some(CompatibleNegotiation::OriginalInitial {
                    version: self.version,
                    remote: original.remote,
                });
            }
            self.version = chosen;
            self.stats.compatible_version_switch = true;
        }
        self.tls.read_handshake(&hello).map_err(tls_failure)?;
        Ok(true)
    }

    /// Whether a long-header Initial in `version` (not the connection's) is one to open:
    /// a server's client still sending its original version, or a client's server that
    /// moved to a version we offered. For the latter the candidate keys are derived here.
    #[cold]
    #[inline(never)]
    pub(crate) fn accepts_initial_in(&mut self, version: u32) -> bool {
        match self.compatible.as_mut() {
            Some(CompatibleNegotiation::OriginalInitial { version: v, .. }) => *v == version,
            Some(CompatibleNegotiation::Client {
                available,
                candidate,
            }) => {
                if !available.contains(&version) || !compatible(self.version, version) {
                    return false;
                }
                if candidate.as_ref().is_none_or(|c| c.0 != version) {
                    let dcid = self.retry_scid.unwrap_or(self.original_dcid);
                    *candidate = Some(Box::new((
                        version,
                        initial_keys(version, &dcid, Side::Client),
                    )));
                }
                true
            }
            _ => false,
        }
    }

    /// The receive keys for an Initial in another version (`accepts_initial_in` said yes).
    #[cold]
    #[inline(never)]
    pub(crate) fn other_version_initial_keys(&self) -> Option<&DirectionalKeys> {
        match self.compatible.as_ref()? {
            CompatibleNegotiation::OriginalInitial { remote, .. } => Some(remote),
            CompatibleNegotiation::Client { candidate, .. } => Some(&candidate.as_ref()?.1.remote),
            CompatibleNegotiation::Server(_) => None,
        }
    }

    /// Client: a server Initial in the candidate version decrypted: that is the negotiated
    /// version (RFC 9369 §4). Initials are sent in it from now on, and TLS derives its keys
    /// with its labels.
    #[cold]
    #[inline(never)]
    pub(crate) fn adopt_server_version(&mut self) {
        let Some(CompatibleNegotiation::Client {
            candidate: Some(candidate),
            ..
        }) = self.compatible.take()
        else {
            return;
        };
        let (version, keys) = *candidate;
        // `accepts_initial_in` only lets supported versions through.
        if self.tls.adopt_version(version).is_err() {
            return;
        }
        tracing::debug!(
            from = self.version,
            to = version,
            "server negotiated a compatible version"
        );
        self.spaces[Epoch::Initial.index()].keys = Some(keys);
        self.version = version;
        self.stats.compatible_version_switch = true;
    }

    /// Drops what is left of a negotiation (out of line: its drop code has no place on the
    /// packet path that discards the Initial space).
    #[cold]
    #[inline(never)]
    pub(crate) fn end_compatible_negotiation(&mut self) {
        self.compatible = None;
    }

    /// Client: the version is settled once handshake keys exist (a server that answers in
    /// the original version has chosen it, RFC 9369 §4). Server: the original-version keys
    /// go with the Initial space.
    pub(crate) fn settle_version(&mut self) {
        if !matches!(self.compatible, Some(CompatibleNegotiation::Server(_))) {
            self.compatible = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::{VERSION_1, VERSION_2};

    #[test]
    fn v1_and_v2_convert_into_each_other_only() {
        assert!(compatible(VERSION_1, VERSION_2));
        assert!(compatible(VERSION_2, VERSION_1));
        assert!(!compatible(VERSION_1, VERSION_1));
        assert!(!compatible(VERSION_1, 0x1a2a_3a4a));
        assert!(!compatible(0xff00_001d, VERSION_1));
    }

    #[test]
    fn the_server_follows_its_preference_among_what_the_client_offers() {
        let both = [VERSION_1, VERSION_2];
        // No preference configured: stay.
        assert_eq!(choose_for_server(VERSION_1, &[], Some(&both)), VERSION_1);
        // Prefers v2, the client offers it: switch.
        assert_eq!(
            choose_for_server(VERSION_1, &[VERSION_2, VERSION_1], Some(&both)),
            VERSION_2
        );
        // The client did not offer v2, or sent no version_information.
        assert_eq!(
            choose_for_server(VERSION_1, &[VERSION_2], Some(&[VERSION_1])),
            VERSION_1
        );
        assert_eq!(choose_for_server(VERSION_1, &[VERSION_2], None), VERSION_1);
        // The client's own version ranks first with the server.
        assert_eq!(
            choose_for_server(VERSION_2, &[VERSION_2, VERSION_1], Some(&both)),
            VERSION_2
        );
        assert_eq!(
            choose_for_server(VERSION_2, &[VERSION_1], Some(&[VERSION_2, VERSION_1])),
            VERSION_1
        );
        // A reserved version the client lists is never chosen.
        assert_eq!(
            choose_for_server(VERSION_1, &[0x0a0a_0a0a], Some(&[VERSION_1, 0x0a0a_0a0a])),
            VERSION_1
        );
    }

    #[test]
    fn a_client_lists_what_its_first_flight_converts_to() {
        assert_eq!(
            client_available(VERSION_1, &[VERSION_2, VERSION_1]),
            [VERSION_2, VERSION_1]
        );
        assert_eq!(client_available(VERSION_2, &[VERSION_2]), [VERSION_2]);
        assert_eq!(
            client_available(VERSION_1, &[VERSION_2]),
            [VERSION_1, VERSION_2]
        );
    }
}
