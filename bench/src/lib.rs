//! quench-bench: side-by-side microbenchmarks of quench, quinn-proto, quiche and rustls on
//! in-memory pairs (see `benches/engine.rs`), a load generator, and a report of the
//! criterion results with ratios.

pub mod aead_floor;
pub mod load;
pub mod profile;
pub mod quench_pair;
pub mod quiche_pair;
pub mod quinn_pair;
pub mod report;
pub mod rustls_hs;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub const CLIENT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5000);
pub const SERVER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 4433);

/// Stream payload for bulk and perf bodies.
pub static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// Time accumulated over many short spans (only the server's calls).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stopwatch {
    pub elapsed: Duration,
    pub spans: u64,
}

impl Stopwatch {
    /// Ends a span started at `t0`.
    #[inline]
    pub fn stop(&mut self, t0: Instant) {
        self.elapsed += t0.elapsed();
        self.spans += 1;
    }
}

/// Runs `f`: every timed server span goes through here, so a profiler can restrict itself
/// to exactly what the benchmarks time (`valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect='*server_span*'`).
#[inline(never)]
pub fn server_span<R>(f: impl FnOnce() -> R) -> R {
    let r = f();
    // Keeps the last call inside from becoming a tail jump: callgrind's toggle would then
    // miss the span's end and keep counting the client's work after it.
    std::hint::black_box(&r);
    r
}

/// One datagram buffer.
pub struct Slot {
    pub buf: Vec<u8>,
    pub len: usize,
    pub dst: SocketAddr,
    /// The ECN codepoint the sender set: carried to the receiver, as a path that keeps
    /// the marks would, so each stack's ECN validation and marking run as deployed.
    pub ecn: u8,
}

/// Datagrams in flight in one direction, in reused buffers.
pub struct Wire {
    pub slots: Vec<Slot>,
    pub len: usize,
}

impl Wire {
    pub const DATAGRAM: usize = 2048;

    pub fn new(capacity: usize) -> Self {
        let mut w = Self {
            slots: Vec::with_capacity(capacity),
            len: 0,
        };
        for _ in 0..capacity {
            w.grow();
        }
        w
    }

    fn grow(&mut self) {
        self.slots.push(Slot {
            buf: vec![0; Self::DATAGRAM],
            len: 0,
            dst: SERVER_ADDR,
            ecn: 0,
        });
    }

    /// The buffer after the last filled one (it counts once `len` is raised).
    pub fn next_slot(&mut self) -> &mut Slot {
        if self.len == self.slots.len() {
            self.grow();
        }
        &mut self.slots[self.len]
    }

    pub fn bytes(&self) -> usize {
        self.slots[..self.len].iter().map(|s| s.len).sum()
    }
}

/// A perf request (ALPN `perf`): the 8-byte big-endian length wanted back, then upload
/// bytes up to `size` in total.
pub fn perf_request(size: usize, response: u64) -> Vec<u8> {
    let mut req = vec![0u8; size.max(8)];
    req[..8].copy_from_slice(&response.to_be_bytes());
    req
}
