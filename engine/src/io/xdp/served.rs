//! The addresses a server on every address (`--listen 0.0.0.0:PORT`) answers on, kept
//! current while it runs. Edge hosts add and remove service addresses (VIPs) without
//! restarting what serves them: the program must start steering a new one, the workers
//! must send replies from it, and an address the host gave up must go back to the kernel.
//!
//! Whoever holds the program calls [`AddrWatch::refresh`] now and then (the `quench serve`
//! loop: every [`REFRESH_EVERY`]). It re-reads the host's addresses and, when they changed,
//! hands the new list to the workers first and then to the program, so no datagram to a new
//! address reaches a worker that would answer it from another one. Workers pick the list
//! up at their next receive batch: one atomic load per batch while nothing changes, and a
//! `try_lock` (never a wait) when something did.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{loader, local_iface, XdpError, XdpProgram};

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

/// The latest [`ServedSet`], shared by the watcher and the workers.
#[derive(Debug)]
pub struct SharedServed {
    /// Bumped after each new set is stored; workers compare it with the one they hold.
    generation: AtomicU64,
    current: Mutex<ServedSet>,
}

impl SharedServed {
    pub fn new(set: ServedSet) -> Arc<SharedServed> {
        Arc::new(SharedServed {
            generation: AtomicU64::new(0),
            current: Mutex::new(set),
        })
    }

    fn publish(&self, set: ServedSet) {
        if let Ok(mut cur) = self.current.lock() {
            *cur = set;
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current set if it is newer than `seen` (which is then advanced), else `None`.
    /// Never blocks: while the watcher holds the lock the caller keeps what it has and
    /// looks again next time.
    pub fn newer_than(&self, seen: &mut u64) -> Option<ServedSet> {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        let cur = self.current.try_lock().ok()?;
        *seen = generation;
        Some(cur.clone())
    }
}

/// A change [`AddrWatch::refresh`] applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServedChange {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

/// Keeps a server's served addresses equal to the host's.
#[derive(Debug)]
pub struct AddrWatch {
    iface: String,
    port: u16,
    shared: Arc<SharedServed>,
    /// What the program steers now.
    steered: ServedSet,
}

impl AddrWatch {
    pub(super) fn new(iface: &str, port: u16, set: ServedSet) -> AddrWatch {
        AddrWatch {
            iface: iface.to_string(),
            port,
            shared: SharedServed::new(set.clone()),
            steered: set,
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

    /// Re-reads the host's addresses and applies a change, if any: to the workers, then to
    /// `program`. On an error nothing changes.
    pub fn refresh(&mut self, program: &XdpProgram) -> Result<Option<ServedChange>, XdpError> {
        let iface = local_iface(&self.iface, self.port)?;
        let mut set = ServedSet {
            v4: iface.v4,
            v6: iface.v6,
            addrs: iface.addrs,
        };
        set.addrs.sort_unstable();
        set.addrs.dedup();
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
        };
        // Workers first: a datagram the program steers to a new address finds its worker
        // already able to answer from it.
        self.shared.publish(set.clone());
        if let Err(e) = steer(&set.addrs) {
            // The program keeps its old list; so do the workers, for the source addresses
            // they pick to agree with what is steered to them.
            self.shared.publish(self.steered.clone());
            return Err(e);
        }
        self.steered = set;
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
    fn workers_see_each_change_once_and_never_wait() {
        let shared = SharedServed::new(set(&["10.0.0.1"]));
        let mut seen = 0;
        assert_eq!(shared.newer_than(&mut seen), None, "nothing new yet");
        shared.publish(set(&["10.0.0.1", "10.0.0.9"]));
        assert_eq!(
            shared.newer_than(&mut seen),
            Some(set(&["10.0.0.1", "10.0.0.9"]))
        );
        assert_eq!(shared.newer_than(&mut seen), None, "taken once");

        shared.publish(set(&["10.0.0.9"]));
        let held = shared.current.lock().unwrap();
        assert_eq!(shared.newer_than(&mut seen), None, "locked: no wait");
        drop(held);
        assert_eq!(
            shared.newer_than(&mut seen),
            Some(set(&["10.0.0.9"])),
            "picked up the next time"
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
                removed: vec![],
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
                added: vec![],
                removed: vec!["10.0.0.1".parse().unwrap()],
            })
        );
    }

    #[test]
    fn a_list_the_program_refuses_changes_nothing() {
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
            shared.newer_than(&mut seen),
            Some(before),
            "the workers are back on the old list"
        );

        let many: Vec<String> = (0..=loader::MAX_LOCAL_ADDRS)
            .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = watch.apply(set(&many), |_| panic!("refused before the program"));
        assert!(e.unwrap_err().to_string().contains("at most"));
    }
}
