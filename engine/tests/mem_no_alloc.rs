//! Steady-state datagram traffic through the in-memory pair (and the UDP datapath)
//! allocates nothing: a counting global allocator watches the hot loop.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use quench::io::mem::{pair, pair_with, Impairments, MemOptions};
use quench::io::udp::{UdpDatapath, UdpOptions};
use quench::io::{Datapath, TxMeta};

struct Counting;

thread_local! {
    // Per thread, so tests running in parallel (and the harness) add no noise. Const
    // initialisers: touching these never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.with(|c| c.get()) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards every call unchanged to the system allocator; the counter has no effect
// on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(|n| n.get());
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(|n| n.get()) - before
}

/// One round: a batch of datagrams from `a` to `b`, then `b` drains (waiting for all `n`
/// if `lossless`). Returns datagrams received and a checksum of their bytes.
fn round(
    a: &mut dyn Datapath,
    b: &mut dyn Datapath,
    dst: SocketAddr,
    n: usize,
    segment: Option<usize>,
    lossless: bool,
) -> (usize, u64) {
    for i in 0..n {
        let pushed = a.push_tx(&mut |buf: &mut [u8]| {
            let len = segment.map_or(100 + i * 37 % 1000, |s| 3 * s + 10);
            buf[..len].fill(i as u8);
            Some(TxMeta {
                dst,
                src: None,
                len,
                segment_size: segment,
                ecn: (i % 4) as u8,
            })
        });
        assert!(pushed);
    }
    a.flush().unwrap();
    let (mut got, mut sum) = (0, 0u64);
    for _ in 0..100 {
        let k = b
            .recv_batch(&mut |_, d| {
                got += 1;
                sum = sum.wrapping_add(d.iter().map(|&x| u64::from(x)).sum::<u64>());
            })
            .unwrap();
        if got >= n || (k == 0 && !lossless) {
            break;
        }
        if k == 0 {
            b.wait(Some(Duration::from_millis(10))).unwrap();
        }
    }
    (got, sum)
}

#[test]
fn the_counter_counts() {
    let n = allocations_in(|| {
        std::hint::black_box(Vec::<u8>::with_capacity(16));
    });
    assert_eq!(n, 1);
}

#[test]
fn mem_pair_steady_state_allocates_nothing() {
    let a_addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
    let b_addr: SocketAddr = "10.0.0.2:2".parse().unwrap();
    let impaired = Impairments {
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
        corrupt: 0.05,
        seed: 3,
        capacity: 256,
    };
    for imp in [Impairments::none(), impaired] {
        let (mut a, mut b) = pair(a_addr, b_addr, imp);
        // Warm-up: the first rounds may touch lazily initialised state.
        for _ in 0..10 {
            round(&mut a, &mut b, b_addr, 32, None, false);
        }
        let mut received = 0;
        let allocs = allocations_in(|| {
            for _ in 0..1_000 {
                received += round(&mut a, &mut b, b_addr, 32, None, false).0;
                received += round(&mut b, &mut a, a_addr, 32, None, false).0;
            }
        });
        assert!(received > 50_000, "traffic flowed: {received}");
        assert_eq!(allocs, 0, "allocations in steady state with {imp:?}");
    }

    // GSO emulation, split per datagram under impairments.
    let opts = MemOptions {
        max_segments: 4,
        ..MemOptions::default()
    };
    let (mut a, mut b) = pair_with(a_addr, b_addr, impaired, opts);
    for _ in 0..10 {
        round(&mut a, &mut b, b_addr, 8, Some(1000), false);
    }
    let allocs = allocations_in(|| {
        for _ in 0..1_000 {
            round(&mut a, &mut b, b_addr, 8, Some(1000), false);
        }
    });
    assert_eq!(allocs, 0);
}

#[test]
fn udp_steady_state_allocates_nothing() {
    let mut a = UdpDatapath::bind("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let mut b = UdpDatapath::bind("127.0.0.1:0".parse().unwrap(), UdpOptions::default()).unwrap();
    let dst = b.local_addr();
    for _ in 0..10 {
        round(&mut a, &mut b, dst, 32, None, true);
        round(&mut a, &mut b, dst, 8, Some(1000), true);
    }
    let mut received = 0;
    let allocs = allocations_in(|| {
        for _ in 0..200 {
            received += round(&mut a, &mut b, dst, 32, None, true).0;
            received += round(&mut a, &mut b, dst, 8, Some(1000), true).0;
        }
    });
    assert_eq!(received, 200 * (32 + 8 * 4));
    assert_eq!(allocs, 0);
}
