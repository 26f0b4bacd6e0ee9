//! The kernel UDP datapath: one non-blocking socket, `recvmmsg`/`sendmmsg` in batches,
//! UDP GSO/GRO when the kernel has them, ECN and destination address through control
//! messages, SO_REUSEPORT for one socket per worker on a shared port.
//!
//! On a dual-stack socket (bound to `[::]`) IPv4 peers appear as v4-mapped IPv6
//! addresses, as the kernel reports them; `RxMeta::dst` uses the same family as `src`, and
//! a plain IPv4 destination is accepted on transmit.

mod cmsg;
mod rx;
mod steer;
mod sys;
mod tx;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use tracing::{debug, warn};

use super::{Capabilities, Datapath, RxMeta, TxMeta};
use rx::RxRing;
pub use steer::cid_steering_program;
use tx::{Msg, TxPool, TxScratch};

/// Default UDP payload sizes for a 1500-byte MTU (minus IP and UDP headers).
pub const DEFAULT_MAX_DATAGRAM_V4: usize = 1472;
pub const DEFAULT_MAX_DATAGRAM_V6: usize = 1452;

/// Datagram buffers for a connection configured to send up to `max_datagram_size`: the
/// defaults for a 1500-byte MTU unless larger sizes (jumbo frames) are wanted.
pub fn buffer_size_for(max_datagram_size: usize) -> Option<usize> {
    (max_datagram_size > DEFAULT_MAX_DATAGRAM_V4).then_some(max_datagram_size.min(MAX_UDP_PAYLOAD))
}

/// Largest UDP payload of one IPv4 packet (65535 - 20 - 8); also the cap for a GSO buffer,
/// whose total length the kernel checks the same way.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// Most datagrams in one GSO send (the kernel allows 64 or 128 depending on version).
const MAX_GSO_SEGMENTS: usize = 64;
/// `sendmmsg`/`recvmmsg` take at most UIO_MAXIOV messages.
const MAX_BATCH: usize = 1024;

/// How to set up a [`UdpDatapath`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpOptions {
    /// Set SO_REUSEPORT, so several sockets (one per worker) can bind the same address.
    pub reuse_port: bool,
    /// SO_RCVBUF in bytes (SO_RCVBUFFORCE tried first); 0 keeps the system default.
    pub recv_buffer: usize,
    /// SO_SNDBUF in bytes (SO_SNDBUFFORCE tried first); 0 keeps the system default.
    pub send_buffer: usize,
    /// Messages per `recvmmsg`/`sendmmsg`, and the number of transmit buffers.
    pub batch: usize,
    /// Use UDP GSO if the kernel supports it.
    pub gso: bool,
    /// Use UDP GRO if the kernel supports it.
    pub gro: bool,
    /// Largest UDP payload per datagram; `None` means 1472 (IPv4) / 1452 (IPv6).
    pub max_datagram_size: Option<usize>,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            reuse_port: false,
            recv_buffer: 8 << 20,
            send_buffer: 4 << 20,
            batch: 32,
            gso: true,
            gro: true,
            max_datagram_size: None,
        }
    }
}

/// Counters since bind. Datagram counts are after GRO split / before GSO coalescing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpStats {
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub rx_syscalls: u64,
    /// Received datagrams that arrived coalesced by GRO (more than one per message).
    pub rx_gro_segments: u64,
    /// Received messages dropped (truncated, or with an unreadable source address).
    pub rx_dropped: u64,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub tx_syscalls: u64,
    /// Sent datagrams that went out in a multi-segment GSO message.
    pub tx_gso_segments: u64,
    /// Datagrams dropped on transmit (bad metadata, unroutable, per-datagram send errors).
    pub tx_dropped: u64,
    /// Flushes that stopped because the socket buffer was full.
    pub tx_would_block: u64,
    /// GSO messages sent again as single datagrams because their segments exceeded the
    /// interface MTU (the path shrank under a connection's validated size).
    pub tx_gso_split: u64,
}

