//! `XdpDatapath`: one worker's AF_XDP socket behind the engine's `Datapath` trait.
//!
//! Receive: frames come off the RX ring, Ethernet/IP/UDP is parsed in place and the UDP
//! payload inside the UMEM frame is handed to the engine (no copy). Transmit: the engine
//! writes its datagram at a fixed offset in a free frame, then the headers are written in
//! front of it and the descriptor goes on the TX ring.
//!
//! Frames of one UMEM (one per RX queue) circulate between the workers bound to that
//! queue: each keeps a private free list and spills surplus into the queue's shared pool
//! (a lock-free `ArrayQueue`). The fill and completion rings of the queue belong to
//! whichever of those workers holds their `try_lock` at the moment: refilling has one
//! owner at a time and no worker ever waits for another (an idle worker cannot starve
//! the rest, as a fixed owner could).
//!
//! Mis-steered packets: AF_XDP only delivers to sockets bound to the arrival queue, so
//! with one queue per worker the XDP program puts a packet owned by worker B but arriving
//! on worker A's queue into A's socket. A recomputes the owner with the same
//! `wire::steer` function, copies the datagram into B's hand-off queue (bounded, slots
//! preallocated; this path is rare: a client whose flow hash moved), and B's next
//! `recv_batch` delivers it as if B had received it, learning the peer's MAC for replies
//! (`peers`: only frames the engine authenticated may move a known peer).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::if_xdp::{self, xdp_desc};
use super::peers::PeerTable;
use super::served::SharedServed;
use super::socket::{BindMode, FillCompletion, XdpSocket};
use super::stats::{DatapathCounters, SocketStats};
use super::syscall;
use super::umem::{FrameState, Umem};
use crate::io::wake::{self, Wakers};
use crate::io::{Capabilities, Datapath, RxMeta, TxMeta};
use crate::wire::net::{self, FrameHeaders, MacAddr};
use crate::wire::steer::{self, CidLayout};

/// Datagrams taken per `recv_batch` from each source (hand-offs, own RX ring).
pub const RX_BATCH: u32 = 64;
/// Offset of the UDP payload in a TX frame: room for the largest header we build.
pub const TX_PAYLOAD_OFFSET: usize = net::MAX_HEADROOM;
/// Largest datagram a hand-off slot carries.
pub const HANDOFF_MAX: usize = 2048;
/// Hand-off slots per worker (about 2 KiB each). Only connections whose client moved to a
/// 4-tuple RSS puts on another queue come this way (new connections stay on their arrival
/// queue), but such a bulk flow can be half a worker's traffic: when every connection
/// came this way, 256 slots dropped ~1.5% of it in the two-queue veth test, 1024 kept up.
pub const HANDOFF_SLOTS: usize = 1024;
/// Peers remembered for their MAC address before the table is reset.
const MAX_PEERS: usize = 1 << 16;
/// How long a failed kernel neighbour lookup is not retried.
const NEIGH_RETRY: Duration = Duration::from_secs(1);

/// A datagram copied from one worker's socket to its owner.
pub struct Handoff {
    meta: RxMeta,
    src_mac: MacAddr,
    vlan: Option<u16>,
    len: u16,
    buf: [u8; HANDOFF_MAX],
}

/// Per-worker hand-off queues, indexed by worker, and the means to wake their owners
/// (`io::wake`: no lost wake-up, no syscall while the owner is busy).
pub struct Handoffs {
    queues: Box<[ArrayQueue<Handoff>]>,
    wakers: Wakers,
}

/// Shared by every datapath of one setup.
pub type HandoffQueues = Arc<Handoffs>;

pub fn handoff_queues(workers: usize) -> io::Result<HandoffQueues> {
    Ok(Arc::new(Handoffs {
        queues: (0..workers)
            .map(|_| ArrayQueue::new(HANDOFF_SLOTS))
            .collect(),
        wakers: Wakers::new(workers)?,
    }))
}

