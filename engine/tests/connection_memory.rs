//! What an established, idle connection costs the server in heap memory: a CDN edge holds
//! hundreds of thousands of them. A global allocator counts the bytes allocated and freed
//! inside the server endpoint's calls only (its objects are made and dropped there, never in
//! the client's), so the live total after 64 handshakes have settled, divided by 64, is one
//! connection's share: the `Connection`, its keys, stream and recovery state, the
//! application's state, and the endpoint's routes to it (what only the handshake needs,
//! rustls's connection included, is gone by then).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quench::app::{AppDispatcher, AppSlot, BuiltinApps};
use quench::conn::{Connection, Event, TransportConfig};
use quench::endpoint::{Endpoint, EndpointConfig, EventHandler};
use quench::io::RxMeta;
use quench::tls::certs::generate_self_signed;
use quench::tls::session::{client_config, server_config, ServerVerification};
use quench::wire::header::VERSION_1;

struct Counting;

thread_local! {
    // Const initialisers: touching these never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn note(bytes: isize) {
    if COUNTING.with(|c| c.get()) {
        LIVE.with(|n| n.set(n.get() + bytes));
    }
}

// SAFETY: forwards every call unchanged to the system allocator; the counter has no effect
// on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with the server's allocations counted.
fn server<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    out
}

struct Quiet;

impl EventHandler<()> for Quiet {
    fn on_event(&mut self, _: Instant, _: &mut Connection, _: &mut (), _: Event) {}
}

const CONNS: usize = 64;
/// The bound asserted: well above what is measured (docs/operations.md gives the figure),
/// so that only a structural change (a buffer sized for a transfer kept by every idle
/// connection, say) trips it.
const LIMIT_PER_CONN: isize = 48 * 1024;

#[test]
fn an_idle_connection_costs_the_server_little_memory() {
    let saddr: SocketAddr = "10.0.0.2:4433".parse().unwrap();
    let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let alpn = b"perf".to_vec();
    let cert = generate_self_signed(&["localhost".into()]).unwrap();
    let stls = server_config(cert, std::slice::from_ref(&alpn)).unwrap();
    let apps = BuiltinApps {
        alpns: vec![alpn.clone()],
        root: None,
    };
    let mut now = Instant::now();
    // The endpoint's own tables (routes, timers, buffers) exist before any connection.
    let mut srv: Endpoint<AppSlot> =
        server(|| Endpoint::new(EndpointConfig::new(TransportConfig::default(), Some(stls))));
    let baseline = LIVE.with(|n| n.get());
    let mut cli: Endpoint<()> =
        Endpoint::new(EndpointConfig::new(TransportConfig::default(), None));
    let ctls = client_config(ServerVerification::Insecure, &[alpn]).unwrap();
    for _ in 0..CONNS {
        cli.connect(now, Arc::clone(&ctls), "localhost", saddr, VERSION_1)
            .unwrap();
    }
    let mut buf = vec![0u8; 2048];
    // Virtual time: handshakes, then HANDSHAKE_DONE, CIDs, tickets and their ACKs settle,
    // then the ACK timers run out; well inside the idle timeout.
    let end = now + Duration::from_secs(2);
    while now < end {
        while let Some(t) = cli.poll_transmit(now, &mut buf, 1) {
            let mut d = buf[..t.len].to_vec();
            let meta = RxMeta {
                src: caddr,
                dst: saddr,
                ecn: 0,
            };
            server(|| {
                let mut disp = AppDispatcher { factory: &apps };
                srv.handle_datagram(now, meta, &mut d, &mut disp);
            });
        }
        let mut out = Vec::new();
        server(|| {
            while let Some(t) = srv.poll_transmit(now, &mut buf, 1) {
                out.push(buf[..t.len].to_vec());
            }
        });
        for mut d in out {
            let meta = RxMeta {
                src: saddr,
                dst: caddr,
                ecn: 0,
            };
            cli.handle_datagram(now, meta, &mut d, &mut Quiet);
        }
        now += Duration::from_millis(5);
        cli.handle_timeouts(now, &mut Quiet);
        server(|| {
            let mut disp = AppDispatcher { factory: &apps };
            srv.handle_timeouts(now, &mut disp);
        });
    }
    assert_eq!(srv.connection_count(), CONNS, "every connection is up");
    for h in srv.handles().collect::<Vec<_>>() {
        let c = srv.conn(h).unwrap();
        assert!(c.is_handshake_confirmed(), "{:?}", c.stats());
    }
    let per_conn = (LIVE.with(|n| n.get()) - baseline) / CONNS as isize;
    eprintln!(
        "server heap per idle connection: {per_conn} bytes ({:.1} KiB) over {CONNS} connections",
        per_conn as f64 / 1024.0
    );
    assert!(per_conn > 0, "the counter saw the connections");
    assert!(
        per_conn <= LIMIT_PER_CONN,
        "an idle connection holds {per_conn} bytes, more than {LIMIT_PER_CONN}"
    );
}
