//! Limits on AEAD usage (RFC 9001 §6.6): packets sealed with one 1-RTT key are bounded by
//! the suite's confidentiality limit (a key update starts a fresh count), and packets that
//! fail authentication over the whole connection by its integrity limit.

/// Packets kept in hand below the confidentiality limit for closing: CONNECTION_CLOSE is
/// sealed with the same key and repeated, at most once per received datagram, while closing.
const CLOSE_RESERVE: u64 = 1024;

/// What the sender must do after sealing another packet with the current key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SealLimit {
    Continue,
    /// Start a key update now.
    Update,
    /// No key update is possible in time: close with AEAD_LIMIT_REACHED (§6.6 recommends
    /// closing before reaching a state where updates are impossible).
    Close,
}

/// `sealed`: packets sealed with the current key; `limit`: its confidentiality limit;
/// `update_allowed`: whether a key update may start now (the previous one is confirmed).
pub(crate) fn after_seal(sealed: u64, limit: u64, update_allowed: bool) -> SealLimit {
    let update_from = update_from(limit);
    let close_at = limit.saturating_sub(CLOSE_RESERVE.min(limit / 8));
    if sealed < update_from {
        SealLimit::Continue
    } else if update_allowed {
        SealLimit::Update
    } else if sealed >= close_at {
        SealLimit::Close
    } else {
        SealLimit::Continue
    }
}

/// Start updating at three quarters of the limit: an update must wait until the previous
/// one is acknowledged (§6.1), which leaves many round trips of room.
fn update_from(limit: u64) -> u64 {
    limit - limit / 4
}

/// Whether new ack-eliciting data must wait: the key is due for an update that may not
/// start yet because none of its packets has been acknowledged. Without the wait a window
/// larger than the rest of the key's allowance would use it up within one round trip and
/// close the connection; with it, the acknowledgments of the packets already in flight
/// (or a PTO probe, which does not wait) allow the update within about a round trip.
pub(crate) fn must_wait(sealed: u64, limit: u64, update_allowed: bool) -> bool {
    sealed >= update_from(limit) && !update_allowed
}

/// The suite's limit, lowered to the configured one if that is smaller.
pub(crate) fn capped(suite_limit: u64, configured: Option<u64>) -> u64 {
    configured.map_or(suite_limit, |l| suite_limit.min(l))
}

/// True once more packets failed authentication than the integrity limit allows.
pub(crate) fn integrity_exceeded(failures: u64, limit: u64) -> bool {
    failures > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCM: u64 = 1 << 23;

    #[test]
    fn updates_from_three_quarters_of_the_limit() {
        assert_eq!(after_seal(GCM / 2, GCM, true), SealLimit::Continue);
        assert_eq!(after_seal(GCM * 3 / 4 - 1, GCM, true), SealLimit::Continue);
        assert_eq!(after_seal(GCM * 3 / 4, GCM, true), SealLimit::Update);
        // Not yet allowed: keep going while there is room, retry on the next packet.
        assert_eq!(after_seal(GCM * 3 / 4, GCM, false), SealLimit::Continue);
    }

    #[test]
    fn new_data_waits_only_for_an_update_that_is_due_and_not_yet_allowed() {
        assert!(!must_wait(GCM * 3 / 4 - 1, GCM, false));
        assert!(must_wait(GCM * 3 / 4, GCM, false));
        assert!(!must_wait(GCM * 3 / 4, GCM, true));
        assert!(!must_wait(1 << 40, u64::MAX, false));
    }

    #[test]
    fn closes_before_the_limit_when_no_update_is_possible() {
        assert_eq!(after_seal(GCM - 1025, GCM, false), SealLimit::Continue);
        assert_eq!(after_seal(GCM - 1024, GCM, false), SealLimit::Close);
        assert_eq!(after_seal(GCM + 5, GCM, false), SealLimit::Close);
        // An update is still preferred whenever it is possible.
        assert_eq!(after_seal(GCM - 1, GCM, true), SealLimit::Update);
        // Small (configured) limits keep a proportional reserve.
        assert_eq!(after_seal(90, 100, false), SealLimit::Close);
        assert_eq!(after_seal(80, 100, false), SealLimit::Continue);
        // ChaCha20-Poly1305 has no practical limit.
        assert_eq!(after_seal(1 << 40, u64::MAX, false), SealLimit::Continue);
    }

    #[test]
    fn configured_limits_only_lower_the_suites() {
        assert_eq!(capped(GCM, None), GCM);
        assert_eq!(capped(GCM, Some(400)), 400);
        assert_eq!(capped(400, Some(GCM)), 400);
    }

    #[test]
    fn integrity_limit_counts_failures_above_it() {
        assert!(!integrity_exceeded(3, 3));
        assert!(integrity_exceeded(4, 3));
    }
}
