//! The addresses a server on every address (`--listen 0.0.0.0:PORT`) answers on, kept
//! current while it runs. Edge hosts add and remove service addresses (VIPs) without
//! restarting what serves them: the program must start steering a new one, the workers
//! must send replies from it, and an address the host gave up must go back to the kernel.
//!
//! Whoever holds the program calls [`AddrWatch::refresh`] now and then (the `quench serve`
//! loop: every [`REFRESH_EVERY`]). It re-reads the host's addresses and, when they changed,
//! hands the new list to the workers first and then to the program. Workers pick the list
//! up at each receive batch (one atomic load while nothing changes), and again when a reply
//! is to leave from an address their list lacks: the datagram it answers may have been
//! steered by the new map after the batch began. So a client of a new address is answered
//! from it from its first datagram on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{loader, local_iface, LocalIface, XdpError, XdpProgram};

/// How often `quench serve` looks for changed addresses.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What a worker needs to source replies: the served addresses (sorted) and the defaults
/// for a peer that did not say which one it wrote to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedSet {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub addrs: Vec<IpAddr>,
}

impl ServedSet {
    /// An interface's served addresses (sorted, each once) and reply defaults.
    pub fn of(iface: &LocalIface) -> ServedSet {
        let mut addrs = iface.addrs.clone();
        addrs.sort_unstable();
        addrs.dedup();
        ServedSet {
            v4: iface.v4,
            v6: iface.v6,
            addrs,
        }
    }
}

/// The latest [`ServedSet`], shared by the watcher and the workers.
#[derive(Debug)]
pub struct SharedServed {
    /// Bumped after each new set is stored; workers compare it with the one they hold.
    generation: AtomicU64,
    /// Held only to swap or clone the `Arc`, and only after `generation` moved: a worker
    /// never waits while the addresses stay as they are.
    current: Mutex<Arc<ServedSet>>,
}

impl SharedServed {
    pub fn new(set: ServedSet) -> Arc<SharedServed> {
        Arc::new(SharedServed {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(set)),
        })
    }

    fn publish(&self, set: ServedSet) {
        // Nothing panics while holding the lock; a poisoned one still holds a whole `Arc`.
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current set if it is newer than `seen` (which is then advanced), else `None`.
    pub fn newer_than(&self, seen: &mut u64) -> Option<Arc<ServedSet>> {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        let cur = Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner));
        *seen = generation;
        Some(cur)
    }
}

/// A change [`AddrWatch::refresh`] applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServedChange {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// The new reply defaults (IPv4, IPv6), if either changed: the host's first address
    /// of a family can change with no address coming or going (a reorder).
    pub defaults: Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)>,
}

/// Keeps a server's served addresses equal to the host's.
#[derive(Debug)]
pub struct AddrWatch {
    iface: String,
    port: u16,
    shared: Arc<SharedServed>,
    /// What the program steers now.
    steered: ServedSet,
    /// Changes applied since start.
    changes: u64,
}

impl AddrWatch {
    pub(super) fn new(iface: &str, port: u16, set: ServedSet) -> AddrWatch {
        AddrWatch {
            iface: iface.to_string(),
            port,
            shared: SharedServed::new(set.clone()),
            steered: set,
            changes: 0,
        }
    }

    /// The handle a worker's datapath follows.
    pub fn shared(&self) -> Arc<SharedServed> {
        Arc::clone(&self.shared)
    }

    /// The addresses served now, sorted.
    pub fn served(&self) -> &[IpAddr] {
        &self.steered.addrs
    }

    /// Changes of the host's addresses applied since start.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Re-reads the host's addresses and applies a change, if any: to the workers, then to
    /// `program`. On an error nothing changes.
    pub fn refresh(&mut self, program: &XdpProgram) -> Result<Option<ServedChange>, XdpError> {
        let set = ServedSet::of(&local_iface(&self.iface, self.port)?);
        self.apply(set, |addrs| program.set_local_addrs(addrs))
    }

    /// `refresh` with the host's addresses and the program's map given (for tests).
    fn apply(
        &mut self,
        set: ServedSet,
        steer: impl FnOnce(&[IpAddr]) -> Result<(), XdpError>,
    ) -> Result<Option<ServedChange>, XdpError> {
        if set == self.steered {
            return Ok(None);
        }
        // Checked before the workers see the list: the program must be able to take it.
        if set.addrs.len() > loader::MAX_LOCAL_ADDRS as usize {
            return Err(XdpError::Config(format!(
                "{} local addresses; at most {}",
                set.addrs.len(),
                loader::MAX_LOCAL_ADDRS
            )));
        }
        let change = ServedChange {
            added: difference(&set.addrs, &self.steered.addrs),
            removed: difference(&self.steered.addrs, &set.addrs),
            defaults: ((set.v4, set.v6) != (self.steered.v4, self.steered.v6))
                .then_some((set.v4, set.v6)),
        };
        // Workers first: a datagram the program steers to a new address finds its worker
        // already able to answer from it.
        self.shared.publish(set.clone());
        if let Err(e) = steer(&set.addrs) {
            // The map may hold part of the new list: let the workers answer from either
            // list, and try again at the next refresh (`steered` is still the old one).
            let mut either = set;
            either.addrs.extend_from_slice(&self.steered.addrs);
            either.addrs.sort_unstable();
            either.addrs.dedup();
            self.shared.publish(either);
            return Err(e);
        }
        self.steered = set;
        self.changes += 1;
        Ok(Some(change))
    }
}