/// A [`Datapath`] over one kernel UDP socket.
pub struct UdpDatapath {
    fd: OwnedFd,
    local: SocketAddr,
    v6: bool,
    caps: Capabilities,
    gro: bool,
    batch: usize,
    rx: RxRing,
    tx: TxPool,
    tx_scratch: TxScratch,
    plan: Vec<Msg>,
    /// Plan the next send as single datagrams (after a GSO message was too big).
    split_next: bool,
    stats: UdpStats,
    /// How it was set up, for `rebind`.
    opts: UdpOptions,
}

impl UdpDatapath {
    /// Creates, configures and binds the socket. Optional features the kernel lacks (GSO,
    /// GRO, forced buffer sizes, ECN or pktinfo reporting) are left off with a log line;
    /// only socket creation, SO_REUSEPORT and bind errors fail.
    pub fn bind(addr: SocketAddr, opts: UdpOptions) -> io::Result<Self> {
        let v6 = addr.is_ipv6();
        let dual_stack = v6 && addr.ip().is_unspecified();
        let fd = sys::udp_socket(v6)?;
        if v6 {
            sys::set_int(
                &fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (!dual_stack).into(),
            )?;
        }
        if opts.reuse_port {
            sys::set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        set_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, opts.recv_buffer);
        set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, opts.send_buffer);

