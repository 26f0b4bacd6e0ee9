//! An in-process datapath pair for tests and microbenchmarks: what one end transmits, the
//! other receives, through lock-free queues of preallocated buffers, optionally impaired
//! (loss, duplication, reordering, corruption, a bounded queue), deterministically for a
//! seed.
//!
//! Each direction is a `Link`: a queue of full buffers and a free list. Buffers move
//! between them by value (a `Box` is a pointer), so steady-state traffic allocates nothing.
//! Impairments are applied by the sender, at `flush`, with the sender's own RNG.
//!
//! Memory: each direction preallocates `capacity + batch + MAX_HELD + max_segments + 2`
//! buffers of `max_segments * max_datagram_size` bytes.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use super::{Capabilities, Datapath, RxMeta, TxMeta};

/// Most datagrams held back for reordering at once, per direction.
const MAX_HELD: usize = 8;
/// A held datagram is released after 1..=MAX_REORDER_DEPTH later ones.
const MAX_REORDER_DEPTH: u32 = 3;

/// What the link does to datagrams, per direction. Probabilities are per datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairments {
    pub loss: f64,
    pub duplicate: f64,
    /// Probability a datagram is held back and delivered after the next 1–3 datagrams sent
    /// in the same direction (it stays held until those are sent).
    pub reorder: f64,
    /// Probability one random byte is flipped.
    pub corrupt: f64,
    pub seed: u64,
    /// Queue depth in buffers per direction; datagrams arriving at a full queue are dropped.
    pub capacity: usize,
}

impl Impairments {
    /// A perfect link with a 1024-buffer queue.
    pub fn none() -> Self {
        Impairments {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            seed: 0,
            capacity: 1024,
        }
    }

    /// Probabilities clamped into [0, 1] (NaN counts as 0), capacity at least 1.
    fn sanitized(self) -> Self {
        let p = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        Impairments {
            loss: p(self.loss),
            duplicate: p(self.duplicate),
            reorder: p(self.reorder),
            corrupt: p(self.corrupt),
            seed: self.seed,
            capacity: self.capacity.max(1),
        }
    }

    fn any(&self) -> bool {
        self.loss > 0.0 || self.duplicate > 0.0 || self.reorder > 0.0 || self.corrupt > 0.0
    }
}

impl Default for Impairments {
    fn default() -> Self {
        Self::none()
    }
}

/// Shape of both ends of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOptions {
    /// GSO emulation: datagrams one transmit buffer may hold (split on receive).
    pub max_segments: usize,
    pub max_datagram_size: usize,
    /// Most buffers queued by `push_tx` before a `flush`, and received per `recv_batch`.
    pub batch: usize,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions {
            max_segments: 1,
            max_datagram_size: 1472,
            batch: 32,
        }
    }
}

/// Counters of one end: what it transmitted (and what happened to it on the way), and
/// what it received. All in datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Datagrams flushed onto the link (before any impairment).
    pub sent: u64,
    /// Datagrams handed to the receive closure.
    pub delivered: u64,
    pub dropped_loss: u64,
    /// Dropped because the receiving queue (or the buffer pool) was full.
    pub dropped_capacity: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    /// Transmit buffers refused for bad metadata (zero or oversized length, zero segment).
    pub invalid: u64,
    /// Datagrams larger than the path MTU, dropped silently as a router would with DF set.
    pub dropped_mtu: u64,
}

/// What a path does to the ECN field (RFC 3168) of the datagrams crossing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcnPath {
    /// Carried as sent.
    Keep,
    /// Cleared to Not-ECT, as some middleboxes do.
    Clear,
    /// Every `n`th ECT-marked buffer arrives CE-marked, as from a congested AQM queue.
    CeEvery(u64),
}

/// One buffer in flight: `len` bytes, cut into datagrams of `segment` bytes.
struct Packet {
    buf: Box<[u8]>,
    len: usize,
    segment: usize,
    src: SocketAddr,
    dst: SocketAddr,
    ecn: u8,
}

impl Packet {
    fn datagrams(&self) -> usize {
        self.len.div_ceil(self.segment)
    }
}

