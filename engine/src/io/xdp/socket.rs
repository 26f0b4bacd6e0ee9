//! AF_XDP sockets: creation, ring setup, bind (zero-copy with fallback to copy mode, or
//! joining another socket's UMEM on the same queue).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::if_xdp::{
    xdp_desc, XDP_COPY, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING, XDP_RX_RING, XDP_SHARED_UMEM,
    XDP_TX_RING, XDP_UMEM_COMPLETION_RING, XDP_UMEM_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING,
    XDP_UMEM_PGOFF_FILL_RING, XDP_USE_NEED_WAKEUP, XDP_ZEROCOPY,
};
use super::ring::{consumer_from_socket, producer_from_socket, ConsumerRing, ProducerRing};
use super::syscall;
use super::umem::Umem;

/// Whether to ask for zero-copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZeroCopy {
    /// Try zero-copy, fall back to copy mode with a log line.
    #[default]
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode.
    Off,
}

/// How a socket ended up bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    ZeroCopy,
    Copy,
    /// Joined another socket's UMEM (mode inherited from it).
    Shared,
}

/// Ring sizes (entries, powers of two).
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

/// The fill and completion rings of one UMEM on one queue.
pub struct FillCompletion {
    pub fill: ProducerRing<u64>,
    pub completion: ConsumerRing<u64>,
}

/// One bound AF_XDP socket with its RX and TX rings.
pub struct XdpSocket {
    fd: OwnedFd,
    pub rx: ConsumerRing<xdp_desc>,
    pub tx: ProducerRing<xdp_desc>,
    mode: BindMode,
    queue: u32,
}

fn ctx(what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn map_rx_tx(
    fd: &OwnedFd,
    sizes: RingSizes,
) -> io::Result<(ConsumerRing<xdp_desc>, ProducerRing<xdp_desc>)> {
    syscall::set_ring_size(fd, XDP_RX_RING, sizes.rx).map_err(ctx("XDP_RX_RING"))?;
    syscall::set_ring_size(fd, XDP_TX_RING, sizes.tx).map_err(ctx("XDP_TX_RING"))?;
    let off = syscall::mmap_offsets(fd).map_err(ctx("XDP_MMAP_OFFSETS"))?;
    let rx = consumer_from_socket(fd, XDP_PGOFF_RX_RING as u64, off.rx.into(), sizes.rx)
        .map_err(ctx("mmap RX ring"))?;
    let tx = producer_from_socket(fd, XDP_PGOFF_TX_RING as u64, off.tx.into(), sizes.tx)
        .map_err(ctx("mmap TX ring"))?;
    Ok((rx, tx))
}

impl XdpSocket {
    /// A socket owning `umem` on (`ifindex`, `queue`), with the UMEM's fill and completion
    /// rings. Tries zero-copy per `zero_copy`, else copy mode.
    pub fn bind_primary(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        zero_copy: ZeroCopy,
    ) -> io::Result<(XdpSocket, FillCompletion)> {
        if zero_copy != ZeroCopy::Off {
            match Self::try_primary(
                umem,
                ifindex,
                queue,
                sizes,
                XDP_ZEROCOPY | XDP_USE_NEED_WAKEUP,
            ) {
                Ok((s, fc)) => {
                    return Ok((
                        XdpSocket {
                            mode: BindMode::ZeroCopy,
                            ..s
                        },
                        fc,
                    ))
                }
                Err(e) if zero_copy == ZeroCopy::On => return Err(e),
                Err(e) => tracing::info!(
                    ifindex,
                    queue,
                    "AF_XDP zero-copy unavailable ({e}); using copy mode"
                ),
            }
        }
        // A failed bind may leave the UMEM half-attached: start over on a fresh socket.
        Self::try_primary(umem, ifindex, queue, sizes, XDP_COPY | XDP_USE_NEED_WAKEUP)
    }

    fn try_primary(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
        flags: u16,
    ) -> io::Result<(XdpSocket, FillCompletion)> {
        let fd = syscall::xdp_socket().map_err(ctx("socket(AF_XDP)"))?;
        syscall::register_umem(&fd, &umem.registration()).map_err(ctx("XDP_UMEM_REG"))?;
        syscall::set_ring_size(&fd, XDP_UMEM_FILL_RING, sizes.fill)
            .map_err(ctx("XDP_UMEM_FILL_RING"))?;
        syscall::set_ring_size(&fd, XDP_UMEM_COMPLETION_RING, sizes.completion)
            .map_err(ctx("XDP_UMEM_COMPLETION_RING"))?;
        let (rx, tx) = map_rx_tx(&fd, sizes)?;
        let off = syscall::mmap_offsets(&fd).map_err(ctx("XDP_MMAP_OFFSETS"))?;
        let fill = producer_from_socket(&fd, XDP_UMEM_PGOFF_FILL_RING, off.fr.into(), sizes.fill)
            .map_err(ctx("mmap fill ring"))?;
        let completion = consumer_from_socket(
            &fd,
            XDP_UMEM_PGOFF_COMPLETION_RING,
            off.cr.into(),
            sizes.completion,
        )
        .map_err(ctx("mmap completion ring"))?;
        syscall::bind(&fd, ifindex, queue, flags, None).map_err(ctx("bind(AF_XDP)"))?;
        Ok((
            XdpSocket {
                fd,
                rx,
                tx,
                mode: BindMode::Copy,
                queue,
            },
            FillCompletion { fill, completion },
        ))
    }

    /// A further socket on the same queue sharing `primary`'s UMEM (and its fill and
    /// completion rings). Its bind flags must carry neither XDP_COPY nor
    /// XDP_USE_NEED_WAKEUP (EINVAL): the mode is inherited.
    pub fn bind_shared(
        primary: &XdpSocket,
        ifindex: u32,
        sizes: RingSizes,
    ) -> io::Result<XdpSocket> {
        let fd = syscall::xdp_socket().map_err(ctx("socket(AF_XDP)"))?;
        let (rx, tx) = map_rx_tx(&fd, sizes)?;
        syscall::bind(
            &fd,
            ifindex,
            primary.queue,
            XDP_SHARED_UMEM,
            Some(primary.fd.as_raw_fd()),
        )
        .map_err(ctx("bind(AF_XDP, XDP_SHARED_UMEM)"))?;
        Ok(XdpSocket {
            fd,
            rx,
            tx,
            mode: BindMode::Shared,
            queue: primary.queue,
        })
    }

    /// An unbound socket with a registered UMEM and an RX ring: enough for the kernel to
    /// accept it into an XSKMAP (used by BPF tests; it never receives).
    pub fn unbound_for_map(umem: &Umem, sizes: RingSizes) -> io::Result<OwnedFd> {
        let fd = syscall::xdp_socket().map_err(ctx("socket(AF_XDP)"))?;
        syscall::register_umem(&fd, &umem.registration()).map_err(ctx("XDP_UMEM_REG"))?;
        syscall::set_ring_size(&fd, XDP_UMEM_FILL_RING, sizes.fill)
            .map_err(ctx("XDP_UMEM_FILL_RING"))?;
        syscall::set_ring_size(&fd, XDP_UMEM_COMPLETION_RING, sizes.completion)
            .map_err(ctx("XDP_UMEM_COMPLETION_RING"))?;
        syscall::set_ring_size(&fd, XDP_RX_RING, sizes.rx).map_err(ctx("XDP_RX_RING"))?;
        Ok(fd)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn borrowed_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }
}