/// What the workers bound to one RX queue share.
pub struct QueueGroup {
    pub(super) umem: Umem,
    /// Free frames any member may take.
    pool: ArrayQueue<u64>,
    fill_comp: Mutex<FillCompletion>,
    /// Each member's private free-list length (for the accounting check).
    listed: Box<[AtomicU32]>,
    /// Copy mode: the kernel transmits only inside sendto, at most 32 frames per call.
    copy_mode: bool,
}

impl QueueGroup {
    pub fn new(umem: Umem, fc: FillCompletion, members: usize, mode: BindMode) -> QueueGroup {
        let pool = ArrayQueue::new(umem.frames() as usize);
        for a in umem.frame_addrs() {
            // Capacity equals the frame count: cannot fail.
            let _ = pool.push(a);
        }
        QueueGroup {
            umem,
            pool,
            fill_comp: Mutex::new(fc),
            listed: (0..members).map(|_| AtomicU32::new(0)).collect(),
            copy_mode: mode != BindMode::ZeroCopy,
        }
    }
}

/// Addresses and limits of the interface a datapath sends from.
#[derive(Clone, Debug)]
pub struct LocalIface {
    pub mac: MacAddr,
    /// First IPv4 and first global IPv6 address: the source of replies to a peer whose
    /// datagrams did not say which address they were sent to.
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// The addresses served, sorted: the one `--listen` names, or every address of the
    /// host (a VIP on `lo`, a VLAN device's, the interface's own). A reply leaves from
    /// whichever the peer wrote to (`TxMeta::src`).
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    pub mtu: u32,
    /// The interface's index: neighbour lookups are made on it.
    pub ifindex: u32,
}

