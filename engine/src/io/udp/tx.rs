//! Transmit side: a fixed pool of buffers, the FIFO of filled ones, and how the FIFO is cut
//! into `sendmmsg` messages. `TxPool` is pure bookkeeping (tested without sockets);
//! `TxScratch::send` is the one syscall.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use super::cmsg::{self, ControlBuf, TX_CONTROL_LEN};
use super::sys::{MmsgScratch, RawAddr};

/// A filled buffer waiting to be sent.
#[derive(Clone, Copy, Debug)]
struct Entry {
    buf: u32,
    dst: SocketAddr,
    /// Source address to send from (wildcard-bound sockets only).
    src: Option<IpAddr>,
    len: usize,
    /// Size of each datagram in the buffer but the last (`len` for a single datagram).
    segment: usize,
    ecn: u8,
    /// Bytes already handed to the kernel (always a multiple of `segment`).
    sent: usize,
}

/// One `sendmmsg` message: `len` bytes at `start` of buffer `buf`, cut into datagrams of
/// `segment` bytes (one datagram when `len <= segment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Msg {
    pub(super) buf: u32,
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) segment: usize,
    pub(super) dst: SocketAddr,
    pub(super) src: Option<IpAddr>,
    pub(super) ecn: u8,
}

impl Msg {
    pub(super) fn datagrams(&self) -> usize {
        self.len.div_ceil(self.segment)
    }

    /// Whether this message needs a UDP_SEGMENT control message.
    pub(super) fn is_gso(&self) -> bool {
        self.len > self.segment
    }
}

pub(super) struct TxPool {
    bufs: Box<[u8]>,
    buf_size: usize,
    free: Vec<u32>,
    queue: VecDeque<Entry>,
}

impl TxPool {
    pub(super) fn new(count: usize, buf_size: usize) -> Self {
        TxPool {
            bufs: vec![0u8; count * buf_size].into_boxed_slice(),
            buf_size,
            // Pop from the end, so hand out low indices first (warmer pages).
            free: (0..count as u32).rev().collect(),
            queue: VecDeque::with_capacity(count),
        }
    }

    pub(super) fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Buffers waiting to be sent.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn acquire(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns a buffer taken with `acquire` that was not queued.
    pub(super) fn release(&mut self, buf: u32) {
        self.free.push(buf);
    }

    pub(super) fn buf_mut(&mut self, buf: u32) -> &mut [u8] {
        let at = buf as usize * self.buf_size;
        &mut self.bufs[at..at + self.buf_size]
    }

    pub(super) fn buf(&self, buf: u32) -> &[u8] {
        let at = buf as usize * self.buf_size;
        &self.bufs[at..at + self.buf_size]
    }

    /// Queues `len` bytes of `buf` (0 < len <= buf_size, segment > 0, checked by the caller).
    pub(super) fn enqueue(
        &mut self,
        buf: u32,
        (dst, src): (SocketAddr, Option<IpAddr>),
        len: usize,
        segment: usize,
        ecn: u8,
    ) {
        let segment = segment.min(len);
        self.queue.push_back(Entry {
            buf,
            dst,
            src,
            len,
            segment,
            ecn,
            sent: 0,
        });
    }

    /// Cuts the front of the queue into at most `max_msgs` messages of at most
    /// `max_segments` datagrams each (1 = no GSO: every datagram its own message).
    pub(super) fn plan(&self, max_msgs: usize, max_segments: usize, out: &mut Vec<Msg>) {
        out.clear();
        let max_segments = max_segments.max(1);
        for e in &self.queue {
            let mut start = e.sent;
            while start < e.len {
                if out.len() >= max_msgs {
                    return;
                }
                let len = (e.len - start).min(e.segment.saturating_mul(max_segments));
                out.push(Msg {
                    buf: e.buf,
                    start,
                    len,
                    segment: e.segment,
                    dst: e.dst,
                    src: e.src,
                    ecn: e.ecn,
                });
                start += len;
            }
        }
    }

    /// Marks `msg`, which must be the first unsent part of the queue, as done (sent or
    /// dropped); recycles the buffer once all of it is done. Returns false (changing
    /// nothing) if `msg` is not the front of the queue.
    pub(super) fn complete(&mut self, msg: &Msg) -> bool {
        let Some(front) = self.queue.front_mut() else {
            return false;
        };
        if front.buf != msg.buf || front.sent != msg.start {
            return false;
        }
        front.sent += msg.len;
        if front.sent >= front.len {
            let buf = front.buf;
            self.queue.pop_front();
            self.free.push(buf);
        }
        true
    }
}

/// Per-message headers, addresses and control buffers for one `sendmmsg`.
pub(super) struct TxScratch {
    mmsg: MmsgScratch,
    names: Box<[RawAddr]>,
    controls: Box<[ControlBuf<TX_CONTROL_LEN>]>,
}

impl TxScratch {
    pub(super) fn new(batch: usize) -> Self {
        let unspecified = RawAddr::new(&SocketAddr::from(([0, 0, 0, 0], 0)));
        TxScratch {
            mmsg: MmsgScratch::new(batch),
            names: vec![unspecified; batch].into_boxed_slice(),
            controls: vec![ControlBuf::ZERO; batch].into_boxed_slice(),
        }
    }

