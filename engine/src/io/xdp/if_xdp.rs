//! The kernel's AF_XDP ABI (`linux/if_xdp.h`): structs and constants, re-exported from
//! `libc` under one roof so the rest of the module names them in one place.

pub use libc::{
    sockaddr_xdp, xdp_desc, xdp_mmap_offsets, xdp_ring_offset, xdp_statistics, xdp_umem_reg,
    SOL_XDP, XDP_COPY, XDP_MMAP_OFFSETS, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING,
    XDP_RING_NEED_WAKEUP, XDP_RX_RING, XDP_SHARED_UMEM, XDP_STATISTICS, XDP_TX_RING,
    XDP_UMEM_COMPLETION_RING, XDP_UMEM_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING,
    XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_REG, XDP_USE_NEED_WAKEUP, XDP_ZEROCOPY,
};

/// Address family of XDP sockets.
pub const AF_XDP: libc::c_int = libc::AF_XDP;

/// Headroom the kernel keeps in front of packets it writes into a UMEM frame in copy
/// mode (XDP_PACKET_HEADROOM); RX descriptors point past it.
pub const XDP_PACKET_HEADROOM: usize = 256;

/// An empty descriptor, for initialising buffers.
pub const fn empty_desc() -> xdp_desc {
    xdp_desc {
        addr: 0,
        len: 0,
        options: 0,
    }
}
