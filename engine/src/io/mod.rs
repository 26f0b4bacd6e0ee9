//! Datapaths: where datagrams come from and go to. Nothing here knows about connections;
//! only `worker` sees both sides.
//!
//! The shape follows the in-place style of s2n-quic's IO traits: receive hands each
//! datagram to a closure as `&mut [u8]` (so the engine decrypts in place, in the UMEM frame
//! on the XDP path), and transmit gives a closure the buffer to write into (so a
//! connection encrypts straight into a TX frame).

pub mod mem;
pub mod udp;
pub mod wake;
#[cfg(feature = "xdp")]
pub mod xdp;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// Longest sleep of a datapath that cannot be woken by another worker (`wait_or_wake`).
pub const WAKE_POLL: Duration = Duration::from_millis(2);

/// What the datapath knows about a received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxMeta {
    /// Who sent it.
    pub src: SocketAddr,
    /// The local address it was sent to (the socket's, or from IP_PKTINFO / the IP header).
    pub dst: SocketAddr,
    /// ECN codepoint from the IP header (0 = not-ECT).
    pub ecn: u8,
}

/// Where and how to send a buffer written by a transmit closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxMeta {
    pub dst: SocketAddr,
    /// The local address to send from: the one the peer's datagrams arrived at, so that a
    /// socket bound to a wildcard address on a host with several (VIPs, secondary
    /// addresses) answers from the address the peer expects. `None`: the datapath's choice.
    pub src: Option<IpAddr>,
    /// Bytes written into the buffer.
    pub len: usize,
    /// If `len` holds several datagrams back to back, the size of each but the last
    /// (UDP GSO). `None` means one datagram.
    pub segment_size: Option<usize>,
    /// ECN codepoint to set (0 = not-ECT).
    pub ecn: u8,
}

/// What a datapath can do, so the engine can size its writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Most datagrams one transmit buffer may hold (1 without GSO).
    pub max_segments: usize,
    /// Largest UDP payload one datagram may carry.
    pub max_datagram_size: usize,
    /// Largest UDP payload a received datagram may have and still arrive whole; the
    /// engine advertises no more as max_udp_payload_size (RFC 9000 §18.2).
    pub max_receive_payload: usize,
}

/// A source and sink of UDP datagrams for one worker.
pub trait Datapath {
    /// The address datagrams are received on.
    fn local_addr(&self) -> SocketAddr;

    fn capabilities(&self) -> Capabilities;

    /// Receives what is ready now (up to one batch, without blocking) and hands each
    /// datagram to `on_datagram`. GRO super-datagrams are split before the call. Returns the
    /// number of datagrams delivered.
    fn recv_batch(
        &mut self,
        on_datagram: &mut dyn FnMut(RxMeta, &mut [u8]),
    ) -> std::io::Result<usize>;

    /// `recv_batch` for the engine: `on_datagram` also answers whether the datagram
    /// authenticated as a packet of a connection whose peer is at its source address.
    /// A datapath that learns per-peer link state from what it receives (AF_XDP: the
    /// MAC address replies go to) lets only such datagrams change what it learnt, so a
    /// spoofed source cannot redirect an established peer's traffic.
    fn recv_batch_vouched(
        &mut self,
        on_datagram: &mut dyn FnMut(RxMeta, &mut [u8]) -> bool,
    ) -> std::io::Result<usize> {
        self.recv_batch(&mut |meta, buf| {
            on_datagram(meta, buf);
        })
    }

    /// Offers a transmit buffer of `capabilities().max_segments * max_datagram_size` bytes
    /// (at least) to `write`; if `write` returns `Some`, the datagram(s) are queued. Returns
    /// false without calling `write` when no buffer is free (back-pressure: flush and retry).
    fn push_tx(&mut self, write: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>) -> bool;

    /// Hands queued datagrams to the kernel / NIC. Returns how many were sent; those not
    /// sent stay queued.
    fn flush(&mut self) -> std::io::Result<usize>;

    /// Blocks until a datagram may be ready to receive or `timeout` passes.
    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()>;

    /// Moves to a new local address (a new socket on a new port), for a client migrating
    /// on purpose (`Connection::migrate`). Datapaths that cannot say so.
    fn rebind(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this datapath cannot move to a new local address",
        ))
    }

    /// `wait` that also returns when `wake` (another worker's signal that it queued a
    /// datagram for this one, see `wake::Wakers`) becomes readable. A datapath that cannot
    /// watch a second descriptor sleeps at most [`WAKE_POLL`] instead.
    fn wait_or_wake(
        &mut self,
        timeout: Option<Duration>,
        wake: BorrowedFd<'_>,
    ) -> std::io::Result<()> {
        let _ = wake;
        self.wait(Some(timeout.map_or(WAKE_POLL, |t| t.min(WAKE_POLL))))
    }
}
