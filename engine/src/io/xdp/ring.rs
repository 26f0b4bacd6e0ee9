//! The four single-producer/single-consumer rings AF_XDP shares with the kernel.
//!
//! Each ring is a power-of-two array of descriptors plus a producer index, a consumer
//! index and a flags word, all in memory mapped from the socket. The side that produces
//! writes descriptors, then publishes the producer index with Release; the side that
//! consumes loads the producer index with Acquire, reads, then publishes its consumer
//! index with Release. Indices run freely and wrap at 2^32; `index & mask` is the slot.
//!
//! We produce on the fill and TX rings ([`ProducerRing`]) and consume on the RX and
//! completion rings ([`ConsumerRing`]). Both cache the other side's index and only touch
//! the shared cache line when the cached view runs out.

use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::if_xdp::{xdp_ring_offset, XDP_RING_NEED_WAKEUP};
use super::mmap::Mapping;

/// Where a ring's parts sit inside its mapping, in bytes (the kernel's
/// `xdp_ring_offset`).
#[derive(Clone, Copy, Debug)]
pub struct RingOffsets {
    pub producer: u64,
    pub consumer: u64,
    pub flags: u64,
    pub desc: u64,
}

impl From<xdp_ring_offset> for RingOffsets {
    fn from(o: xdp_ring_offset) -> Self {
        RingOffsets {
            producer: o.producer,
            consumer: o.consumer,
            flags: o.flags,
            desc: o.desc,
        }
    }
}

/// Pointers into one mapped ring.
struct RingMem<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    size: u32,
    mask: u32,
    /// Keeps the memory mapped (shared by both ends in kernel-less tests).
    _map: Arc<Mapping>,
    _t: PhantomData<T>,
}

// SAFETY: the pointers target memory owned by `_map`, which moves with the ring; each
// ring end is used by one thread at a time (it is not Sync) and synchronises with the
// other end only through the atomics.
unsafe impl<T: Send> Send for RingMem<T> {}

impl<T: Copy> RingMem<T> {
    fn new(map: Arc<Mapping>, off: RingOffsets, size: u32) -> io::Result<Self> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("ring layout: {what}"));
        if size == 0 || !size.is_power_of_two() {
            return Err(bad("size is not a power of two"));
        }
        let len = map.len() as u64;
        for (name, o) in [
            ("producer", off.producer),
            ("consumer", off.consumer),
            ("flags", off.flags),
        ] {
            if o & 3 != 0 || o + 4 > len {
                return Err(bad(name));
            }
        }
        let desc_bytes = u64::from(size) * size_of::<T>() as u64;
        if off.desc & (std::mem::align_of::<T>() as u64 - 1) != 0 || off.desc + desc_bytes > len {
            return Err(bad("descriptors"));
        }
        let base = map.as_mut_ptr();
        // SAFETY: every offset was checked to lie inside the mapping and be aligned.
        let (producer, consumer, flags, descs) = unsafe {
            (
                base.add(off.producer as usize) as *const AtomicU32,
                base.add(off.consumer as usize) as *const AtomicU32,
                base.add(off.flags as usize) as *const AtomicU32,
                base.add(off.desc as usize) as *mut T,
            )
        };
        Ok(RingMem {
            producer,
            consumer,
            flags,
            descs,
            size,
            mask: size - 1,
            _map: map,
            _t: PhantomData,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: checked in `new`: aligned, inside the live mapping.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.flags }
    }

    fn write(&mut self, idx: u32, v: T) {
        // SAFETY: `idx & mask < size`, inside the checked descriptor array; the slot is
        // ours (between the consumer's index and ours) until we publish it.
        unsafe { self.descs.add((idx & self.mask) as usize).write_volatile(v) }
    }

    fn read(&self, idx: u32) -> T {
        // SAFETY: `idx & mask < size`; the producer published this slot (Acquire load
        // of its index happened before) and will not reuse it until we release it.
        unsafe { self.descs.add((idx & self.mask) as usize).read_volatile() }
    }
}

/// Our producing end: fill ring (`u64` frame addresses) and TX ring (`xdp_desc`).
pub struct ProducerRing<T> {
    mem: RingMem<T>,
    /// Next index we write.
    cached_prod: u32,
    /// Last consumer index we saw.
    cached_cons: u32,
    /// Producer index the other side can see.
    published: u32,
}

impl<T: Copy> ProducerRing<T> {
    fn new(mem: RingMem<T>) -> Self {
        let prod = mem.producer().load(Ordering::Relaxed);
        let cons = mem.consumer().load(Ordering::Acquire);
        ProducerRing {
            mem,
            cached_prod: prod,
            cached_cons: cons,
            published: prod,
        }
    }

