//! A UDP relay on loopback that impairs the path between a client and a server: loss,
//! reordering, duplication and corruption, each with its own probability, in both
//! directions. It stands in for `tc netem` (this machine kind has no `sch_netem`) so that
//! real QUIC stacks can be run against quench over a bad path.
//!
//! The client sends to [`LossyRelay::addr`]; the relay forwards from its own socket to the
//! server and sends the server's datagrams back to the client's latest address (one client
//! at a time). Fates are drawn from a seeded generator per direction, so a failing run
//! names its seed and the same fates recur for the same datagram sequence.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What happens to datagrams on the path, per direction. Probabilities are per datagram.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Dropped.
    pub loss: f64,
    /// Held back for up to `reorder_delay` (drawn uniformly), so later ones overtake it.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Sent twice, the copy held back as a reordered one is.
    pub duplicate: f64,
    /// One bit flipped in the last 16 bytes: the final packet's AEAD tag in any QUIC
    /// datagram, so the receiver must notice and discard that packet (RFC 9001 §5.3).
    pub corrupt: f64,
    pub seed: u64,
}

impl Impairment {
    /// A bad path: 5% loss, 5% reordered by up to 3 ms, 1% duplicated, 1% corrupted.
    pub fn bad_path(seed: u64) -> Impairment {
        Impairment {
            loss: 0.05,
            reorder: 0.05,
            reorder_delay: Duration::from_millis(3),
            duplicate: 0.01,
            corrupt: 0.01,
            seed,
        }
    }
}

impl Impairment {
    /// A clean path: every datagram forwarded at once, in order.
    pub fn none(seed: u64) -> Impairment {
        Impairment {
            loss: 0.0,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            ..Impairment::bad_path(seed)
        }
    }

    /// A path that reorders 10% of the datagrams by up to 3 ms and loses none.
    pub fn reordering_only(seed: u64) -> Impairment {
        Impairment {
            loss: 0.0,
            reorder: 0.10,
            duplicate: 0.0,
            corrupt: 0.0,
            ..Impairment::bad_path(seed)
        }
    }
}

/// What one direction did, for tests to prove each impairment happened.
#[derive(Debug, Default)]
pub struct Counts {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub delayed: AtomicU64,
    pub duplicated: AtomicU64,
    pub corrupted: AtomicU64,
    /// The first [`HEAD_BYTES`] of the first [`HEADS_KEPT`] datagrams received, for tests
    /// that read headers (connection IDs) off the path.
    pub heads: Mutex<Vec<Vec<u8>>>,
}

/// How much of each datagram, and how many, [`Counts::heads`] keeps.
pub const HEAD_BYTES: usize = 64;
pub const HEADS_KEPT: usize = 8192;

/// A snapshot of [`Counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub delayed: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

impl Counts {
    pub fn tally(&self) -> Tally {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Tally {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            dropped: get(&self.dropped),
            delayed: get(&self.delayed),
            duplicated: get(&self.duplicated),
            corrupted: get(&self.corrupted),
        }
    }
}

impl Tally {
    /// Panics unless every impairment happened at least once in this direction.
    pub fn assert_all_impairments(&self, direction: &str) {
        assert!(
            self.dropped > 0 && self.delayed > 0 && self.duplicated > 0 && self.corrupted > 0,
            "{direction}: not every impairment happened: {self:?}"
        );
    }
}

/// The relay; stops (and joins its threads) when dropped.
pub struct LossyRelay {
    /// Where the client sends.
    pub addr: SocketAddr,
    /// Client to server, and back.
    pub up: Arc<Counts>,
    pub down: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How long a pump blocks in `recv` with nothing held back, so it notices `stop`.
const IDLE_WAIT: Duration = Duration::from_millis(5);

impl LossyRelay {
    /// A relay in front of `server`, impairing both directions with `impairment` (the
    /// direction back uses the seed + 1).
    pub fn start(server: SocketAddr, impairment: Impairment) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the relay's client side");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind the relay's server side");
        back.connect(server).expect("connect to the server");
        let addr = front.local_addr().expect("relay address");
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (up, down) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
        let clone = |s: &UdpSocket| s.try_clone().expect("clone a relay socket");

        let pump_up = Pump {
            from: clone(&front),
            to: clone(&back),
            dest: Dest::Connected,
            client: client.clone(),
            impairment,
            counts: up.clone(),
            stop: stop.clone(),
        };
        let pump_down = Pump {
            from: back,
            to: front,
            dest: Dest::Client,
            client,
            impairment: Impairment {
                seed: impairment.seed.wrapping_add(1),
                ..impairment
            },
            counts: down.clone(),
            stop: stop.clone(),
        };
        let threads = vec![
            thread::spawn(move || pump_up.run()),
            thread::spawn(move || pump_down.run()),
        ];
        LossyRelay {
            addr,
            up,
            down,
            stop,
            threads,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Dest {
    /// The server, the socket's connected peer.
    Connected,
    /// The client's latest address, learned from its datagrams.
    Client,
}

struct Pump {
    from: UdpSocket,
    to: UdpSocket,
    dest: Dest,
    client: Arc<Mutex<Option<SocketAddr>>>,
    impairment: Impairment,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl Pump {
    fn run(self) {
        let mut rng = StdRng::seed_from_u64(self.impairment.seed);
        // Held-back datagrams by release time; the sequence number keeps ties in order.
        let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while held.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                let Reverse((_, _, datagram)) = held.pop().expect("peeked");
                self.send(&datagram);
            }
            let wait = held
                .peek()
                .map_or(IDLE_WAIT, |Reverse((at, _, _))| {
                    at.saturating_duration_since(now)
                })
                .max(Duration::from_micros(100));
            self.from
                .set_read_timeout(Some(wait))
                .expect("set the relay's read timeout");
            let (len, src) = match self.from.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                // ICMP port unreachable from a peer that has gone: nothing to relay.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("relay receive: {e}"),
            };
            if matches!(self.dest, Dest::Connected) {
                *self.client.lock().expect("client address") = Some(src);
            }
            self.counts.received.fetch_add(1, Ordering::Relaxed);
            {
                let mut heads = self.counts.heads.lock().expect("heads");
                if heads.len() < HEADS_KEPT {
                    heads.push(buf[..len.min(HEAD_BYTES)].to_vec());
                }
            }
            let imp = &self.impairment;
            if rng.gen_bool(imp.loss) {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut datagram = buf[..len].to_vec();
            if len >= 16 && rng.gen_bool(imp.corrupt) {
                let at = len - 1 - rng.gen_range(0..16);
                datagram[at] ^= 1 << rng.gen_range(0..8);
                self.counts.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            let mut hold = |datagram: Vec<u8>, rng: &mut StdRng| {
                let delay = imp.reorder_delay.mul_f64(rng.gen_range(0.1..1.0));
                seq += 1;
                held.push(Reverse((Instant::now() + delay, seq, datagram)));
                self.counts.delayed.fetch_add(1, Ordering::Relaxed);
            };
            if rng.gen_bool(imp.duplicate) {
                hold(datagram.clone(), &mut rng);
                self.counts.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            if rng.gen_bool(imp.reorder) {
                hold(datagram, &mut rng);
            } else {
                self.send(&datagram);
            }
        }
    }

    fn send(&self, datagram: &[u8]) {
        let sent = match self.dest {
            Dest::Connected => self.to.send(datagram),
            Dest::Client => match *self.client.lock().expect("client address") {
                Some(client) => self.to.send_to(datagram, client),
                None => return,
            },
        };
        // A full socket buffer or a peer gone is more loss, which the path may have.
        if sent.is_ok() {
            self.counts.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}