/// One direction of the pair.
struct Link {
    full: ArrayQueue<Packet>,
    free: ArrayQueue<Box<[u8]>>,
    /// Set while the receiver sleeps in `wait`, so senders only touch the lock then.
    waiting: AtomicBool,
    lock: Mutex<()>,
    ready: Condvar,
}

impl Link {
    fn new(capacity: usize, buffers: usize, buf_size: usize) -> Self {
        let free = ArrayQueue::new(buffers);
        for _ in 0..buffers {
            // Cannot fail: the queue was sized for exactly these buffers.
            let _ = free.push(vec![0u8; buf_size].into_boxed_slice());
        }
        Link {
            full: ArrayQueue::new(capacity),
            free,
            waiting: AtomicBool::new(false),
            lock: Mutex::new(()),
            ready: Condvar::new(),
        }
    }

    fn recycle(&self, buf: Box<[u8]>) {
        // The free list holds every buffer of the link, so it always has room; if that
        // invariant broke, dropping the buffer is the safe outcome.
        let _ = self.free.push(buf);
    }

    /// Wakes a receiver sleeping in `wait` after packets were pushed.
    fn wake(&self) {
        // Pairs with the fence in `wait`: either we see `waiting`, or the receiver sees
        // our packets before it sleeps.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.ready.notify_all();
        }
    }

    fn wait(&self, timeout: Option<Duration>) {
        if !self.full.is_empty() {
            return;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if timeout.is_some() && deadline.is_none() {
            // A timeout too large to represent: wait without one.
            debug!(
                ?timeout,
                "mem wait timeout overflows; waiting without timeout"
            );
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while self.full.is_empty() {
            guard = match deadline {
                None => self.ready.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    self.ready
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        self.waiting.store(false, Ordering::SeqCst);
    }
}

struct Held {
    packet: Packet,
    /// Datagrams still to be sent before this one is released.
    after: u32,
}

/// One end of an in-memory pair. `Send`: each end may live on its own thread.
pub struct MemDatapath {
    local: SocketAddr,
    caps: Capabilities,
    batch: usize,
    out: Arc<Link>,
    inbound: Arc<Link>,
    pending: VecDeque<Packet>,
    held: Vec<Held>,
    /// Scratch for splitting GSO buffers when impairments apply per datagram.
    split: Vec<Packet>,
    impair: Impairments,
    /// Largest UDP payload the path carries from this end, if limited.
    path_mtu: Option<usize>,
    ecn_path: EcnPath,
    /// ECT-marked buffers sent, for `EcnPath::CeEvery`.
    ect_sent: u64,
    rng: StdRng,
    stats: MemStats,
}

/// A connected pair with default [`MemOptions`]: `.0` is at `a`, `.1` at `b`.
pub fn pair(a: SocketAddr, b: SocketAddr, impair: Impairments) -> (MemDatapath, MemDatapath) {
    pair_with(a, b, impair, MemOptions::default())
}

/// A connected pair; `impair` applies to each direction, with independent RNG streams
/// derived from its seed.
pub fn pair_with(
    a: SocketAddr,
    b: SocketAddr,
    impair: Impairments,
    opts: MemOptions,
) -> (MemDatapath, MemDatapath) {
    let impair = impair.sanitized();
    let max_segments = opts.max_segments.max(1);
    let mds = opts.max_datagram_size.max(1);
    let batch = opts.batch.max(1);
    let buf_size = max_segments * mds;
    let buffers = impair.capacity + batch + MAX_HELD + max_segments + 2;
    let link = || Arc::new(Link::new(impair.capacity, buffers, buf_size));
    let (ab, ba) = (link(), link());
    let caps = Capabilities {
        max_segments,
        max_datagram_size: mds,
        max_receive_payload: mds,
    };
    let end = |local, out: &Arc<Link>, inbound: &Arc<Link>, seed| MemDatapath {
        local,
        caps,
        batch,
        out: Arc::clone(out),
        inbound: Arc::clone(inbound),
        pending: VecDeque::with_capacity(batch),
        held: Vec::with_capacity(MAX_HELD),
        split: Vec::with_capacity(max_segments),
        impair,
        path_mtu: None,
        ecn_path: EcnPath::Keep,
        ect_sent: 0,
        rng: StdRng::seed_from_u64(seed),
        stats: MemStats::default(),
    };
    // Distinct, fixed streams per direction.
    let ea = end(a, &ab, &ba, impair.seed);
    let eb = end(b, &ba, &ab, impair.seed ^ 0x9e37_79b9_7f4a_7c15);
    (ea, eb)
}

impl MemDatapath {
    pub fn stats(&self) -> MemStats {
        self.stats
    }

    /// Changes the source address of datagrams sent from now on (simulates a NAT rebinding
    /// or migration as the peer sees it).
    pub fn set_local_addr(&mut self, addr: SocketAddr) {
        self.local = addr;
    }

    /// Limits the UDP payload the path carries from this end (a smaller link or a tunnel
    /// further on): larger datagrams vanish without an error, as with DF set and ICMP
    /// filtered. `None` lifts the limit. May change at any time, like a route.
    pub fn set_path_mtu(&mut self, max_payload: Option<usize>) {
        self.path_mtu = max_payload;
    }

    /// What the path does to the ECN field of what this end sends from now on.
    pub fn set_ecn_path(&mut self, path: EcnPath) {
        self.ecn_path = path;
    }

    /// Datagrams currently held back for reordering.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Puts `p` on the link, or drops it if the receiver's queue is full.
    fn put(&mut self, p: Packet) {
        if let Err(p) = self.out.full.push(p) {
            self.stats.dropped_capacity += p.datagrams() as u64;
            self.out.recycle(p.buf);
        }
    }

    /// Puts a freshly sent datagram on the link and releases held ones that were waiting
    /// for it.
    fn put_and_tick(&mut self, p: Packet) {
        self.put(p);
        let mut i = 0;
        while i < self.held.len() {
            self.held[i].after -= 1;
            if self.held[i].after == 0 {
                let h = self.held.remove(i);
                self.put(h.packet);
            } else {
                i += 1;
            }
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen::<f64>() < p
    }

    /// Applies the impairments to one datagram and sends what survives.
    fn impair_one(&mut self, mut p: Packet) {
        self.stats.sent += 1;
        if self.path_mtu.is_some_and(|m| p.len > m) {
            self.stats.dropped_mtu += 1;
            self.out.recycle(p.buf);
            return;
        }
        if self.chance(self.impair.loss) {
            self.stats.dropped_loss += 1;
            self.out.recycle(p.buf);
            return;
        }
        if self.chance(self.impair.corrupt) {
            let at = self.rng.gen_range(0..p.len);
            p.buf[at] ^= self.rng.gen_range(1..=u8::MAX);
            self.stats.corrupted += 1;
        }
        let dup = if self.chance(self.impair.duplicate) {
            match self.out.free.pop() {
                Some(mut buf) => {
                    buf[..p.len].copy_from_slice(&p.buf[..p.len]);
                    self.stats.duplicated += 1;
                    Some(Packet { buf, ..p })
                }
                None => None,
            }
        } else {
            None
        };
        if self.held.len() < MAX_HELD && self.chance(self.impair.reorder) {
            self.stats.reordered += 1;
            let after = self.rng.gen_range(1..=MAX_REORDER_DEPTH);
            self.held.push(Held { packet: p, after });
        } else {
            self.put_and_tick(p);
        }
        if let Some(d) = dup {
            self.put_and_tick(d);
        }
    }

    /// Splits a GSO buffer into one packet per datagram (so impairments hit datagrams, as
    /// on a real path) and impairs each in order.
    fn impair_gso(&mut self, mut p: Packet) {
        let mut split = std::mem::take(&mut self.split);
        let mut at = p.segment;
        while at < p.len {
            let len = (p.len - at).min(p.segment);
            match self.out.free.pop() {
                Some(mut buf) => {
                    buf[..len].copy_from_slice(&p.buf[at..at + len]);
                    split.push(Packet {
                        buf,
                        len,
                        segment: len,
                        src: p.src,
                        dst: p.dst,
                        ecn: p.ecn,
                    });
                }
                None => {
                    self.stats.sent += 1;
                    self.stats.dropped_capacity += 1;
                }
            }
            at += len;
        }
        p.len = p.segment;
        self.impair_one(p);
        for q in split.drain(..) {
            self.impair_one(q);
        }
        self.split = split;
    }
}

impl Datapath for MemDatapath {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn recv_batch(&mut self, on_datagram: &mut dyn FnMut(RxMeta, &mut [u8])) -> io::Result<usize> {
        let mut delivered = 0;
        for _ in 0..self.batch {
            let Some(mut p) = self.inbound.full.pop() else {
                break;
            };
            let meta = RxMeta {
                src: p.src,
                dst: p.dst,
                ecn: p.ecn,
            };
            for datagram in p.buf[..p.len].chunks_mut(p.segment) {
                on_datagram(meta, datagram);
                delivered += 1;
            }
            self.inbound.recycle(p.buf);
        }
        self.stats.delivered += delivered as u64;
        Ok(delivered)
    }

    fn push_tx(&mut self, write: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>) -> bool {
        if self.pending.len() >= self.batch {
            return false;
        }
        let Some(mut buf) = self.out.free.pop() else {
            return false;
        };
        let Some(meta) = write(&mut buf) else {
            self.out.recycle(buf);
            return true;
        };
        if meta.len == 0 || meta.len > buf.len() || meta.segment_size == Some(0) {
            debug!(
                ?meta,
                "mem datapath: dropping transmit buffer with bad metadata"
            );
            self.stats.invalid += 1;
            self.out.recycle(buf);
            return true;
        }
        let segment = meta.segment_size.unwrap_or(meta.len).min(meta.len);
        let mut ecn = meta.ecn & 0b11;
        if ecn != 0 {
            ecn = match self.ecn_path {
                EcnPath::Keep => ecn,
                EcnPath::Clear => 0,
                EcnPath::CeEvery(n) => {
                    self.ect_sent += 1;
                    if n > 0 && self.ect_sent.is_multiple_of(n) {
                        0b11
                    } else {
                        ecn
                    }
                }
            };
        }
        self.pending.push_back(Packet {
            buf,
            len: meta.len,
            segment,
            src: self.local,
            dst: meta.dst,
            ecn,
        });
        true
    }

    fn flush(&mut self) -> io::Result<usize> {
        let mut sent = 0;
        // A path MTU is applied per datagram, like the impairments.
        let impaired = self.impair.any() || self.path_mtu.is_some();
        while let Some(p) = self.pending.pop_front() {
            sent += p.datagrams();
            if !impaired {
                self.stats.sent += p.datagrams() as u64;
                self.put(p);
            } else if p.len > p.segment {
                self.impair_gso(p);
            } else {
                self.impair_one(p);
            }
        }
        if sent > 0 {
            self.out.wake();
        }
        Ok(sent)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.inbound.wait(timeout);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "10.0.0.1:4433".parse().unwrap(),
            "10.0.0.2:5555".parse().unwrap(),
        )
    }

    fn payload(i: u32, len: usize) -> Vec<u8> {
        let mut out: Vec<u8> = i.to_be_bytes().iter().copied().cycle().take(len).collect();
        for (k, b) in out.iter_mut().enumerate().skip(4) {
            *b = b.wrapping_add(k as u8);
        }
        out
    }

    fn send(
        dp: &mut MemDatapath,
        dst: SocketAddr,
        data: &[u8],
        segment: Option<usize>,
        ecn: u8,
    ) -> bool {
        dp.push_tx(&mut |buf: &mut [u8]| {
            buf[..data.len()].copy_from_slice(data);
            Some(TxMeta {
                dst,
                src: None,
                len: data.len(),
                segment_size: segment,
                ecn,
            })
        })
    }

    fn drain(dp: &mut MemDatapath) -> Vec<(RxMeta, Vec<u8>)> {
        let mut got = Vec::new();
        while dp
            .recv_batch(&mut |m, d| got.push((m, d.to_vec())))
            .unwrap()
            > 0
        {}
        got
    }

    /// Sends `n` datagrams of varied sizes in batches, draining the receiver after each
    /// flush; returns everything received in order.
    fn run(a: &mut MemDatapath, b: &mut MemDatapath, n: u32) -> Vec<Vec<u8>> {
        let dst = b.local_addr();
        let mut got = Vec::new();
        for i in 0..n {
            let data = payload(i, 4 + (i as usize * 131) % 1400);
            if !send(a, dst, &data, None, 0) {
                a.flush().unwrap();
                got.extend(drain(b).into_iter().map(|(_, d)| d));
                assert!(send(a, dst, &data, None, 0));
            }
        }
        a.flush().unwrap();
        got.extend(drain(b).into_iter().map(|(_, d)| d));
        got
    }

    #[test]
    fn a_path_mtu_drops_larger_datagrams_silently_gso_segments_included() {
        let (a_addr, b_addr) = addrs();
        let opts = MemOptions {
            max_segments: 4,
            ..MemOptions::default()
        };
        let (mut a, mut b) = pair_with(a_addr, b_addr, Impairments::none(), opts);
        a.set_path_mtu(Some(1300));
        let got = run(&mut a, &mut b, 500);
        let expected: Vec<Vec<u8>> = (0..500)
            .map(|i| payload(i, 4 + (i as usize * 131) % 1400))
            .filter(|d| d.len() <= 1300)
            .collect();
        assert_eq!(got, expected, "exactly the datagrams that fit, in order");
        assert_eq!(a.stats().dropped_mtu, 500 - expected.len() as u64);
        // Three 1400-byte segments and a 1000-byte tail: only the tail fits.
        assert!(send(&mut a, b_addr, &[7u8; 5200], Some(1400), 0));
        a.flush().unwrap();
        let got = drain(&mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, vec![7u8; 1000]);
        // Lifting the limit restores delivery.
        a.set_path_mtu(None);
        assert!(send(&mut a, b_addr, &[9u8; 1400], None, 0));
        a.flush().unwrap();
        assert_eq!(drain(&mut b).len(), 1);
    }

    #[test]
    fn exact_delivery_without_impairments() {
        let (a_addr, b_addr) = addrs();
        let (mut a, mut b) = pair(a_addr, b_addr, Impairments::none());
        let got = run(&mut a, &mut b, 10_000);
        assert_eq!(got.len(), 10_000);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(*d, payload(i as u32, 4 + (i * 131) % 1400));
        }
        // The other direction, with metadata.
        assert!(send(&mut b, a_addr, b"back", None, 2));
        assert_eq!(b.flush().unwrap(), 1);
        let back = drain(&mut a);
        assert_eq!(
            back,
            vec![(
                RxMeta {
                    src: b_addr,
                    dst: a_addr,
                    ecn: 2
                },
                b"back".to_vec()
            )]
        );
        let st = a.stats();
        assert_eq!(
            (st.sent, st.delivered, st.dropped_loss, st.dropped_capacity),
            (10_000, 1, 0, 0)
        );
        assert_eq!(b.stats().delivered, 10_000);
    }

    #[test]
    fn impairment_rates_within_tolerance() {
        let (a_addr, b_addr) = addrs();
        let imp = Impairments {
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.1,
            corrupt: 0.02,
            seed: 7,
            capacity: 256,
        };
        let (mut a, mut b) = pair(a_addr, b_addr, imp);
        let n = 100_000u32;
        let got = run(&mut a, &mut b, n);
        let st = a.stats();
        let within = |count: u64, p: f64| {
            let expect = p * f64::from(n);
            let sigma = (expect * (1.0 - p)).sqrt();
            (count as f64 - expect).abs() < 5.0 * sigma
        };
        assert_eq!(st.sent, u64::from(n));
        assert!(within(st.dropped_loss, 0.1), "{st:?}");
        // Duplication, corruption and reordering apply to the datagrams that survive loss.
        let survived = 0.9;
        assert!(within(st.duplicated, 0.05 * survived), "{st:?}");
        assert!(within(st.corrupted, 0.02 * survived), "{st:?}");
        assert!(
            st.reordered > 0 && (st.reordered as f64) < 0.1 * f64::from(n),
            "{st:?}"
        );
        assert_eq!(st.dropped_capacity, 0);
        assert_eq!(
            got.len() as u64 + a.held() as u64,
            st.sent - st.dropped_loss + st.duplicated
        );

        // What the receiver saw agrees with the counters.
        let mut mismatched = 0u64;
        let mut inversions = 0u64;
        let mut highest = 0u32;
        for d in &got {
            let id = u32::from_be_bytes(d[..4].try_into().unwrap());
            if id >= n || *d != payload(id, d.len()) {
                mismatched += 1;
                continue;
            }
            if id < highest {
                inversions += 1;
            }
            highest = highest.max(id);
        }
        assert!(
            mismatched >= st.corrupted && mismatched <= st.corrupted + st.duplicated,
            "{mismatched} {st:?}"
        );
        assert!(inversions >= st.reordered / 2, "{inversions} {st:?}");
    }

    #[test]
    fn same_seed_same_outcome() {
        let (a_addr, b_addr) = addrs();
        let imp = Impairments {
            loss: 0.2,
            duplicate: 0.1,
            reorder: 0.2,
            corrupt: 0.1,
            seed: 42,
            capacity: 64,
        };
        let outcome = |imp: Impairments| {
            let (mut a, mut b) = pair(a_addr, b_addr, imp);
            let got = run(&mut a, &mut b, 5_000);
            let mut h = Sha256::new();
            for d in &got {
                h.update((d.len() as u32).to_be_bytes());
                h.update(d);
            }
            (h.finalize(), a.stats())
        };
        let first = outcome(imp);
        assert_eq!(first, outcome(imp));
        assert_ne!(first.0, outcome(Impairments { seed: 43, ..imp }).0);
    }

    #[test]
    fn full_queue_drops() {
        let (a_addr, b_addr) = addrs();
        let (mut a, mut b) = pair(
            a_addr,
            b_addr,
            Impairments {
                capacity: 8,
                ..Impairments::none()
            },
        );
        for i in 0..20u32 {
            assert!(send(&mut a, b_addr, &payload(i, 50), None, 0));
        }
        assert_eq!(a.flush().unwrap(), 20);
        let got = drain(&mut b);
        assert_eq!(got.len(), 8);
        assert_eq!(
            got[7].1,
            payload(7, 50),
            "the first eight made it, in order"
        );
        assert_eq!(a.stats().dropped_capacity, 12);
        // Buffers of dropped datagrams were recycled: the link works at full depth again.
        for round in 0..50u32 {
            for i in 0..8 {
                assert!(send(&mut a, b_addr, &payload(round * 8 + i, 1000), None, 0));
            }
            a.flush().unwrap();
            assert_eq!(drain(&mut b).len(), 8);
        }
    }

    #[test]
    fn push_tx_backpressure_and_bad_metadata() {
        let (a_addr, b_addr) = addrs();
        let opts = MemOptions {
            batch: 4,
            ..MemOptions::default()
        };
        let (mut a, mut b) = pair_with(a_addr, b_addr, Impairments::none(), opts);
        for i in 0..4 {
            assert!(send(&mut a, b_addr, &payload(i, 10), None, 0));
        }
        let mut called = false;
        assert!(!a.push_tx(&mut |_| {
            called = true;
            None
        }));
        assert!(!called);
        a.flush().unwrap();
        assert!(a.push_tx(&mut |_| None), "declining keeps the buffer");
        for meta in [
            TxMeta {
                dst: b_addr,
                src: None,
                len: 0,
                segment_size: None,
                ecn: 0,
            },
            TxMeta {
                dst: b_addr,
                src: None,
                len: 1473,
                segment_size: None,
                ecn: 0,
            },
            TxMeta {
                dst: b_addr,
                src: None,
                len: 10,
                segment_size: Some(0),
                ecn: 0,
            },
        ] {
            assert!(a.push_tx(&mut |_| Some(meta)));
        }
        assert_eq!(a.flush().unwrap(), 0);
        assert_eq!(a.stats().invalid, 3);
        assert_eq!(drain(&mut b).len(), 4);
    }

    #[test]
    fn gso_emulation_splits_on_receive() {
        let (a_addr, b_addr) = addrs();
        let opts = MemOptions {
            max_segments: 4,
            max_datagram_size: 1200,
            batch: 8,
        };
        let (mut a, mut b) = pair_with(a_addr, b_addr, Impairments::none(), opts);
        assert_eq!(
            a.capabilities(),
            Capabilities {
                max_segments: 4,
                max_datagram_size: 1200,
                max_receive_payload: 1200,
            }
        );
        let segs: Vec<Vec<u8>> = (0..4u32)
            .map(|i| payload(i, if i == 3 { 77 } else { 1200 }))
            .collect();
        assert!(send(&mut a, b_addr, &segs.concat(), Some(1200), 1));
        assert_eq!(a.flush().unwrap(), 4);
        let got = drain(&mut b);
        assert_eq!(got.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), segs);
        assert!(got.iter().all(|(m, _)| m.ecn == 1 && m.src == a_addr));

        // With impairments each datagram is impaired on its own: duplicate everything.
        let imp = Impairments {
            duplicate: 1.0,
            ..Impairments::none()
        };
        let (mut a, mut b) = pair_with(a_addr, b_addr, imp, opts);
        assert!(send(&mut a, b_addr, &segs.concat(), Some(1200), 0));
        a.flush().unwrap();
        let got: Vec<Vec<u8>> = drain(&mut b).into_iter().map(|(_, d)| d).collect();
        let doubled: Vec<Vec<u8>> = segs.iter().flat_map(|s| [s.clone(), s.clone()]).collect();
        assert_eq!(got, doubled);
        assert_eq!((a.stats().sent, a.stats().duplicated), (4, 4));
    }

    #[test]
    fn rebinding_changes_the_source() {
        let (a_addr, b_addr) = addrs();
        let (mut a, mut b) = pair(a_addr, b_addr, Impairments::none());
        let moved: SocketAddr = "10.9.9.9:1000".parse().unwrap();
        a.set_local_addr(moved);
        assert!(send(&mut a, b_addr, b"x", None, 0));
        a.flush().unwrap();
        assert_eq!(drain(&mut b)[0].0.src, moved);
        assert_eq!(a.local_addr(), moved);
    }

    #[test]
    fn two_thread_ping_pong() {
        let (a_addr, b_addr) = addrs();
        let (mut a, mut b) = pair(a_addr, b_addr, Impairments::none());
        let rounds = 10_000u32;
        let echo = std::thread::spawn(move || {
            let mut echoed = 0u32;
            while echoed < rounds {
                b.wait(Some(Duration::from_secs(5))).unwrap();
                let mut msgs: Vec<Vec<u8>> = Vec::new();
                b.recv_batch(&mut |_, d| msgs.push(d.to_vec())).unwrap();
                assert!(!msgs.is_empty(), "ping did not arrive within the timeout");
                for m in msgs {
                    assert!(send(&mut b, a_addr, &m, None, 0));
                    echoed += 1;
                }
                b.flush().unwrap();
            }
            b.stats()
        });
        for i in 0..rounds {
            assert!(send(&mut a, b_addr, &payload(i, 64), None, 0));
            a.flush().unwrap();
            let mut reply = None;
            while reply.is_none() {
                a.wait(Some(Duration::from_secs(5))).unwrap();
                a.recv_batch(&mut |_, d| reply = Some(d.to_vec())).unwrap();
            }
            assert_eq!(reply.unwrap(), payload(i, 64));
        }
        let bs = echo.join().unwrap();
        assert_eq!(
            (bs.delivered, bs.sent),
            (u64::from(rounds), u64::from(rounds))
        );
    }

    #[test]
    fn wait_times_out_when_idle() {
        let (a_addr, b_addr) = addrs();
        let (mut a, _b) = pair(a_addr, b_addr, Impairments::none());
        let t = Instant::now();
        a.wait(Some(Duration::from_millis(20))).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn silly_impairments_are_sanitized() {
        let (a_addr, b_addr) = addrs();
        let imp = Impairments {
            loss: f64::NAN,
            duplicate: -1.0,
            reorder: 0.0,
            corrupt: 7.0,
            seed: 1,
            capacity: 0,
        };
        let (mut a, mut b) = pair(a_addr, b_addr, imp);
        assert!(send(&mut a, b_addr, &[0u8; 10], None, 0));
        a.flush().unwrap();
        let got = drain(&mut b);
        assert_eq!(got.len(), 1);
        assert_ne!(got[0].1, vec![0u8; 10], "corrupt clamped to 1.0");
        assert_eq!(a.stats().dropped_loss, 0);
    }
}