        // IPv4 options also govern v4-mapped traffic on a dual-stack socket.
        let v4_opts = !v6 || dual_stack;
        let mut wanted = Vec::with_capacity(6);
        if v4_opts {
            wanted.push((libc::IPPROTO_IP, libc::IP_RECVTOS, 1, "IP_RECVTOS"));
            wanted.push((libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO"));
            // DF set and no clamping to the kernel's PMTU estimate: QUIC does its own PMTUD
            // (RFC 9000 §14.3).
            wanted.push((
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
                "IP_MTU_DISCOVER",
            ));
        }
        if v6 {
            wanted.push((
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVTCLASS,
                1,
                "IPV6_RECVTCLASS",
            ));
            wanted.push((
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVPKTINFO,
                1,
                "IPV6_RECVPKTINFO",
            ));
            wanted.push((
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_PROBE,
                "IPV6_MTU_DISCOVER",
            ));
        }
        for (level, name, value, label) in wanted {
            if let Err(e) = sys::set_int(&fd, level, name, value) {
                warn!(option = label, error = %e, "UDP socket option not set");
            }
        }

        let default_mds = if v6 {
            DEFAULT_MAX_DATAGRAM_V6
        } else {
            DEFAULT_MAX_DATAGRAM_V4
        };
        let mds = opts
            .max_datagram_size
            .unwrap_or(default_mds)
            .clamp(1, MAX_UDP_PAYLOAD);
        let gro = opts.gro && sys::set_int(&fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let gso = opts.gso && probe_gso(&fd, mds);
        let max_segments = if gso {
            (MAX_UDP_PAYLOAD / mds).clamp(1, MAX_GSO_SEGMENTS)
        } else {
            1
        };

        sys::bind(&fd, &addr)?;
        let local = sys::local_addr(&fd)?;
        let batch = opts.batch.clamp(1, MAX_BATCH);
        debug!(%local, gso, gro, max_segments, mds, batch, "UDP datapath bound");
        Ok(UdpDatapath {
            opts,
            fd,
            local,
            v6,
            caps: Capabilities {
                max_segments,
                max_datagram_size: mds,
                // Receive buffers hold any UDP payload (GRO or not).
                max_receive_payload: rx::RX_BUF_SIZE,
            },
            gro,
            batch,
            rx: RxRing::new(batch),
            tx: TxPool::new(batch, max_segments * mds),
            tx_scratch: TxScratch::new(batch),
            plan: Vec::with_capacity(batch),
            split_next: false,
            stats: UdpStats::default(),
        })
    }

    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Whether transmit currently uses UDP GSO (it is turned off if the NIC rejects it).
    pub fn gso_enabled(&self) -> bool {
        self.caps.max_segments > 1
    }

    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Steers datagrams among the sockets of this SO_REUSEPORT group with a classic BPF
    /// program (SO_ATTACH_REUSEPORT_CBPF). The program sees the UDP payload and returns the
    /// index of the socket in bind order; an index past the group falls back to the hash.
    pub fn attach_reuseport_cbpf(&self, program: &[libc::sock_filter]) -> io::Result<()> {
        sys::attach_reuseport_cbpf(&self.fd, program)
    }

    /// Brings a transmit address into the socket's family: v4-mapped on an IPv6 socket,
    /// plain IPv4 on an IPv4 one. `None` if this socket cannot reach it.
    fn tx_addr(&self, dst: SocketAddr) -> Option<SocketAddr> {
        match (self.v6, dst) {
            (true, SocketAddr::V4(a)) => Some(SocketAddr::new(
                IpAddr::V6(a.ip().to_ipv6_mapped()),
                a.port(),
            )),
            (false, SocketAddr::V6(a)) => a
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddr::new(IpAddr::V4(ip), a.port())),
            _ => Some(dst),
        }
    }

    /// Records a finished message.
    fn sent(&mut self, msg: &Msg) -> usize {
        self.tx.complete(msg);
        let n = msg.datagrams();
        self.stats.tx_datagrams += n as u64;
        self.stats.tx_bytes += msg.len as u64;
        if msg.is_gso() {
            self.stats.tx_gso_segments += n as u64;
        }
        n
    }
}

/// Tries the privileged option first (ignores `rmem_max`/`wmem_max`), then the plain one.
fn set_buffer(fd: &OwnedFd, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if sys::set_int(fd, libc::SOL_SOCKET, force, value).is_ok() {
        return;
    }
    if let Err(e) = sys::set_int(fd, libc::SOL_SOCKET, plain, value) {
        warn!(error = %e, bytes, "socket buffer size not set");
    }
    if let Ok(got) = sys::get_int(fd, libc::SOL_SOCKET, plain) {
        // The kernel reports double the usable size.
        if (got as usize) < bytes {
            debug!(
                requested = bytes,
                got, "socket buffer clamped by the system maximum"
            );
        }
    }
}

/// Whether the kernel takes UDP_SEGMENT on this socket. The socket-wide default is reset
/// afterwards: sizes are given per message.
fn probe_gso(fd: &OwnedFd, mds: usize) -> bool {
    let size = libc::c_int::try_from(mds).unwrap_or(libc::c_int::MAX);
    if sys::set_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, size).is_err() {
        debug!("UDP GSO not supported");
        return false;
    }
    sys::set_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// Gives the received destination the family of the source (see the module docs).
fn rx_dst_ip(ip: IpAddr, src: &SocketAddr) -> IpAddr {
    match (ip, src) {
        (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpAddr::V6(v6), SocketAddr::V4(_)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    }
}

fn is_transient(err: &io::Error) -> bool {
    // ENOBUFS: a full device queue, like EAGAIN for our purpose.
    sys::is_would_block(err) || err.raw_os_error() == Some(libc::ENOBUFS)
}

impl Datapath for UdpDatapath {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn recv_batch(&mut self, on_datagram: &mut dyn FnMut(RxMeta, &mut [u8])) -> io::Result<usize> {
        let n = self.rx.recv(&self.fd)?;
        self.stats.rx_syscalls += 1;
        let mut delivered = 0;
        for i in 0..n {
            let r = self.rx.get(i);
            let src = match r.src {
                Some(src) if !r.truncated => src,
                _ => {
                    self.stats.rx_dropped += 1;
                    debug!(truncated = r.truncated, "dropping unreadable datagram");
                    continue;
                }
            };
            let ctl = cmsg::parse(r.control);
            let dst = ctl.dst_ip.map_or(self.local, |ip| {
                SocketAddr::new(rx_dst_ip(ip, &src), self.local.port())
            });
            let meta = RxMeta {
                src,
                dst,
                ecn: ctl.ecn,
            };
            self.stats.rx_bytes += r.data.len() as u64;
            let coalesced = ctl.gro_segment.is_some_and(|s| s < r.data.len());
            for datagram in rx::segments(r.data, ctl.gro_segment) {
                on_datagram(meta, datagram);
                delivered += 1;
                if coalesced {
                    self.stats.rx_gro_segments += 1;
                }
            }
        }
        self.stats.rx_datagrams += delivered as u64;
        Ok(delivered)
    }

    fn push_tx(&mut self, write: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>) -> bool {
        let Some(buf) = self.tx.acquire() else {
            return false;
        };
        let Some(meta) = write(self.tx.buf_mut(buf)) else {
            self.tx.release(buf);
            return true;
        };
        let dst = self.tx_addr(meta.dst);
        match dst {
            Some(dst)
                if meta.len > 0
                    && meta.len <= self.tx.buf_size()
                    && meta.segment_size != Some(0) =>
            {
                let segment = meta.segment_size.unwrap_or(meta.len);
                // A socket bound to one address sends from it; a wildcard one is told which
                // of the host's addresses the peer wrote to.
                let src = meta.src.filter(|_| self.local.ip().is_unspecified());
                self.tx
                    .enqueue(buf, (dst, src), meta.len, segment, meta.ecn);
            }
            _ => {
                self.tx.release(buf);
                self.stats.tx_dropped += 1;
                debug!(?meta, local = %self.local, "dropping unsendable transmit buffer");
            }
        }
        true
    }

    fn flush(&mut self) -> io::Result<usize> {
        let mut sent = 0;
        loop {
            let max_segments = if std::mem::take(&mut self.split_next) {
                1
            } else {
                self.caps.max_segments
            };
            self.tx.plan(self.batch, max_segments, &mut self.plan);
            let Some(&first) = self.plan.first() else {
                break;
            };
            self.stats.tx_syscalls += 1;
            match self.tx_scratch.send(&self.fd, &self.tx, &self.plan) {
                // The kernel took a prefix; the next round resends from the first one it
                // did not take (and learns that one's error, if any).
                Ok(k) if k > 0 => {
                    for i in 0..k {
                        let msg = self.plan[i];
                        sent += self.sent(&msg);
                    }
                }
                Ok(_) => break,
                Err(e) if is_transient(&e) => {
                    self.stats.tx_would_block += 1;
                    break;
                }
                Err(e)
                    if first.is_gso()
                        && e.raw_os_error() == Some(libc::EINVAL)
                        // Every path carries QUIC's smallest datagram size (RFC 9000 §14).
                        && first.segment > crate::conn::MIN_INITIAL_SIZE =>
                {
                    // Older kernels refuse a GSO segment above the interface MTU with
                    // EINVAL (newer ones with EMSGSIZE, handled below as a lost message).
                    // The link shrank under a size path MTU discovery had validated: resend
                    // this message split, so its datagrams fail alone (and are lost, as
                    // discovery expects), and keep GSO for the rest.
                    debug!(error = %e, segment = first.segment, "GSO segment above the MTU; splitting");
                    self.stats.tx_gso_split += 1;
                    self.split_next = true;
                }
                Err(e)
                    if first.is_gso()
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    // Some NICs/drivers refuse segmentation offload: fall back to one
                    // datagram per message and resend the same bytes split.
                    warn!(error = %e, local = %self.local, "UDP GSO send failed; disabling GSO");
                    self.caps.max_segments = 1;
                }
                Err(e) => {
                    // An error about this datagram only (unreachable, refused, too big):
                    // drop it rather than wedge the queue.
                    debug!(error = %e, dst = %first.dst, len = first.len, "dropping datagram on send error");
                    self.tx.complete(&first);
                    self.stats.tx_dropped += first.datagrams() as u64;
                }
            }
        }
        Ok(sent)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Also wake when the socket can take more, if a flush stopped on a full buffer.
        let mut events = libc::POLLIN;
        if self.tx.queued() > 0 {
            events |= libc::POLLOUT;
        }
        sys::poll(&self.fd, events, timeout)
    }

    /// A new socket on the same IP with a new ephemeral port, set up as this one was; the
    /// old socket closes. What the client's side of an active migration needs.
    fn rebind(&mut self) -> io::Result<()> {
        let fresh = UdpDatapath::bind(SocketAddr::new(self.local.ip(), 0), self.opts)?;
        *self = fresh;
        Ok(())
    }

    fn wait_or_wake(&mut self, timeout: Option<Duration>, wake: BorrowedFd<'_>) -> io::Result<()> {
        let mut events = libc::POLLIN;
        if self.tx.queued() > 0 {
            events |= libc::POLLOUT;
        }
        super::wake::poll_or_wake(self.fd.as_fd(), events, wake, timeout).map(drop)
    }
}

impl AsFd for UdpDatapath {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for UdpDatapath {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
