//! The per-core loop: RX batch → endpoint → applications → TX batch, timers, shutdown.
//!
//! Each worker owns its datapath, endpoint and connections; nothing on this path is shared
//! or locked. The only cross-worker traffic is the rare datagram that arrived on the wrong
//! worker (a migrated client), handed to its owner through a lock-free queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::app::{AppDispatcher, AppFactory, AppSlot, SHUTDOWN_REASON};
use crate::endpoint::{Endpoint, EndpointStats, EventHandler};
use crate::io::wake::Wakers;
use crate::io::{Datapath, RxMeta};
use crate::wire::steer;

/// Hand-off buffers a worker keeps for reuse.
const SPARE_HANDOFF_BUFFERS: usize = 256;

/// A datagram that landed on the wrong worker.
pub struct HandedOff {
    pub meta: RxMeta,
    pub len: usize,
    pub buf: Box<[u8; 2048]>,
}

/// Queues from every worker to every other (index = destination worker), and the means to
/// wake an idle owner (`io::wake`). Even with the kernel steering short headers by CID,
/// long headers go by 4-tuple hash, and a client Initial whose DCID happens to have our
/// CIDs' shape (1 in 32 of the right length) is handed to the worker its byte names: it
/// must not wait for that worker's next timer.
#[derive(Clone)]
pub struct Handoff {
    pub queues: Arc<Vec<ArrayQueue<HandedOff>>>,
    wakers: Arc<Wakers>,
}

impl Handoff {
    pub fn new(workers: usize) -> std::io::Result<Self> {
        Ok(Self {
            queues: Arc::new((0..workers).map(|_| ArrayQueue::new(1024)).collect()),
            wakers: Arc::new(Wakers::new(workers)?),
        })
    }