/// The members of sorted `a` not in sorted `b`.
fn difference(a: &[IpAddr], b: &[IpAddr]) -> Vec<IpAddr> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> ServedSet {
        let mut addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        addrs.sort_unstable();
        ServedSet {
            v4: Some("10.0.0.1".parse().unwrap()),
            v6: None,
            addrs,
        }
    }

    #[test]
    fn workers_see_each_change_once() {
        let shared = SharedServed::new(set(&["10.0.0.1"]));
        let mut seen = 0;
        assert_eq!(shared.newer_than(&mut seen), None, "nothing new yet");
        shared.publish(set(&["10.0.0.1", "10.0.0.9"]));
        assert_eq!(
            shared.newer_than(&mut seen).as_deref(),
            Some(&set(&["10.0.0.1", "10.0.0.9"]))
        );
        assert_eq!(shared.newer_than(&mut seen), None, "taken once");
        shared.publish(set(&["10.0.0.9"]));
        assert_eq!(
            shared.newer_than(&mut seen).as_deref(),
            Some(&set(&["10.0.0.9"]))
        );
    }

    #[test]
    fn a_change_reaches_the_workers_before_the_program() {
        let mut watch = AddrWatch::new("eth0", 443, set(&["10.0.0.1"]));
        let shared = watch.shared();
        let mut seen = 0;
        let mut steered = Vec::new();
        let change = watch
            .apply(set(&["10.0.0.1", "10.0.0.7"]), |addrs| {
                // The workers can already answer from what the program is about to steer.
                let now = shared.newer_than(&mut seen).expect("published first");
                assert_eq!(now.addrs, addrs);
                steered = addrs.to_vec();
                Ok(())
            })
            .unwrap();
        assert_eq!(
            change,
            Some(ServedChange {
                added: vec!["10.0.0.7".parse().unwrap()],
                ..ServedChange::default()
            })
        );
        assert_eq!(steered.len(), 2);
        assert_eq!(watch.served(), &steered[..]);

        let same = watch.apply(set(&["10.0.0.1", "10.0.0.7"]), |_| {
            panic!("an unchanged list is not written again")
        });
        assert_eq!(same.unwrap(), None);

        let change = watch.apply(set(&["10.0.0.7"]), |_| Ok(())).unwrap();
        assert_eq!(
            change,
            Some(ServedChange {
                removed: vec!["10.0.0.1".parse().unwrap()],
                ..ServedChange::default()
            })
        );

        // Only the reply default moved: applied, and said so.
        let mut moved = set(&["10.0.0.7"]);
        moved.v4 = Some("10.0.0.7".parse().unwrap());
        let change = watch.apply(moved.clone(), |_| Ok(())).unwrap();
        assert_eq!(
            change,
            Some(ServedChange {
                defaults: Some((moved.v4, None)),
                ..ServedChange::default()
            })
        );
    }

    #[test]
    fn a_list_the_program_refuses_is_tried_again() {
        let before = set(&["10.0.0.1"]);
        let mut watch = AddrWatch::new("eth0", 443, before.clone());
        let shared = watch.shared();
        let e = watch.apply(set(&["10.0.0.1", "10.0.0.2"]), |_| {
            Err(XdpError::Config("map full".into()))
        });
        assert!(e.is_err());
        assert_eq!(watch.served(), &before.addrs[..]);
        let mut seen = 0;
        assert_eq!(
            shared.newer_than(&mut seen).map(|s| s.addrs.clone()),
            Some(set(&["10.0.0.1", "10.0.0.2"]).addrs),
            "the map may hold either list: the workers answer from both"
        );
        let again = watch.apply(set(&["10.0.0.1", "10.0.0.2"]), |_| Ok(()));
        assert!(again.unwrap().is_some(), "tried again at the next refresh");

        let many: Vec<String> = (0..=loader::MAX_LOCAL_ADDRS)
            .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = watch.apply(set(&many), |_| panic!("refused before the program"));
        assert!(e.unwrap_err().to_string().contains("at most"));
    }
}