    pub fn size(&self) -> u32 {
        self.mem.size
    }

    /// Free slots, refreshing the consumer's index only if fewer than `want` are known.
    pub fn free(&mut self, want: u32) -> u32 {
        let mut free = self.mem.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            self.cached_cons = self.mem.consumer().load(Ordering::Acquire);
            free = self.mem.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        free
    }

    /// Writes one entry (not yet visible to the consumer). False when full.
    pub fn push(&mut self, v: T) -> bool {
        if self.free(1) == 0 {
            return false;
        }
        self.mem.write(self.cached_prod, v);
        self.cached_prod = self.cached_prod.wrapping_add(1);
        true
    }

    /// Entries pushed but not yet published.
    pub fn unpublished(&self) -> u32 {
        self.cached_prod.wrapping_sub(self.published)
    }

    /// Makes pushed entries visible to the consumer; returns how many.
    pub fn publish(&mut self) -> u32 {
        let n = self.unpublished();
        if n > 0 {
            self.mem
                .producer()
                .store(self.cached_prod, Ordering::Release);
            self.published = self.cached_prod;
        }
        n
    }

    /// Published entries the consumer has not taken yet.
    pub fn outstanding(&mut self) -> u32 {
        self.cached_cons = self.mem.consumer().load(Ordering::Acquire);
        self.published.wrapping_sub(self.cached_cons)
    }

    /// The kernel asks for a syscall to notice new entries (XDP_USE_NEED_WAKEUP).
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// Our consuming end: RX ring (`xdp_desc`) and completion ring (`u64`).
pub struct ConsumerRing<T> {
    mem: RingMem<T>,
    /// Last producer index we saw.
    cached_prod: u32,
    /// Next index we read.
    cached_cons: u32,
}

impl<T: Copy> ConsumerRing<T> {
    fn new(mem: RingMem<T>) -> Self {
        let cons = mem.consumer().load(Ordering::Relaxed);
        let prod = mem.producer().load(Ordering::Acquire);
        ConsumerRing {
            mem,
            cached_prod: prod,
            cached_cons: cons,
        }
    }

    pub fn size(&self) -> u32 {
        self.mem.size
    }

