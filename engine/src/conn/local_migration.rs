//! Active migration by this endpoint (RFC 9000 §9.2): the application moved the connection
//! to another local address (a new socket, another interface) and tells the connection,
//! which then follows the rules for the migrating side.

use std::time::Instant;

use crate::conn::connection::{Connection, State};
use crate::Epoch;
use crate::Side;

/// Why `Connection::migrate` refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// Only clients migrate (a server's address is where clients reach it).
    #[error("only a client can migrate")]
    NotClient,
    /// §9: not before the handshake is confirmed.
    #[error("the handshake is not confirmed")]
    HandshakeNotConfirmed,
    /// The server sent disable_active_migration (§18.2).
    #[error("the server disabled active migration")]
    Disabled,
    /// §9.5: a new local address needs a CID of the peer's not yet used, and it gave us
    /// none to spare.
    #[error("the server left no spare connection ID")]
    NoSpareConnectionId,
    /// §9.5: not with a peer that uses zero-length CIDs (it most likely tells its
    /// connections apart by address, so it would lose this one).
    #[error("the server uses zero-length connection IDs")]
    ZeroLengthConnectionId,
}

impl Connection {
    /// Call after moving the connection to a new local address, before its next packet
    /// leaves from there. The connection sends under a CID of the server's not yet used
    /// (§9.5: a CID linking the two addresses would let observers follow the client; the
    /// old one is retired), restarts congestion control, RTT estimation and path MTU
    /// discovery for the new path (§9.4; what the old path still has in flight no longer
    /// counts against the window), validates the new path with a PATH_CHALLENGE (§9.2)
    /// and sends at once, so the server sees the move and validates our address (§9.3).
    pub fn migrate(&mut self, now: Instant) -> Result<(), MigrationError> {
        self.can_migrate()?;
        let cid = self
            .cids
            .claim_spare_remote()
            .ok_or(MigrationError::NoSpareConnectionId)?;
        self.cids.switch_active_remote(cid);
        // What belonged to the old path stays there: a CID claimed for a probe, PATH_RESPONSEs
        // owed to challenges that came by it (§8.2.2), a challenge of a path left before.
        if let Some((_, probed)) = self.probe_cid.take() {
            self.cids.retire_remote(probed);
        }
        self.path_responses.clear();
        self.old_path_challenge = None;
        self.restart_path_mtu(now);
        let first_pn = self.recovery.next_packet_number(Epoch::Data);
        self.path_first_pn = first_pn;
        self.recovery.reset_for_new_path(now, first_pn);
        self.recovery.restart_ecn(first_pn);
        // §9.2: validate the new path; a non-probing packet from there (this PING and what
        // follows) is what moves the server, which validates our address in turn (§9.3).
        self.start_path_validation(now);
        self.ping_pending = true;
        self.stats.migrations += 1;
        Ok(())
    }

    /// Whether `migrate` would go ahead now.
    pub fn can_migrate(&self) -> Result<(), MigrationError> {
        if self.side != Side::Client {
            return Err(MigrationError::NotClient);
        }
        if !self.handshake_confirmed || self.state != State::Established {
            return Err(MigrationError::HandshakeNotConfirmed);
        }
        if self
            .peer_params
            .as_ref()
            .is_some_and(|p| p.disable_active_migration)
        {
            return Err(MigrationError::Disabled);
        }
        if self.cids.active_remote().is_empty() {
            return Err(MigrationError::ZeroLengthConnectionId);
        }
        if !self.cids.has_spare_remote() {
            return Err(MigrationError::NoSpareConnectionId);
        }
        Ok(())
    }
}
