//! Memory mappings the AF_XDP layer lives in: the kernel's rings (mapped from the socket
//! at magic offsets) and anonymous memory (UMEM, and rings in tests without a kernel).
//! Both are held as `MmapRaw`: the memory is shared with the kernel (or a test's
//! simulated kernel), so it is only ever touched through raw pointers.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};

/// An owned mapping; unmapped on drop.
#[derive(Debug)]
pub struct Mapping(MmapRaw);

impl Mapping {
    /// Maps `len` bytes of a ring from an AF_XDP socket at page offset `offset`.
    pub fn ring(fd: &OwnedFd, offset: u64, len: usize) -> io::Result<Mapping> {
        MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map_raw(fd.as_raw_fd())
            .map(Mapping)
    }

    /// Anonymous zeroed memory, on 2 MiB huge pages when asked and available.
    pub fn anon(len: usize, huge_pages: bool) -> io::Result<Mapping> {
        if huge_pages && len & ((2 << 20) - 1) == 0 {
            match MmapOptions::new()
                .len(len)
                .huge(Some(21))
                .populate()
                .map_anon()
            {
                Ok(m) => return Ok(Mapping(m.into())),
                Err(e) => {
                    tracing::debug!("huge pages unavailable for UMEM ({e}); using 4 KiB pages")
                }
            }
        }
        MmapOptions::new()
            .len(len)
            .populate()
            .map_anon()
            .map(|m| Mapping(m.into()))
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.0.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}
