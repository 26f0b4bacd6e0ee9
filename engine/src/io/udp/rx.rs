//! Receive side: preallocated buffers, source-address slots and control buffers for one
//! `recvmmsg` batch, and the GRO split.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::cmsg::{ControlBuf, RX_CONTROL_LEN};
use super::sys::{self, MmsgScratch};

/// Every receive buffer holds the largest possible UDP payload, so a datagram (or a GRO
/// super-datagram, which the kernel caps at 64 KiB) is never truncated.
pub(super) const RX_BUF_SIZE: usize = 1 << 16;

/// One received (super-)datagram, borrowed from the ring.
pub(super) struct Received<'a> {
    pub(super) data: &'a mut [u8],
    pub(super) src: Option<std::net::SocketAddr>,
    pub(super) control: &'a [u8],
    pub(super) truncated: bool,
}

pub(super) struct RxRing {
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[ControlBuf<RX_CONTROL_LEN>]>,
    scratch: MmsgScratch,
}

impl RxRing {
    pub(super) fn new(batch: usize) -> Self {
        RxRing {
            bufs: vec![0u8; batch * RX_BUF_SIZE].into_boxed_slice(),
            names: vec![sys::zeroed_storage(); batch].into_boxed_slice(),
            controls: vec![ControlBuf::ZERO; batch].into_boxed_slice(),
            scratch: MmsgScratch::new(batch),
        }
    }

    /// One non-blocking `recvmmsg` into the ring. Returns how many messages arrived (0 when
    /// nothing is ready).
    pub(super) fn recv(&mut self, fd: &OwnedFd) -> io::Result<usize> {
        let n = self.names.len();
        let bufs = self.bufs.chunks_exact_mut(RX_BUF_SIZE);
        let slots = self
            .scratch
            .hdrs
            .iter_mut()
            .zip(self.scratch.iovs.iter_mut());
        for (((hdr, iov), buf), (name, control)) in slots
            .zip(bufs)
            .zip(self.names.iter_mut().zip(self.controls.iter_mut()))
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            let m = &mut hdr.msg_hdr;
            m.msg_name = (name as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            m.msg_control = control.0.as_mut_ptr().cast();
            m.msg_controllen = RX_CONTROL_LEN as _;
            m.msg_flags = 0;
            hdr.msg_len = 0;
        }
        loop {
            // SAFETY: each of the `n` headers was pointed above at this ring's own buffer,
            // name slot, control buffer and iovec, all boxed (stable addresses), exclusively
            // borrowed through `&mut self` for the whole call, and sized as declared.
            let rc = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.scratch.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                _ if sys::is_would_block(&err) => return Ok(0),
                _ => return Err(err),
            }
        }
    }

    /// Message `i` of the last `recv`.
    pub(super) fn get(&mut self, i: usize) -> Received<'_> {
        let hdr = &self.scratch.hdrs[i];
        let len = (hdr.msg_len as usize).min(RX_BUF_SIZE);
        // `msg_controllen` is size_t on glibc but socklen_t elsewhere.
        #[allow(clippy::unnecessary_cast)]
        let ctl_len = (hdr.msg_hdr.msg_controllen as usize).min(RX_CONTROL_LEN);
        let flags = hdr.msg_hdr.msg_flags;
        let src = sys::from_storage(&self.names[i], hdr.msg_hdr.msg_namelen);
        Received {
            data: &mut self.bufs[i * RX_BUF_SIZE..i * RX_BUF_SIZE + len],
            src,
            control: &self.controls[i].0[..ctl_len],
            truncated: flags & libc::MSG_TRUNC != 0,
        }
    }
}

/// Splits a GRO super-datagram into its datagrams: `stride` bytes each, the last possibly
/// shorter. A zero stride (or none) yields the buffer as one datagram.
pub(super) fn segments(buf: &mut [u8], stride: Option<usize>) -> std::slice::ChunksMut<'_, u8> {
    let stride = stride.filter(|&s| s > 0).unwrap_or(buf.len().max(1));
    buf.chunks_mut(stride)
}

#[cfg(test)]
mod tests {
    use super::super::cmsg;
    use super::*;

    #[test]
    fn gro_split_sizes() {
        let mut buf: Vec<u8> = (0..250u8).collect();
        let sizes: Vec<usize> = segments(&mut buf, Some(100)).map(|s| s.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let firsts: Vec<u8> = segments(&mut buf, Some(100)).map(|s| s[0]).collect();
        assert_eq!(firsts, [0, 100, 200]);
        assert_eq!(segments(&mut buf, None).count(), 1);
        assert_eq!(segments(&mut buf, Some(0)).count(), 1);
        assert_eq!(segments(&mut buf, Some(250)).count(), 1);
        assert_eq!(segments(&mut [], Some(100)).count(), 0);
    }

    #[test]
    fn fresh_ring_slot_is_empty() {
        // The control view of a fresh ring parses to nothing.
        let mut ring = RxRing::new(1);
        let r = ring.get(0);
        assert_eq!(cmsg::parse(r.control), cmsg::RxControl::default());
        assert!(r.data.is_empty());
    }
}