    /// Entries ready to read, up to `want`, refreshing the producer's index only if the
    /// cached view has fewer.
    pub fn available(&mut self, want: u32) -> u32 {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail < want {
            self.cached_prod = self.mem.producer().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        avail.min(want)
    }

    /// The `i`-th ready entry; `i` must be below what [`available`](Self::available)
    /// returned. Checked in release builds too: `read`'s safety rests on it (a slot past
    /// the producer may be under the kernel's pen), and it costs one compare.
    pub fn get(&self, i: u32) -> T {
        assert!(i < self.cached_prod.wrapping_sub(self.cached_cons));
        self.mem.read(self.cached_cons.wrapping_add(i))
    }

    /// Hands `n` read entries back to the producer. Checked in release builds too: a
    /// consumer index past the producer's would corrupt the kernel's view of the ring.
    pub fn release(&mut self, n: u32) {
        assert!(n <= self.cached_prod.wrapping_sub(self.cached_cons));
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.mem
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }

    /// One entry, released at once (convenience for slow paths and tests).
    pub fn pop(&mut self) -> Option<T> {
        if self.available(1) == 0 {
            return None;
        }
        let v = self.get(0);
        self.release(1);
        Some(v)
    }

    /// The kernel asks for a syscall (XDP_USE_NEED_WAKEUP).
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }
}

/// Maps one ring of `size` entries of `T` from an AF_XDP socket.
fn map_socket_ring<T: Copy>(
    fd: &OwnedFd,
    pgoff: u64,
    off: RingOffsets,
    size: u32,
) -> io::Result<RingMem<T>> {
    let len = off.desc as usize + size as usize * size_of::<T>();
    let map = Arc::new(Mapping::ring(fd, pgoff, len)?);
    RingMem::new(map, off, size)
}

pub fn producer_from_socket<T: Copy>(
    fd: &OwnedFd,
    pgoff: u64,
    off: RingOffsets,
    size: u32,
) -> io::Result<ProducerRing<T>> {
    map_socket_ring(fd, pgoff, off, size).map(ProducerRing::new)
}

pub fn consumer_from_socket<T: Copy>(
    fd: &OwnedFd,
    pgoff: u64,
    off: RingOffsets,
    size: u32,
) -> io::Result<ConsumerRing<T>> {
    map_socket_ring(fd, pgoff, off, size).map(ConsumerRing::new)
}

/// Both ends of one ring over anonymous memory: for tests and benchmarks of the ring
/// protocol without a kernel (the consumer stands in for the kernel, or vice versa).
pub fn anon_pair<T: Copy>(size: u32) -> io::Result<(ProducerRing<T>, ConsumerRing<T>)> {
    let off = RingOffsets {
        producer: 0,
        consumer: 64,
        flags: 128,
        desc: 192,
    };
    let len = 192 + size as usize * size_of::<T>();
    let map = Arc::new(Mapping::anon(len, false)?);
    let p = RingMem::new(map.clone(), off, size)?;
    let c = RingMem::new(map, off, size)?;
    Ok((ProducerRing::new(p), ConsumerRing::new(c)))
}

/// Sets or clears the need-wakeup flag of an anonymous ring (tests play the kernel).
pub fn set_anon_need_wakeup<T: Copy>(ring: &ProducerRing<T>, on: bool) {
    let f = ring.mem.flags();
    if on {
        f.fetch_or(XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
    } else {
        f.fetch_and(!XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::if_xdp::xdp_desc;
    use super::*;

    #[test]
    fn rejects_bad_layouts() {
        assert!(anon_pair::<u64>(6).is_err());
        let map = Arc::new(Mapping::anon(4096, false).unwrap());
        let off = RingOffsets {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        assert!(RingMem::<u64>::new(map.clone(), off, 1024).is_err());
        assert!(RingMem::<u64>::new(map.clone(), RingOffsets { producer: 2, ..off }, 8).is_err());
        assert!(RingMem::<u64>::new(map, off, 8).is_ok());
    }

    #[test]
    fn wraparound_many_descriptors() {
        // A small ring so indices wrap the slot array thousands of times.
        let (mut p, mut c) = anon_pair::<xdp_desc>(64).unwrap();
        let total: u64 = 100_000;
        let (mut sent, mut received) = (0u64, 0u64);
        let mut step = 1u32;
        while received < total {
            // Produce a varying batch, publish, then consume a different batch size.
            let mut pushed = 0;
            while pushed < step && sent < total {
                let d = xdp_desc {
                    addr: sent * 4096,
                    len: (sent % 1500) as u32,
                    options: 0,
                };
                if !p.push(d) {
                    break;
                }
                sent += 1;
                pushed += 1;
            }
            assert_eq!(p.unpublished(), pushed);
            p.publish();
            let n = c.available(step.wrapping_mul(7) % 50 + 1);
            for i in 0..n {
                let d = c.get(i);
                assert_eq!(d.addr, (received + u64::from(i)) * 4096);
                assert_eq!(d.len, ((received + u64::from(i)) % 1500) as u32);
            }
            c.release(n);
            received += u64::from(n);
            step = step % 63 + 1;
        }
        assert_eq!(sent, total);
        assert_eq!(p.outstanding(), 0);
        assert_eq!(c.available(1), 0);
    }

    #[test]
    fn full_ring_refuses_and_publishes_only_on_request() {
        let (mut p, mut c) = anon_pair::<u64>(8).unwrap();
        for i in 0..8 {
            assert!(p.push(i));
        }
        assert!(!p.push(99));
        assert_eq!(p.free(1), 0);
        // Nothing visible before publish.
        assert_eq!(c.available(8), 0);
        assert_eq!(p.publish(), 8);
        assert_eq!(p.outstanding(), 8);
        assert_eq!(c.pop(), Some(0));
        assert_eq!(c.pop(), Some(1));
        assert!(p.push(8));
        assert!(p.push(9));
        assert!(!p.push(10));
        p.publish();
        let got: Vec<u64> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(got, (2..10).collect::<Vec<_>>());
    }

    #[test]
    fn index_wrap_at_u32_max() {
        let (p, mut c) = anon_pair::<u64>(16).unwrap();
        // Start both ends just below the u32 wrap, as a long-running ring would be.
        let start = u32::MAX - 5;
        p.mem.producer().store(start, Ordering::Relaxed);
        p.mem.consumer().store(start, Ordering::Relaxed);
        let mut p = ProducerRing::new(p.mem);
        let mut c2 = ConsumerRing::new(c.mem);
        for round in 0..100u64 {
            for i in 0..10 {
                assert!(p.push(round * 10 + i));
            }
            p.publish();
            assert_eq!(c2.available(16), 10);
            for i in 0..10 {
                assert_eq!(c2.get(i), round * 10 + u64::from(i));
            }
            c2.release(10);
        }
        c = c2;
        assert_eq!(c.available(1), 0);
    }

    #[test]
    fn need_wakeup_flag() {
        let (p, c) = anon_pair::<u64>(8).unwrap();
        assert!(!p.needs_wakeup());
        set_anon_need_wakeup(&p, true);
        assert!(p.needs_wakeup() && c.needs_wakeup());
        set_anon_need_wakeup(&p, false);
        assert!(!c.needs_wakeup());
    }
}
