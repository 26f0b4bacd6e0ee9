//! UMEM: the packet memory shared with the kernel, cut into fixed-size frames, and the
//! ledger that knows where every frame is.
//!
//! A frame is always in exactly one place: a free list, the fill ring / kernel RX path,
//! a user-space handler (between RX and release), or the TX ring / kernel TX path. The
//! ledger records that place per frame and checks every move (`from` must match), so a
//! leak or a double hand-out shows up as a violation count (and a debug assertion) rather
//! than as corrupt packets later. Moves are single compare-exchanges on a byte per frame.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::if_xdp::xdp_umem_reg;
use super::mmap::Mapping;

/// Where a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameState {
    /// On a free list (a worker's cache or the group pool).
    Free = 0,
    /// Given to the kernel through the fill ring (or sitting in an RX ring).
    Fill = 1,
    /// Received and being handled in user space.
    Rx = 2,
    /// Being written, or in the TX ring / kernel until it shows up on completion.
    Tx = 3,
}

/// How many frames are in each place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCensus {
    pub free: u32,
    pub fill: u32,
    pub rx: u32,
    pub tx: u32,
}

impl FrameCensus {
    pub fn total(&self) -> u32 {
        self.free + self.fill + self.rx + self.tx
    }
}

/// Per-frame places, shared by the workers on one UMEM.
#[derive(Debug)]
pub struct FrameLedger {
    states: Box<[AtomicU8]>,
    frame_shift: u32,
    violations: AtomicU64,
}

impl FrameLedger {
    fn new(frames: u32, frame_size: u32) -> Self {
        FrameLedger {
            states: (0..frames)
                .map(|_| AtomicU8::new(FrameState::Free as u8))
                .collect(),
            frame_shift: frame_size.trailing_zeros(),
            violations: AtomicU64::new(0),
        }
    }

    /// Records that the frame at `base` moves `from` → `to`. Returns false (and counts a
    /// violation) if it was not where the caller believed.
    pub fn move_frame(&self, base: u64, from: FrameState, to: FrameState) -> bool {
        let ok = self
            .states
            .get((base >> self.frame_shift) as usize)
            .map(|s| {
                s.compare_exchange(from as u8, to as u8, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            })
            .unwrap_or(false);
        if !ok {
            self.violations.fetch_add(1, Ordering::Relaxed);
            tracing::error!(base, ?from, ?to, "UMEM frame accounting violation");
            debug_assert!(ok, "frame {base:#x} was not {from:?} (moving to {to:?})");
        }
        ok
    }

    /// Moves that found a frame somewhere other than expected (0 in a correct program).
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    pub fn census(&self) -> FrameCensus {
        let mut c = FrameCensus::default();
        for s in self.states.iter() {
            match s.load(Ordering::Relaxed) {
                0 => c.free += 1,
                1 => c.fill += 1,
                2 => c.rx += 1,
                _ => c.tx += 1,
            }
        }
        c
    }
}

/// The packet memory of one UMEM.
#[derive(Debug)]
pub struct Umem {
    area: Mapping,
    frame_size: u32,
    frames: u32,
    ledger: FrameLedger,
}

impl Umem {
    /// `frames` frames of `frame_size` bytes (a power of two, 2048..=4096 for the
    /// kernel's aligned mode), on huge pages when asked and available.
    pub fn new(frame_size: u32, frames: u32, huge_pages: bool) -> io::Result<Umem> {
        if !frame_size.is_power_of_two() || !(2048..=4096).contains(&frame_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame size must be 2048 or 4096",
            ));
        }
        if frames == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "UMEM needs at least one frame",
            ));
        }
        let len = frame_size as usize * frames as usize;
        Ok(Umem {
            area: Mapping::anon(len, huge_pages)?,
            frame_size,
            frames,
            ledger: FrameLedger::new(frames, frame_size),
        })
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn ledger(&self) -> &FrameLedger {
        &self.ledger
    }

    /// The XDP_UMEM_REG request describing this memory.
    pub fn registration(&self) -> xdp_umem_reg {
        xdp_umem_reg {
            addr: self.area.as_mut_ptr() as u64,
            len: self.area.len() as u64,
            chunk_size: self.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        }
    }

    /// Base address (UMEM offset) of every frame.
    pub fn frame_addrs(&self) -> impl Iterator<Item = u64> {
        let fs = u64::from(self.frame_size);
        (0..u64::from(self.frames)).map(move |i| i * fs)
    }

    /// The frame an address inside it belongs to (aligned mode: the kernel reports
    /// addresses with the packet's offset in the frame).
    pub fn frame_base(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }

    /// True when `addr..addr+len` lies inside one frame of this UMEM.
    pub fn contains(&self, addr: u64, len: usize) -> bool {
        let end = addr.saturating_add(len as u64);
        end <= self.area.len() as u64
            && self.frame_base(addr) == self.frame_base(end.saturating_sub(1).max(addr))
    }

    /// The bytes at `addr..addr+len`.
    ///
    /// # Safety
    /// `contains(addr, len)` must hold and the caller must own the frame (ledger state
    /// `Rx` or `Tx`, held by this caller) for the lifetime of the slice, so nothing else
    /// (kernel or another worker) touches those bytes meanwhile.
    // The memory is shared with the kernel, not owned through `&self`: exclusivity comes
    // from the frame ledger, which is what the contract above demands.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, addr: u64, len: usize) -> &mut [u8] {
        debug_assert!(self.contains(addr, len));
        // SAFETY: inside the mapping (contract) and exclusively owned (contract).
        unsafe { std::slice::from_raw_parts_mut(self.area.as_mut_ptr().add(addr as usize), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_catches_double_moves() {
        let l = FrameLedger::new(4, 2048);
        assert!(l.move_frame(2048, FrameState::Free, FrameState::Fill));
        assert_eq!(
            l.census(),
            FrameCensus {
                free: 3,
                fill: 1,
                rx: 0,
                tx: 0
            }
        );
        let r = std::panic::catch_unwind(|| l.move_frame(2048, FrameState::Free, FrameState::Tx));
        // Debug builds assert; release builds count. Either way it is recorded.
        assert!(r.is_err() || !r.unwrap());
        assert_eq!(l.violations(), 1);
    }

    #[test]
    fn umem_geometry() {
        assert!(Umem::new(3000, 4, false).is_err());
        assert!(Umem::new(2048, 0, false).is_err());
        let u = Umem::new(2048, 8, false).unwrap();
        assert_eq!(u.frame_addrs().collect::<Vec<_>>()[..3], [0, 2048, 4096]);
        assert_eq!(u.frame_base(4096 + 300), 4096);
        assert!(u.contains(4096 + 256, 1500));
        assert!(!u.contains(4096 + 1000, 1500));
        assert!(!u.contains(7 * 2048 + 100, 2000));
        assert_eq!(u.registration().chunk_size, 2048);
        // SAFETY: frame 1 is inside and owned by this test alone.
        let s = unsafe { u.slice_mut(2048, 16) };
        s.copy_from_slice(&[7; 16]);
        // SAFETY: same frame, previous borrow ended.
        assert_eq!(unsafe { u.slice_mut(2048, 16) }, &[7; 16]);
    }
}