    /// One `sendmmsg` of `msgs` (at most the scratch's batch) from `pool`'s buffers.
    /// Returns how many messages the kernel took; errors are those of the first message.
    pub(super) fn send(&mut self, fd: &OwnedFd, pool: &TxPool, msgs: &[Msg]) -> io::Result<usize> {
        let n = msgs.len().min(self.names.len());
        let slots = self.mmsg.hdrs.iter_mut().zip(self.mmsg.iovs.iter_mut());
        for (((hdr, iov), msg), (name, control)) in slots
            .zip(msgs)
            .zip(self.names.iter_mut().zip(self.controls.iter_mut()))
        {
            let data = &pool.buf(msg.buf)[msg.start..msg.start + msg.len];
            // The kernel only reads through iov_base on send.
            iov.iov_base = data.as_ptr().cast_mut().cast();
            iov.iov_len = data.len();
            name.set(&msg.dst);
            let mut w = cmsg::Writer::new(&mut control.0);
            if msg.is_gso() {
                // Segment sizes are bounded by the buffer size, itself < 64 KiB.
                let seg = u16::try_from(msg.segment).unwrap_or(u16::MAX);
                w.push(libc::SOL_UDP, libc::UDP_SEGMENT, &seg.to_ne_bytes());
            }
            // IPv4 (also v4-mapped on a dual-stack socket) takes the kernel's IPv4 path.
            let v4 = match msg.dst {
                SocketAddr::V4(_) => true,
                SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
            };
            if let Some(src) = msg.src {
                cmsg::push_source(&mut w, src, v4);
            }
            if msg.ecn != 0 {
                // IP_TOS on the IPv4 path, IPV6_TCLASS on IPv6. Both accept an int.
                let tos = libc::c_int::from(msg.ecn & 0b11);
                let (level, ty) = if v4 {
                    (libc::IPPROTO_IP, libc::IP_TOS)
                } else {
                    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
                };
                w.push(level, ty, &tos.to_ne_bytes());
            }
            let control_len = w.len();
            let m = &mut hdr.msg_hdr;
            m.msg_name = name.as_mut_ptr();
            m.msg_namelen = name.len();
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            m.msg_control = if control_len == 0 {
                std::ptr::null_mut()
            } else {
                control.0.as_mut_ptr().cast()
            };
            m.msg_controllen = control_len as _;
            m.msg_flags = 0;
            hdr.msg_len = 0;
        }
        loop {
            // SAFETY: the first `n` headers were pointed above at this scratch's own boxed
            // names, control buffers and iovecs (exclusively borrowed via `&mut self`) and at
            // slices of `pool`'s buffers (borrowed for the call; the kernel only reads them),
            // with the lengths of those regions.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.mmsg.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    0,
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn queue(pool: &mut TxPool, len: usize, segment: usize) -> u32 {
        let b = pool.acquire().unwrap();
        pool.enqueue(b, (dst(), None), len, segment, 0);
        b
    }

    #[test]
    fn plan_gso_and_split() {
        let mut pool = TxPool::new(4, 1000);
        let a = queue(&mut pool, 1000, 100); // 10 datagrams
        let b = queue(&mut pool, 50, 100); // 1 datagram, segment clamped to len
        let mut out = Vec::new();
        pool.plan(8, 64, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].buf, out[0].len, out[0].datagrams(), out[0].is_gso()),
            (a, 1000, 10, true)
        );
        assert_eq!(
            (out[1].buf, out[1].len, out[1].datagrams(), out[1].is_gso()),
            (b, 50, 1, false)
        );

        // Capped at 4 segments per message.
        pool.plan(8, 4, &mut out);
        let lens: Vec<_> = out.iter().map(|m| (m.start, m.len)).collect();
        assert_eq!(lens, [(0, 400), (400, 400), (800, 200), (0, 50)]);

        // No GSO, batch of 3: only the first three datagrams.
        pool.plan(3, 1, &mut out);
        assert_eq!(
            out.iter().map(|m| m.start).collect::<Vec<_>>(),
            [0, 100, 200]
        );
        assert!(out.iter().all(|m| !m.is_gso() && m.len == 100));
    }

    #[test]
    fn partial_completion_keeps_the_rest_in_order() {
        let mut pool = TxPool::new(2, 1000);
        let a = queue(&mut pool, 300, 100);
        let b = queue(&mut pool, 80, 80);
        assert!(pool.acquire().is_none(), "pool exhausted: back-pressure");
        let mut out = Vec::new();
        pool.plan(16, 1, &mut out);
        assert_eq!(out.len(), 4);
        // The kernel took two messages; the rest stays queued.
        assert!(pool.complete(&out[0]));
        assert!(pool.complete(&out[1]));
        assert_eq!(pool.queued(), 2);
        pool.plan(16, 1, &mut out);
        assert_eq!((out[0].buf, out[0].start, out.len()), (a, 200, 2));
        pool.complete(&out[0]);
        assert_eq!(pool.queued(), 1);
        assert_eq!(pool.acquire(), Some(a), "finished buffer recycled");
        pool.plan(16, 64, &mut out);
        assert_eq!((out[0].buf, out.len()), (b, 1));
        pool.complete(&out[0]);
        assert_eq!(pool.queued(), 0);
        pool.plan(16, 64, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn out_of_order_completion_is_refused() {
        let mut pool = TxPool::new(2, 100);
        let a = queue(&mut pool, 100, 100);
        let bogus = Msg {
            buf: a + 1,
            start: 0,
            len: 100,
            segment: 100,
            dst: dst(),
            src: None,
            ecn: 0,
        };
        assert!(!pool.complete(&bogus));
        assert_eq!(pool.queued(), 1);
        let late = Msg {
            buf: a,
            start: 100,
            ..bogus
        };
        assert!(!pool.complete(&late));
        assert!(pool.complete(&Msg { buf: a, ..bogus }));
        assert_eq!(pool.queued(), 0);
    }
}
