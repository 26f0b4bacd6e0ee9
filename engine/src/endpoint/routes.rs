//! Which connection a destination CID belongs to: the CIDs we issued and, until the
//! handshake is over, the client's original DCID (so retransmitted Initials find their
//! connection), with the last lookup cached.

// Keyed per map (DoS-resistant: peers choose CIDs) and far cheaper than SipHash per packet.
use foldhash::{HashMap, HashMapExt};

use super::ConnHandle;
use crate::wire::cid::ConnectionId;

#[derive(Default)]
pub(crate) struct Routes {
    by_cid: HashMap<ConnectionId, ConnHandle>,
    by_initial: HashMap<ConnectionId, ConnHandle>,
    /// The last CID routed and its connection: datagrams arrive in per-flow bursts (GRO,
    /// batched rings), so most skip the tables. Every change to a table clears it.
    last: Option<(ConnectionId, ConnHandle)>,
}

impl Routes {
    pub fn with_capacity(cids: usize, initials: usize) -> Self {
        Self {
            by_cid: HashMap::with_capacity(cids),
            by_initial: HashMap::with_capacity(initials),
            last: None,
        }
    }

    pub fn lookup(&mut self, cid: &ConnectionId) -> Option<ConnHandle> {
        if let Some((last, h)) = self.last {
            if last == *cid {
                return Some(h);
            }
        }
        let h = self
            .by_cid
            .get(cid)
            .or_else(|| self.by_initial.get(cid))
            .copied()?;
        self.last = Some((*cid, h));
        Some(h)
    }

    pub fn insert_cid(&mut self, cid: ConnectionId, h: ConnHandle) {
        self.last = None;
        self.by_cid.insert(cid, h);
    }

    /// Removes `cid`, if `h` is given only when it routes to `h`.
    pub fn remove_cid(&mut self, cid: &ConnectionId, h: Option<ConnHandle>) {
        if h.is_none_or(|h| self.by_cid.get(cid) == Some(&h)) {
            self.last = None;
            self.by_cid.remove(cid);
        }
    }

    pub fn insert_initial(&mut self, dcid: ConnectionId, h: ConnHandle) {
        self.last = None;
        self.by_initial.insert(dcid, h);
    }

    pub fn remove_initial(&mut self, dcid: &ConnectionId) {
        self.last = None;
        self.by_initial.remove(dcid);
    }

    /// Connection `h` is gone: its handle will be reused.
    pub fn forget(&mut self, h: ConnHandle) {
        if self.last.is_some_and(|(_, last)| last == h) {
            self.last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(b: u8) -> ConnectionId {
        ConnectionId::new(&[b; 8]).unwrap()
    }

    #[test]
    fn cached_routes_never_outlive_a_table_change() {
        let mut r = Routes::with_capacity(4, 4);
        r.insert_cid(cid(1), 7);
        r.insert_initial(cid(2), 7);
        assert_eq!(r.lookup(&cid(1)), Some(7));
        assert_eq!(r.lookup(&cid(1)), Some(7)); // cached
        r.remove_cid(&cid(1), Some(8)); // routes elsewhere: kept
        assert_eq!(r.lookup(&cid(1)), Some(7));
        r.remove_cid(&cid(1), Some(7));
        assert_eq!(r.lookup(&cid(1)), None);
        assert_eq!(r.lookup(&cid(2)), Some(7));
        r.remove_initial(&cid(2));
        assert_eq!(r.lookup(&cid(2)), None);
        r.insert_cid(cid(3), 9);
        assert_eq!(r.lookup(&cid(3)), Some(9));
        r.forget(9);
        r.remove_cid(&cid(3), None);
        assert_eq!(r.lookup(&cid(3)), None);
    }
}