impl LocalIface {
    /// The source address of a datagram to `dst`: `wanted` if it is one of ours in the
    /// same family, else the interface's first address of that family.
    pub fn source_for(&self, dst: IpAddr, wanted: Option<IpAddr>) -> Option<IpAddr> {
        if let Some(w) = wanted {
            if w.is_ipv4() == dst.is_ipv4() && self.addrs.binary_search(&w).is_ok() {
                return Some(w);
            }
        }
        match dst {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

/// One worker's AF_XDP datapath.
pub struct XdpDatapath {
    worker: u32,
    n_workers: u32,
    layout: CidLayout,
    socket: XdpSocket,
    group: Arc<QueueGroup>,
    member: usize,
    local_free: Vec<u64>,
    spill_above: usize,
    handoffs: HandoffQueues,
    /// Workers handed datagrams in this `recv_batch` (bit per worker), woken at its end.
    to_wake: u64,
    iface: LocalIface,
    /// The served addresses as the host changes them, and the generation `iface` holds
    /// (`served`); `None` unless a server serves every address.
    served: Option<(Arc<SharedServed>, u64)>,
    caps: Capabilities,
    /// Each peer's MAC address and the VLAN tag (TCI) its frames arrived with: replies go
    /// back there, on the same VLAN.
    peers: PeerTable,
    /// Failed kernel neighbour lookups, not retried before NEIGH_RETRY.
    neigh_misses: HashMap<IpAddr, Instant>,
    counters: DatapathCounters,
}

impl XdpDatapath {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        worker: u32,
        n_workers: u32,
        layout: CidLayout,
        socket: XdpSocket,
        group: Arc<QueueGroup>,
        member: usize,
        handoffs: HandoffQueues,
        iface: LocalIface,
        served: Option<Arc<SharedServed>>,
    ) -> XdpDatapath {
        let frames = group.umem.frames() as usize;
        let spill_above = if group.listed.len() == 1 {
            usize::MAX
        } else {
            2 * RX_BATCH as usize
        };
        let ip_udp = if iface.v6.is_some() {
            net::IPV6_HDR_LEN
        } else {
            net::IPV4_HDR_LEN
        } + net::UDP_HDR_LEN;
        let by_mtu = (iface.mtu as usize).saturating_sub(ip_udp);
        let by_frame = group.umem.frame_size() as usize - TX_PAYLOAD_OFFSET;
        // Received frames start after the kernel's headroom; a datagram another worker's
        // queue receives must also fit a hand-off slot.
        let mut by_rx_frame = (group.umem.frame_size() as usize)
            .saturating_sub(if_xdp::XDP_PACKET_HEADROOM + net::MAX_HEADROOM);
        if n_workers > 1 {
            by_rx_frame = by_rx_frame.min(HANDOFF_MAX);
        }
        XdpDatapath {
            worker,
            n_workers,
            layout,
            socket,
            group,
            member,
            local_free: Vec::with_capacity(frames),
            spill_above,
            handoffs,
            to_wake: 0,
            caps: Capabilities {
                max_segments: 1,
                max_datagram_size: by_mtu.min(by_frame),
                max_receive_payload: by_rx_frame,
            },
            iface,
            served: served.map(|s| (s, 0)),
            peers: PeerTable::new(MAX_PEERS),
            neigh_misses: HashMap::new(),
            counters: DatapathCounters::default(),
        }
    }

    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// How the socket is bound (zero-copy, copy, or sharing a UMEM).
    pub fn bind_mode(&self) -> BindMode {
        self.socket.mode()
    }

    /// The RX queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.socket.queue()
    }

    /// Tells the datapath a peer's MAC address (static neighbour; the client role needs
    /// it unless the kernel's neighbour table already knows the peer).
    pub fn set_neighbor(&mut self, ip: IpAddr, mac: MacAddr) {
        self.peers.trust(ip, (mac, None));
    }

    /// Takes up a served-address change (`served`) before a receive batch, so a datagram
    /// the program has started to steer here is answered from the address it was sent to.
    fn follow_served(&mut self) {
        if let Some((shared, seen)) = &mut self.served {
            if let Some(set) = shared.newer_than(seen) {
                self.iface.v4 = set.v4;
                self.iface.v6 = set.v6;
                self.iface.addrs.clone_from(&set.addrs);
            }
        }
    }

    /// The local interface this datapath sends from.
    pub fn iface(&self) -> &LocalIface {
        &self.iface
    }

    /// Counters, kernel socket statistics and the frame census of this socket's UMEM.
    pub fn stats(&mut self) -> SocketStats {
        let kernel = syscall::statistics(self.socket.fd())
            .map(Into::into)
            .unwrap_or_default();
        self.publish_listed();
        let fill_outstanding = match self.group.fill_comp.lock() {
            Ok(mut fc) => fc.fill.outstanding(),
            Err(_) => 0,
        };
        let free_listed = self.group.pool.len() as u32
            + self
                .group
                .listed
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .sum::<u32>();
        let frames = self.group.umem.ledger().census();
        SocketStats {
            counters: self.counters,
            kernel,
            frames,
            frame_violations: self.group.umem.ledger().violations(),
            free_listed,
            fill_outstanding,
            tx_in_flight: frames.tx,
        }
    }

    fn publish_listed(&self) {
        self.group.listed[self.member].store(self.local_free.len() as u32, Ordering::Relaxed);
    }

    /// The peer's MAC address and VLAN tag, from its frames or the kernel's table.
    fn peer_mac(&mut self, ip: IpAddr) -> Option<(MacAddr, Option<u16>)> {
        if let Some(link) = self.peers.get(ip) {
            return Some(link);
        }
        if let Some(t) = self.neigh_misses.get(&ip) {
            if t.elapsed() < NEIGH_RETRY {
                return None;
            }
        }
        match super::neigh::lookup(ip, Some(self.iface.ifindex)) {
            Some(mac) => {
                self.neigh_misses.remove(&ip);
                self.peers.trust(ip, (mac, None));
                Some((mac, None))
            }
            None => {
                tracing::debug!(%ip, "no neighbour entry for peer");
                if self.neigh_misses.len() >= MAX_PEERS {
                    self.neigh_misses.clear();
                }
                self.neigh_misses.insert(ip, Instant::now());
                None
            }
        }
    }

    /// Returns a frame to this worker's free list (spilling surplus to the group pool).
    fn free_frame(&mut self, base: u64) {
        self.local_free.push(base);
        if self.local_free.len() > self.spill_above {
            let keep = self.spill_above / 2;
            while self.local_free.len() > keep {
                match self.local_free.pop() {
                    Some(f) => {
                        // The pool holds every frame at most once: cannot be full.
                        let _ = self.group.pool.push(f);
                    }
                    None => break,
                }
            }
        }
    }

    fn take_frame(&mut self) -> Option<u64> {
        self.local_free.pop().or_else(|| self.group.pool.pop())
    }

    /// Reaps TX completions and tops up the fill ring, if no other worker of this queue
    /// is doing it right now.
    fn maintain(&mut self) {
        let group = Arc::clone(&self.group);
        let Ok(mut fc) = group.fill_comp.try_lock() else {
            return;
        };
        let umem = &group.umem;
        let csize = fc.completion.size();
        let n = fc.completion.available(csize);
        for i in 0..n {
            let addr = fc.completion.get(i);
            let base = umem.frame_base(addr);
            if umem.contains(addr, 1)
                && umem
                    .ledger()
                    .move_frame(base, FrameState::Tx, FrameState::Free)
            {
                self.free_frame(base);
            } else {
                self.counters.bad_descs += 1;
            }
        }
        if n > 0 {
            fc.completion.release(n);
        }
        let fsize = fc.fill.size();
        let mut room = fc.fill.free(fsize);
        while room > 0 {
            let Some(base) = self.take_frame() else { break };
            if !umem
                .ledger()
                .move_frame(base, FrameState::Free, FrameState::Fill)
            {
                // Listed free but owned elsewhere (logged and counted as a violation):
                // quarantined, never handed to the kernel while someone may write it.
                continue;
            }
            if !fc.fill.push(base) {
                // Unreachable given `room`, but never lose a frame.
                umem.ledger()
                    .move_frame(base, FrameState::Fill, FrameState::Free);
                self.free_frame(base);
                break;
            }
            room -= 1;
        }
        fc.fill.publish();
        if fc.fill.needs_wakeup() && self.socket.rx.available(1) == 0 {
            syscall::kick_rx(self.socket.fd());
        }
    }

    fn hand_off(
        &mut self,
        owner: u32,
        meta: RxMeta,
        (src_mac, vlan): (MacAddr, Option<u16>),
        payload: &[u8],
    ) {
        let Some(q) = self.handoffs.queues.get(owner as usize) else {
            self.counters.handoff_dropped += 1;
            return;
        };
        if payload.len() > HANDOFF_MAX {
            self.counters.handoff_dropped += 1;
            return;
        }
        let mut h = Handoff {
            meta,
            src_mac,
            vlan,
            len: payload.len() as u16,
            buf: [0; HANDOFF_MAX],
        };
        h.buf[..payload.len()].copy_from_slice(payload);
        if q.push(h).is_err() {
            self.counters.handoff_dropped += 1;
        } else {
            self.counters.rx_handed_off += 1;
            // MAX_WORKERS is 64: one bit each.
            self.to_wake |= 1u64 << (owner % 64);
        }
    }

    fn handle_rx(&mut self, d: xdp_desc, on: &mut dyn FnMut(RxMeta, &mut [u8]) -> bool) -> bool {
        let group = Arc::clone(&self.group);
        let umem = &group.umem;
        let len = d.len as usize;
        if !umem.contains(d.addr, len) {
            self.counters.bad_descs += 1;
            return false;
        }
        let base = umem.frame_base(d.addr);
        if !umem
            .ledger()
            .move_frame(base, FrameState::Fill, FrameState::Rx)
        {
            return false;
        }
        // SAFETY: inside the UMEM (checked) and ours: the kernel handed this frame over on
        // the RX ring and the ledger moved it to Rx for this worker alone; the slice dies
        // before the frame goes back to a free list below.
        let frame = unsafe { umem.slice_mut(d.addr, len) };
        let mut delivered = false;
        match net::parse_udp_frame(frame) {
            Err(e) => {
                self.counters.rx_malformed += 1;
                tracing::trace!("dropping RX frame: {e}");
            }
            Ok(f) => {
                let meta = RxMeta {
                    src: f.src,
                    dst: f.dst,
                    ecn: f.ecn,
                };
                let payload = &mut frame[f.payload_range()];
                // Only our CIDs can name another worker: the program keeps client-chosen
                // DCIDs on a worker of the arrival queue, so those stay here.
                let owner = if self.n_workers > 1 {
                    steer::foreign_owner(payload, &self.layout, self.n_workers, self.worker)
                } else {
                    None
                };
                match owner {
                    Some(w) => self.hand_off(w, meta, (f.src_mac, f.vlan), payload),
                    _ => {
                        let vouched = on(meta, payload);
                        self.peers.observe(f.src.ip(), (f.src_mac, f.vlan), vouched);
                        self.counters.rx_packets += 1;
                        delivered = true;
                    }
                }
            }
        }
        // A frame the ledger did not have in Rx is not ours to list free (a violation,
        // logged and counted); it is left out of circulation.
        if umem
            .ledger()
            .move_frame(base, FrameState::Rx, FrameState::Free)
        {
            self.free_frame(base);
        }
        delivered
    }

    /// Publishes queued TX descriptors and makes the kernel send them.
    fn kick(&mut self) -> io::Result<u32> {
        let n = self.socket.tx.publish();
        if self.group.copy_mode {
            // Copy mode sends inside sendto, TX_BATCH_SIZE (32) frames per call.
            let mut rounds = self.socket.tx.size() / 32 + 2;
            while self.socket.tx.outstanding() > 0 && rounds > 0 {
                syscall::kick_tx(self.socket.fd())?;
                rounds -= 1;
            }
        } else if self.socket.tx.outstanding() > 0 && self.socket.tx.needs_wakeup() {
            // Whenever entries wait, not only when this call published some: the driver
            // may have set NEED_WAKEUP after an earlier publish read the flag clear.
            syscall::kick_tx(self.socket.fd())?;
        }
        Ok(n)
    }
}

impl Datapath for XdpDatapath {
    fn local_addr(&self) -> SocketAddr {
        let ip: IpAddr = match (self.iface.v4, self.iface.v6) {
            (Some(v4), _) => v4.into(),
            (None, Some(v6)) => v6.into(),
            (None, None) => Ipv4Addr::UNSPECIFIED.into(),
        };
        SocketAddr::new(ip, self.iface.port)
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn recv_batch(&mut self, on: &mut dyn FnMut(RxMeta, &mut [u8])) -> io::Result<usize> {
        self.recv_batch_vouched(&mut |meta, buf| {
            on(meta, buf);
            false
        })
    }

    fn recv_batch_vouched(
        &mut self,
        on: &mut dyn FnMut(RxMeta, &mut [u8]) -> bool,
    ) -> io::Result<usize> {
        let mut delivered = 0usize;
        self.follow_served();
        let handoffs = Arc::clone(&self.handoffs);
        if let Some(q) = handoffs.queues.get(self.worker as usize) {
            for _ in 0..2 * RX_BATCH {
                let Some(mut h) = q.pop() else { break };
                let vouched = on(h.meta, &mut h.buf[..usize::from(h.len)]);
                self.peers
                    .observe(h.meta.src.ip(), (h.src_mac, h.vlan), vouched);
                self.counters.rx_packets += 1;
                self.counters.rx_from_handoff += 1;
                delivered += 1;
            }
        }
        self.maintain();
        let n = self.socket.rx.available(RX_BATCH);
        for i in 0..n {
            let d = self.socket.rx.get(i);
            if self.handle_rx(d, on) {
                delivered += 1;
            }
        }
        if n > 0 {
            self.socket.rx.release(n);
            // Frames just freed go straight back to the kernel.
            self.maintain();
        }
        while self.to_wake != 0 {
            let w = self.to_wake.trailing_zeros() as usize;
            self.to_wake &= self.to_wake - 1;
            handoffs.wakers.wake(w);
        }
        self.publish_listed();
        Ok(delivered)
    }

    fn push_tx(&mut self, write: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>) -> bool {
        if self.socket.tx.free(1) == 0 {
            // Best effort: the kernel may have room after a kick.
            let _ = self.kick();
            self.maintain();
            if self.socket.tx.free(1) == 0 {
                return false;
            }
        }
        let base = match self.take_frame() {
            Some(b) => b,
            None => {
                self.maintain();
                match self.take_frame() {
                    Some(b) => b,
                    None => return false,
                }
            }
        };
        let group = Arc::clone(&self.group);
        let umem = &group.umem;
        if !umem
            .ledger()
            .move_frame(base, FrameState::Free, FrameState::Tx)
        {
            // Listed free but owned elsewhere (logged and counted as a violation): never
            // written, left out of circulation; this datagram is dropped.
            return false;
        }
        let frame_size = umem.frame_size() as usize;
        // SAFETY: the whole frame is inside the UMEM and ours: taken from a free list and
        // moved to Tx in the ledger; the kernel sees it only after we publish its
        // descriptor, after this slice is gone.
        let frame = unsafe { umem.slice_mut(base, frame_size) };
        let cap = self.caps.max_datagram_size;
        let meta = write(&mut frame[TX_PAYLOAD_OFFSET..TX_PAYLOAD_OFFSET + cap]);
        let queued = meta.and_then(|m| {
            if m.len > cap || m.segment_size.is_some_and(|s| s < m.len) {
                tracing::warn!(
                    len = m.len,
                    cap,
                    "transmit larger than the datapath allows; dropped"
                );
                return None;
            }
            let mut src_ip = self.iface.source_for(m.dst.ip(), m.src)?;
            if m.src.is_some_and(|w| w != src_ip) && self.served.is_some() {
                // The datagram answered may be to an address the program began to steer
                // after this batch took up the list (`served`): look again.
                std::hint::cold_path();
                self.follow_served();
                src_ip = self.iface.source_for(m.dst.ip(), m.src)?;
            }
            let Some((dst_mac, vlan)) = self.peer_mac(m.dst.ip()) else {
                self.counters.tx_no_neighbor += 1;
                return None;
            };
            let h = FrameHeaders {
                src_mac: self.iface.mac,
                dst_mac,
                vlan,
                src: SocketAddr::new(src_ip, self.iface.port),
                dst: m.dst,
                ecn: m.ecn,
                hop_limit: 0,
            };
            let start = TX_PAYLOAD_OFFSET - h.header_len();
            let total = h.emit(&mut frame[start..], m.len).ok()?;
            Some(xdp_desc {
                addr: base + start as u64,
                len: total as u32,
                options: 0,
            })
        });
        match queued {
            Some(desc) if self.socket.tx.push(desc) => {
                self.counters.tx_packets += 1;
            }
            _ => {
                umem.ledger()
                    .move_frame(base, FrameState::Tx, FrameState::Free);
                self.free_frame(base);
            }
        }
        true
    }

    fn flush(&mut self) -> io::Result<usize> {
        let n = self.kick()?;
        self.maintain();
        Ok(n as usize)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let h = Arc::clone(&self.handoffs);
        let Some(queue) = h.queues.get(self.worker as usize) else {
            return Ok(());
        };
        if self.socket.rx.available(1) > 0 {
            return Ok(());
        }
        let fd = self.socket.borrowed_fd();
        h.wakers.sleep_unless(
            self.worker as usize,
            || !queue.is_empty(),
            |wake| wake::poll_or_wake(fd, libc::POLLIN, wake, timeout).map(drop),
        )
    }
}