    /// Copies `buf` into a spare buffer and queues it for `owner`. A full queue drops it,
    /// and so does a datagram too large for a slot: counted, like a full socket buffer
    /// (QUIC recovers). Never handled here instead: this worker does not know the
    /// connection, and its stateless reset would be valid and kill it (RFC 9000 §10.3.2).
    // Boxed buffers on purpose: each moves into a queue entry and back by pointer.
    #[allow(clippy::vec_box)]
    fn pass(
        &self,
        owner: u32,
        meta: RxMeta,
        buf: &[u8],
        spare: &mut Vec<Box<[u8; 2048]>>,
        counters: &WorkerCounters,
    ) {
        let Some(q) = self
            .queues
            .get(owner as usize)
            .filter(|_| buf.len() <= 2048)
        else {
            counters.handoff_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut b = spare.pop().unwrap_or_else(|| Box::new([0u8; 2048]));
        b[..buf.len()].copy_from_slice(buf);
        let d = HandedOff {
            meta,
            len: buf.len(),
            buf: b,
        };
        match q.push(d) {
            Ok(()) => {
                self.wakers.wake(owner as usize);
                counters.handed_off.fetch_add(1, Ordering::Relaxed)
            }
            Err(d) => {
                spare.push(d.buf);
                counters.handoff_dropped.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Counters a worker publishes for `quench stats` / SIGUSR1 (relaxed atomics, written by the owner only).
#[derive(Default)]
pub struct WorkerCounters {
    pub datagrams_rx: AtomicU64,
    pub datagrams_tx: AtomicU64,
    pub connections: AtomicU64,
    /// Connections whose client address is not validated yet (a gauge, like `connections`).
    pub unvalidated_handshakes: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub handed_off: AtomicU64,
    /// Hand-offs dropped: the owner's queue was full, or the datagram exceeds a slot.
    pub handoff_dropped: AtomicU64,
    pub stateless_resets: AtomicU64,
    pub retries: AtomicU64,
    pub connections_refused: AtomicU64,
    pub handshakes_limited: AtomicU64,
    pub version_negotiations: AtomicU64,
    pub new_tokens: AtomicU64,
    pub resumed_handshakes: AtomicU64,
    pub early_data_accepted: AtomicU64,
    pub zero_rtt_packets: AtomicU64,
    pub early_packets_buffered: AtomicU64,
    pub early_packets_delivered: AtomicU64,
    pub compatible_version_switches: AtomicU64,
    pub pmtu_probes_sent: AtomicU64,
    pub pmtu_probes_lost: AtomicU64,
    pub pmtu_black_holes: AtomicU64,
    pub max_datagram_size_peak: AtomicU64,
    pub packets_sent: AtomicU64,
    pub packets_lost: AtomicU64,
    pub packets_dropped: AtomicU64,
    pub duplicate_packets: AtomicU64,
    pub late_packets: AtomicU64,
    pub authentication_failures: AtomicU64,
    pub congestion_events: AtomicU64,
    pub spurious_congestion_events: AtomicU64,
    pub ecn_capable_connections: AtomicU64,
    pub ecn_failures: AtomicU64,
    pub ecn_marked_sent: AtomicU64,
    pub ecn_ect0_received: AtomicU64,
    pub ecn_ce_events: AtomicU64,
}

impl WorkerCounters {
    fn publish(&self, ep: &EndpointStats, conns: usize, unvalidated: usize) {
        self.connections.store(conns as u64, Ordering::Relaxed);
        self.unvalidated_handshakes
            .store(unvalidated as u64, Ordering::Relaxed);
        self.connections_accepted
            .store(ep.connections_accepted, Ordering::Relaxed);
        self.stateless_resets
            .store(ep.stateless_resets_sent, Ordering::Relaxed);
        self.retries.store(ep.retries_sent, Ordering::Relaxed);
        self.connections_refused
            .store(ep.connections_refused, Ordering::Relaxed);
        self.handshakes_limited
            .store(ep.handshakes_limited, Ordering::Relaxed);
        self.version_negotiations
            .store(ep.version_negotiations_sent, Ordering::Relaxed);
        self.new_tokens.store(ep.new_tokens_sent, Ordering::Relaxed);
        self.resumed_handshakes
            .store(ep.resumed_handshakes, Ordering::Relaxed);
        self.early_data_accepted
            .store(ep.early_data_accepted, Ordering::Relaxed);
        self.zero_rtt_packets
            .store(ep.zero_rtt_packets, Ordering::Relaxed);
        self.early_packets_buffered
            .store(ep.early_packets_buffered, Ordering::Relaxed);
        self.early_packets_delivered
            .store(ep.early_packets_delivered, Ordering::Relaxed);
        self.compatible_version_switches
            .store(ep.compatible_version_switches, Ordering::Relaxed);
        self.pmtu_probes_sent
            .store(ep.pmtu_probes_sent, Ordering::Relaxed);
        self.pmtu_probes_lost
            .store(ep.pmtu_probes_lost, Ordering::Relaxed);
        self.pmtu_black_holes
            .store(ep.pmtu_black_holes, Ordering::Relaxed);
        self.max_datagram_size_peak
            .store(ep.max_datagram_size_peak, Ordering::Relaxed);
        self.packets_sent.store(ep.packets_sent, Ordering::Relaxed);
        self.packets_lost.store(ep.packets_lost, Ordering::Relaxed);
        self.packets_dropped
            .store(ep.packets_dropped, Ordering::Relaxed);
        self.duplicate_packets
            .store(ep.duplicate_packets, Ordering::Relaxed);
        self.late_packets.store(ep.late_packets, Ordering::Relaxed);
        self.authentication_failures
            .store(ep.authentication_failures, Ordering::Relaxed);
        self.congestion_events
            .store(ep.congestion_events, Ordering::Relaxed);
        self.spurious_congestion_events
            .store(ep.spurious_congestion_events, Ordering::Relaxed);
        self.ecn_capable_connections
            .store(ep.ecn_capable_connections, Ordering::Relaxed);
        self.ecn_failures.store(ep.ecn_failures, Ordering::Relaxed);
        self.ecn_marked_sent
            .store(ep.ecn_marked_sent, Ordering::Relaxed);
        self.ecn_ect0_received
            .store(ep.ecn_ect0_received, Ordering::Relaxed);
        self.ecn_ce_events
            .store(ep.ecn_ce_events, Ordering::Relaxed);
    }
}

pub struct Worker<D: Datapath> {
    pub id: usize,
    pub datapath: D,
    pub endpoint: Endpoint<AppSlot>,
    pub factory: Arc<dyn AppFactory>,
    pub shutdown: Arc<AtomicBool>,
    pub handoff: Option<Handoff>,
    pub counters: Arc<WorkerCounters>,
    /// How long to let connections close gracefully on shutdown.
    pub drain_timeout: Duration,
}

impl<D: Datapath> Worker<D> {
    /// Runs until shutdown is requested and connections have closed (or the drain timeout passed).
    pub fn run(mut self) -> std::io::Result<()> {
        let caps = self.datapath.capabilities();
        let max_segments = caps.max_segments.max(1);
        let multi = self.handoff.as_ref().is_some_and(|h| h.queues.len() > 1);
        let mut closing_since: Option<Instant> = None;
        let mut spare: Vec<Box<[u8; 2048]>> = Vec::new();
        // One handle for the whole loop: the dispatcher borrows it while `self` is borrowed mutably.
        let factory = self.factory.clone();
        loop {
            let now = Instant::now();
            if self.shutdown.load(Ordering::Relaxed) && closing_since.is_none() {
                tracing::info!(
                    worker = self.id,
                    connections = self.endpoint.connection_count(),
                    "closing connections"
                );
                self.endpoint.shut_down_all(|conn, app| match app {
                    Some(app) => app.on_shutdown(conn, now),
                    None => conn.close(now, 0, SHUTDOWN_REASON),
                });
                closing_since = Some(now);
            }
            if let Some(t) = closing_since {
                // Connections the peer closed send nothing more: not worth waiting for.
                if self.endpoint.live_connection_count() == 0
                    || now.duration_since(t) > self.drain_timeout
                {
                    break;
                }
            }

            let mut dispatcher = AppDispatcher {
                factory: factory.as_ref(),
            };
            let mut received = 0;

            // Datagrams other workers received for us.
            if let Some(h) = &self.handoff {
                while let Some(mut d) = h.queues[self.id].pop() {
                    self.endpoint.handle_datagram(
                        now,
                        d.meta,
                        &mut d.buf[..d.len],
                        &mut dispatcher,
                    );
                    // Buffers travel with the datagrams: keep a few for our own hand-offs
                    // and free the rest, or a one-way flow would pile them up here.
                    if spare.len() < SPARE_HANDOFF_BUFFERS {
                        spare.push(d.buf);
                    }
                    received += 1;
                }
            }

            // Fixed for the endpoint's life: read once a batch, not once a datagram.
            let layout = self.endpoint.config().layout();
            let endpoint = &mut self.endpoint;
            let handoff = self.handoff.as_ref();
            let counters = &self.counters;
            let (me, n_workers) = (self.id as u32, handoff.map_or(1, |h| h.queues.len() as u32));
            received += self.datapath.recv_batch_vouched(&mut |meta, buf| {
                if let Some(h) = handoff.filter(|_| multi) {
                    if let Some(owner) = steer::foreign_owner(buf, &layout, n_workers, me) {
                        h.pass(owner, meta, buf, &mut spare, counters);
                        return false;
                    }
                }
                endpoint.handle_datagram(now, meta, buf, &mut dispatcher);
                endpoint.source_authenticated()
            })?;
            self.counters
                .datagrams_rx
                .fetch_add(received as u64, Ordering::Relaxed);

            self.endpoint.handle_timeouts(now, &mut dispatcher);
            let sent = self.transmit(now, max_segments)?;
            self.counters
                .datagrams_tx
                .fetch_add(sent as u64, Ordering::Relaxed);
            self.publish();

            if received == 0 && sent == 0 {
                let mut timeout = self
                    .endpoint
                    .next_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_millis(100))
                    .min(Duration::from_millis(100));
                if closing_since.is_some() {
                    timeout = timeout.min(Duration::from_millis(10));
                }
                if !timeout.is_zero() {
                    match self.handoff.as_ref().filter(|_| multi) {
                        // Handed-off datagrams don't wake the socket: their sender does.
                        Some(h) => {
                            let queue = &h.queues[self.id];
                            let dp = &mut self.datapath;
                            h.wakers.sleep_unless(
                                self.id,
                                || !queue.is_empty(),
                                |wake| dp.wait_or_wake(Some(timeout), wake),
                            )?
                        }
                        None => self.datapath.wait(Some(timeout))?,
                    }
                }
            }
        }
        self.transmit(Instant::now(), max_segments)?;
        // Connections still closing or draining count in the final figures too.
        self.endpoint.release_all();
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.counters.publish(
            &self.endpoint.stats(),
            self.endpoint.connection_count(),
            self.endpoint.unvalidated_connection_count(),
        );
    }

    /// Drains the endpoint's outgoing datagrams into the datapath; returns how many buffers were queued.
    fn transmit(&mut self, now: Instant, max_segments: usize) -> std::io::Result<usize> {
        transmit(&mut self.datapath, &mut self.endpoint, now, max_segments)
    }
}

/// Moves everything the endpoint wants to send into the datapath and flushes it.
pub fn transmit<D: Datapath, U: Default>(
    dp: &mut D,
    endpoint: &mut Endpoint<U>,
    now: Instant,
    max_segments: usize,
) -> std::io::Result<usize> {
    let mut count = 0;
    // Bound one round so receiving is not starved by a connection with a lot to send.
    while count < 256 {
        let mut wrote = false;
        let pushed = dp.push_tx(&mut |buf| {
            let meta = endpoint.poll_transmit(now, buf, max_segments);
            wrote = meta.is_some();
            meta
        });
        if !pushed {
            // No free buffer: hand what we have to the kernel and try again.
            if dp.flush()? == 0 {
                break;
            }
            continue;
        }
        if !wrote {
            break;
        }
        count += 1;
    }
    dp.flush()?;
    Ok(count)
}

/// Drives `endpoint` and `handler` over `dp` until `done` says so or `deadline` passes.
/// Used by the client role and by tests.
pub fn drive_until<D: Datapath, U: Default, H: EventHandler<U>>(
    dp: &mut D,
    endpoint: &mut Endpoint<U>,
    handler: &mut H,
    deadline: Instant,
    mut done: impl FnMut(&mut Endpoint<U>, &mut H, Instant) -> bool,
) -> std::io::Result<bool> {
    let max_segments = dp.capabilities().max_segments.max(1);
    loop {
        let now = Instant::now();
        if done(endpoint, handler, now) {
            transmit(dp, endpoint, now, max_segments)?;
            return Ok(true);
        }
        if now >= deadline {
            return Ok(false);
        }
        let received = dp.recv_batch_vouched(&mut |meta, buf| {
            endpoint.handle_datagram(now, meta, buf, handler);
            endpoint.source_authenticated()
        })?;
        endpoint.handle_timeouts(now, handler);
        let sent = transmit(dp, endpoint, now, max_segments)?;
        if received == 0 && sent == 0 {
            let timeout = endpoint
                .next_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50))
                .min(deadline.saturating_duration_since(now));
            if !timeout.is_zero() {
                dp.wait(Some(timeout))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram for another worker's connection goes to that worker or nowhere: one too
    /// large for a hand-off slot is dropped and counted, not left to this worker (which
    /// would answer it with a valid stateless reset).
    #[test]
    fn hand_offs_that_do_not_fit_are_dropped_and_counted() {
        let handoff = Handoff::new(2).unwrap();
        let counters = WorkerCounters::default();
        let mut spare = Vec::new();
        let meta = RxMeta {
            src: "10.0.0.1:5000".parse().unwrap(),
            dst: "10.0.0.2:4433".parse().unwrap(),
            ecn: 0,
        };
        handoff.pass(1, meta, &[7u8; 1200], &mut spare, &counters);
        handoff.pass(1, meta, &[7u8; 3000], &mut spare, &counters);
        handoff.pass(5, meta, &[7u8; 100], &mut spare, &counters);
        assert_eq!(counters.handed_off.load(Ordering::Relaxed), 1);
        assert_eq!(counters.handoff_dropped.load(Ordering::Relaxed), 2);
        let d = handoff.queues[1]
            .pop()
            .expect("the fitting datagram was queued");
        assert_eq!((d.len, d.buf[0]), (1200, 7));
        assert!(handoff.queues[1].pop().is_none());
    }
}
