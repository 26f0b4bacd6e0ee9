//! AF_XDP through a real veth pair between two network namespaces this test creates (and
//! deletes by name, even on failure): frames built by `wire::net` reach a kernel UDP
//! socket (so their checksums are right), kernel-sent frames parse, and 1,000,000 echoed
//! datagrams leave every UMEM frame where it belongs; answers go back on the VLAN a peer
//! used. Needs root; fails clearly without.
#![cfg(feature = "xdp")]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quench::io::xdp::{XdpConfig, XdpDatapath, XdpMode, XdpProgram, XdpSetup, ZeroCopy};
use quench::io::{Datapath, TxMeta};
use quench::Side;

const PORT: u16 = 4433;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed by name on Drop. Each test takes its own
/// tag: tests run in parallel, and a shared name would delete another test's namespaces.
struct Topology {
    srv: String,
    cli: String,
    srv_if: String,
}

impl Topology {
    fn new(tag: &str) -> Topology {
        assert_eq!(
            unsafe_geteuid(),
            0,
            "xdp_veth tests need root (namespaces, XDP, AF_XDP)"
        );
        let t = Topology {
            srv: format!("qt-{tag}-s"),
            cli: format!("qt-{tag}-c"),
            srv_if: format!("qt{tag}s"),
        };
        let cli_if = format!("qt{tag}c");
        t.remove();
        ip(&["netns", "add", &t.srv]);
        ip(&["netns", "add", &t.cli]);
        ip(&[
            "link", "add", &t.srv_if, "netns", &t.srv, "type", "veth", "peer", "name", &cli_if,
            "netns", &t.cli,
        ]);
        ip(&[
            "-n",
            &t.srv,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            &t.srv_if,
        ]);
        ip(&["-n", &t.cli, "addr", "add", "10.99.0.2/24", "dev", &cli_if]);
        ip(&[
            "-n",
            &t.srv,
            "addr",
            "add",
            "fd99::1/64",
            "dev",
            &t.srv_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &t.cli,
            "addr",
            "add",
            "fd99::2/64",
            "dev",
            &cli_if,
            "nodad",
        ]);
        ip(&["-n", &t.srv, "link", "set", &t.srv_if, "up"]);
        ip(&["-n", &t.cli, "link", "set", &cli_if, "up"]);
        t
    }

    fn remove(&self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Moves the calling thread into a named network namespace.
fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: a valid namespace fd; affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A kernel UDP socket made inside namespace `ns` (usable from any thread afterwards).
fn udp_in(ns: &str, addr: &str) -> UdpSocket {
    let ns = ns.to_string();
    let addr = addr.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind(&addr).expect("bind client UDP socket");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    })
    .join()
    .unwrap()
}

fn start(iface: &str) -> (XdpProgram, XdpDatapath) {
    let cfg = XdpConfig {
        iface: iface.to_string(),
        queues: vec![0],
        workers: 1,
        mode: XdpMode::Native,
        ports: vec![PORT],
        zero_copy: ZeroCopy::Auto,
        side: Side::Server,
        ..Default::default()
    };
    let (prog, mut paths) =
        XdpSetup::start(&cfg).unwrap_or_else(|e| panic!("XDP setup failed: {e}"));
    (prog, paths.remove(0))
}

/// A QUIC-short-header-looking datagram (fixed bit set, long enough) carrying `seq`.
fn payload(seq: u64, buf: &mut Vec<u8>) {
    let len = 40 + (seq % 1400) as usize;
    buf.clear();
    buf.push(0x40);
    buf.extend_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.push(x as u8);
    }
}

fn check_payload(p: &[u8]) -> u64 {
    assert!(p.len() >= 9, "short payload");
    let seq = u64::from_be_bytes(p[1..9].try_into().unwrap());
    let mut want = Vec::new();
    payload(seq, &mut want);
    assert_eq!(p, &want[..], "payload of seq {seq} not byte-exact");
    seq
}

fn recv_until(
    dp: &mut XdpDatapath,
    want: usize,
    on: &mut dyn FnMut(quench::io::RxMeta, &mut [u8]),
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < want && Instant::now() < deadline {
        got += dp.recv_batch(on).unwrap();
        if got < want {
            dp.wait(Some(Duration::from_millis(20))).unwrap();
        }
    }
    got
}

#[test]
fn builders_roundtrip_through_kernel_v4_v6() {
    let t = Topology::new("b");
    let (srv, srv_if) = (t.srv.clone(), t.srv_if.clone());
    let cli4 = udp_in(&t.cli, "10.99.0.2:50000");
    let cli6 = udp_in(&t.cli, "[fd99::2]:50001");
    std::thread::spawn(move || {
        enter_netns(&srv);
        let (prog, mut dp) = start(&srv_if);
        for (cli, server) in [(&cli4, "10.99.0.1:4433"), (&cli6, "[fd99::1]:4433")] {
            let server: SocketAddr = server.parse().unwrap();
            // Kernel → AF_XDP: frames the kernel built parse, payload intact.
            let mut buf = Vec::new();
            for seq in 0..20 {
                payload(seq, &mut buf);
                cli.send_to(&buf, server).unwrap();
            }
            let mut seen = Vec::new();
            let n = recv_until(&mut dp, 20, &mut |meta, p| {
                assert_eq!(meta.src, cli.local_addr().unwrap());
                assert_eq!(meta.dst, server);
                seen.push(check_payload(p));
            });
            assert_eq!(
                n, 20,
                "kernel-sent datagrams received over AF_XDP ({server})"
            );
            seen.sort_unstable();
            assert_eq!(seen, (0..20).collect::<Vec<_>>());
            // AF_XDP → kernel: the kernel drops bad checksums, so arrival proves them.
            for seq in 100..120 {
                payload(seq, &mut buf);
                let dst = cli.local_addr().unwrap();
                assert!(dp.push_tx(&mut |out| {
                    out[..buf.len()].copy_from_slice(&buf);
                    Some(TxMeta {
                        dst,
                        src: None,
                        len: buf.len(),
                        segment_size: None,
                        ecn: 0,
                    })
                }));
            }
            dp.flush().unwrap();
            let mut rb = [0u8; 2048];
            for seq in 100..120 {
                let (n, from) = cli
                    .recv_from(&mut rb)
                    .unwrap_or_else(|e| panic!("kernel UDP receive ({server}): {e}"));
                assert_eq!(from, server);
                assert_eq!(check_payload(&rb[..n]), seq);
            }
        }
        let s = dp.stats();
        assert_eq!(s.counters.tx_no_neighbor, 0);
        assert_eq!(s.frame_violations, 0);
        assert!(prog.stats().redirect >= 40);
    })
    .join()
    .unwrap();
}

#[test]
fn million_packets_frame_accounting() {
    const TOTAL: u64 = 1_000_000;
    const WINDOW: u64 = 64;
    let t = Topology::new("m");
    let (srv, srv_if) = (t.srv.clone(), t.srv_if.clone());
    let cli = udp_in(&t.cli, "10.99.0.2:50002");
    // A window of echoes must fit the receive buffer, or the kernel drops them.
    let rcvbuf: libc::c_int = 8 << 20;
    // SAFETY: valid socket fd and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            cli.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_srv = Arc::clone(&stop);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // Server: AF_XDP echo, checking every payload byte for byte.
    let server = std::thread::spawn(move || {
        enter_netns(&srv);
        let (prog, mut dp) = start(&srv_if);
        ready_tx.send(()).unwrap();
        let mut echoed = 0u64;
        let mut pending: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(64);
        let mut spare: Vec<Vec<u8>> = (0..64).map(|_| Vec::with_capacity(2048)).collect();
        while !stop_srv.load(Ordering::Relaxed) {
            dp.recv_batch(&mut |meta, p| {
                check_payload(p);
                let mut b = spare.pop().unwrap_or_default();
                b.clear();
                b.extend_from_slice(p);
                pending.push((meta.src, b));
            })
            .unwrap();
            for (dst, b) in pending.drain(..) {
                while !dp.push_tx(&mut |out| {
                    out[..b.len()].copy_from_slice(&b);
                    Some(TxMeta {
                        dst,
                        src: None,
                        len: b.len(),
                        segment_size: None,
                        ecn: 0,
                    })
                }) {
                    dp.flush().unwrap();
                }
                echoed += 1;
                spare.push(b);
            }
            dp.flush().unwrap();
            dp.wait(Some(Duration::from_millis(5))).unwrap();
        }
        // Let the last completions come back, then audit every frame.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            dp.flush().unwrap();
            dp.recv_batch(&mut |_, _| {}).unwrap();
            let s = dp.stats();
            if s.frames.tx == 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (prog.stats(), dp.stats(), echoed)
    });
    ready_rx.recv().expect("server failed to start");

    // Client: kernel UDP, a window of datagrams in flight; lost ones are re-sent.
    let server_addr: SocketAddr = format!("10.99.0.1:{PORT}").parse().unwrap();
    let mut received = vec![false; TOTAL as usize];
    let mut n_received = 0u64;
    let mut resent = 0u64;
    let mut buf = Vec::with_capacity(2048);
    let mut rb = [0u8; 2048];
    let mut next = 0u64;
    let started = Instant::now();
    while n_received < TOTAL {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "1M echo took too long ({n_received} done)"
        );
        let batch_end = (next + WINDOW).min(TOTAL);
        let mut outstanding: Vec<u64> = (next..batch_end).collect();
        let mut tries = 0;
        while !outstanding.is_empty() {
            for &seq in &outstanding {
                payload(seq, &mut buf);
                cli.send_to(&buf, server_addr).unwrap();
            }
            if tries > 0 {
                resent += outstanding.len() as u64;
            }
            tries += 1;
            assert!(tries < 50, "datagrams {outstanding:?} never came back");
            let wait_until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < wait_until {
                match cli.recv_from(&mut rb) {
                    Ok((n, from)) => {
                        assert_eq!(from, server_addr);
                        let seq = check_payload(&rb[..n]);
                        if !std::mem::replace(&mut received[seq as usize], true) {
                            n_received += 1;
                        }
                        if outstanding.iter().all(|&s| received[s as usize]) {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    // A signal landing in the wait is no reason to fail: wait again.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("client receive: {e} ({:?})", e.kind()),
                }
            }
            outstanding.retain(|&s| !received[s as usize]);
        }
        next = batch_end;
    }
    stop.store(true, Ordering::Relaxed);
    let (prog_stats, s, echoed) = server.join().expect("server thread");
    assert!(resent < TOTAL / 100, "too many echoes lost: {resent}");
    eprintln!(
        "1M echo in {:?}: echoed {echoed}, resent {resent}, program {prog_stats:?}, socket {s:?}",
        started.elapsed()
    );
    assert!(echoed >= TOTAL);
    assert_eq!(s.frame_violations, 0, "frame accounting violations");
    assert_eq!(s.frames.rx, 0, "frames stuck in user space");
    assert_eq!(s.frames.tx, 0, "frames never completed");
    assert_eq!(s.frames.total(), 4096);
    assert_eq!(
        s.frames.free, s.free_listed,
        "free frames not on a free list"
    );
    assert_eq!(
        s.frames.fill, s.fill_outstanding,
        "fill frames not in the fill ring"
    );
    assert_eq!(prog_stats.redirect_failed, 0);
    assert!(prog_stats.redirect >= TOTAL);
    assert_eq!(
        s.counters.rx_malformed + s.counters.bad_descs + s.counters.tx_no_neighbor,
        0
    );
}

/// Two workers sharing one queue (XDP_SHARED_UMEM): the program splits datagrams by the
/// worker byte of the CID, each socket gets exactly its own, and frames stay accounted.
#[test]
fn shared_umem_two_workers_split_by_cid() {
    let t = Topology::new("w");
    let (srv, srv_if) = (t.srv.clone(), t.srv_if.clone());
    let cli = udp_in(&t.cli, "10.99.0.2:50003");
    std::thread::spawn(move || {
        enter_netns(&srv);
        let cfg = XdpConfig {
            iface: srv_if,
            queues: vec![0],
            workers: 2,
            mode: XdpMode::Native,
            ports: vec![PORT],
            ..Default::default()
        };
        let (prog, mut paths) =
            XdpSetup::start(&cfg).unwrap_or_else(|e| panic!("XDP setup failed: {e}"));
        assert_eq!(paths[1].bind_mode(), quench::io::xdp::BindMode::Shared);
        let server: SocketAddr = format!("10.99.0.1:{PORT}").parse().unwrap();
        let per_worker = 200u64;
        let mut dgram = vec![0x40u8; 64];
        for i in 0..2 * per_worker {
            dgram[1 + 3] = (i % 2) as u8; // worker byte of a 12-byte server CID
            dgram[20..28].copy_from_slice(&i.to_be_bytes());
            cli.send_to(&dgram, server).unwrap();
        }
        for (w, dp) in paths.iter_mut().enumerate() {
            let n = recv_until(dp, per_worker as usize, &mut |_, p| {
                assert_eq!(
                    usize::from(p[4]),
                    w,
                    "worker {w} got another worker's datagram"
                );
            });
            assert_eq!(n as u64, per_worker, "worker {w}");
        }
        assert_eq!(prog.worker_hits(2), vec![per_worker, per_worker]);
        let s = paths[0].stats();
        assert_eq!(s.frame_violations, 0);
        assert_eq!(s.frames.rx, 0);
    })
    .join()
    .unwrap();
}

/// Reads an interface's MAC address inside namespace `ns`.
fn mac_in(ns: &str, iface: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "dev", iface])
        .output()
        .expect("run `ip`");
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text
        .split_whitespace()
        .find(|w| w.len() == 17 && w.matches(':').count() == 5)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(word.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// A raw AF_PACKET socket on `iface` inside namespace `ns`: sends and sees whole frames,
/// VLAN tags included (the guest kernel here has no 8021q module for a VLAN interface).
fn packet_socket_in(ns: &str, iface: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let (ns, iface) = (ns.to_string(), iface.to_string());
    std::thread::spawn(move || {
        enter_netns(&ns);
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: a NUL-terminated interface name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no such interface");
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: a valid socket and a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        // The kernel moves a received frame's tag into metadata: ask for it (auxdata).
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: a valid socket and a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        fd
    })
    .join()
    .unwrap()
}

/// linux/if_packet.h: the option and the `tpacket_auxdata` fields read here.
const PACKET_AUXDATA: libc::c_int = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const AUX_STATUS_AT: usize = 0;
const AUX_VLAN_TCI_AT: usize = 16;

/// Receives one frame: its bytes and the VLAN TCI the kernel took off it, if any.
fn recv_frame(raw: &std::os::fd::OwnedFd, buf: &mut [u8]) -> Option<(usize, Option<u16>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: a valid socket; msg points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(raw.as_raw_fd(), &mut msg, 0) };
    if n <= 0 {
        return None;
    }
    let mut vlan = None;
    // SAFETY: walking the control messages recvmsg just wrote, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                let data = libc::CMSG_DATA(c);
                let status = std::ptr::read_unaligned(data.add(AUX_STATUS_AT).cast::<u32>());
                let tci = std::ptr::read_unaligned(data.add(AUX_VLAN_TCI_AT).cast::<u16>());
                if status & TP_STATUS_VLAN_VALID != 0 {
                    vlan = Some(tci);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n as usize, vlan))
}

/// A client on VLAN 100 reaches the AF_XDP server on the untagged interface: the program
/// redirects the tagged frames, and the answers go back tagged with the same TCI (they
/// went out untagged, onto the native VLAN, where the client never saw them).
#[test]
fn replies_go_back_on_the_vlan_the_peer_used() {
    use quench::wire::net::{parse_udp_frame, FrameHeaders};
    let t = Topology::new("v");
    let cli_if = "qtvc";
    let srv_mac = mac_in(&t.srv, &t.srv_if);
    let cli_mac = mac_in(&t.cli, cli_if);
    let raw = packet_socket_in(&t.cli, cli_if);
    let server: SocketAddr = format!("10.99.0.1:{PORT}").parse().unwrap();
    let client: SocketAddr = "10.99.0.2:50010".parse().unwrap();
    // Priority 5 and VLAN 100 in the tag control information.
    let tci = (5 << 13) | 100;
    let mut body = Vec::new();
    payload(7, &mut body);
    let h = FrameHeaders {
        src_mac: cli_mac,
        dst_mac: srv_mac,
        vlan: Some(tci),
        src: client,
        dst: server,
        ecn: 0,
        hop_limit: 0,
    };
    let mut frame = vec![0u8; h.header_len() + body.len()];
    frame[h.header_len()..].copy_from_slice(&body);
    let len = h.emit(&mut frame, body.len()).unwrap();
    let send = |raw: &std::os::fd::OwnedFd| {
        // SAFETY: a valid socket and a buffer of `len` bytes.
        let n = unsafe { libc::send(raw.as_raw_fd(), frame.as_ptr().cast(), len, 0) };
        assert_eq!(n, len as isize, "send: {}", std::io::Error::last_os_error());
    };
    let (srv, srv_if) = (t.srv.clone(), t.srv_if.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = std::thread::spawn(move || {
        enter_netns(&srv);
        let (_prog, mut dp) = start(&srv_if);
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.is_empty() && Instant::now() < deadline {
            dp.recv_batch(&mut |meta, p| got.push((meta.src, p.to_vec())))
                .unwrap();
            dp.wait(Some(Duration::from_millis(20))).unwrap();
        }
        let (dst, p) = got.pop().expect("the tagged datagram arrived over AF_XDP");
        assert_eq!(dst, client);
        assert!(dp.push_tx(&mut |out| {
            out[..p.len()].copy_from_slice(&p);
            Some(TxMeta {
                dst,
                src: None,
                len: p.len(),
                segment_size: None,
                ecn: 0,
            })
        }));
        dp.flush().unwrap();
    });
    ready_rx.recv().expect("server failed to start");
    send(&raw);
    echo.join().unwrap();
    // The answer, seen on the client's wire: tagged as the request was.
    let mut rb = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        assert!(Instant::now() < deadline, "no answer on the client's wire");
        let Some((n, aux_vlan)) = recv_frame(&raw, &mut rb) else {
            continue;
        };
        match parse_udp_frame(&rb[..n]) {
            // The tag is in the frame or, taken off by the kernel, in the auxdata.
            Ok(f) if f.src == server && f.dst == client => {
                break (f.vlan.or(aux_vlan), f.payload_range())
            }
            _ => continue,
        }
    };
    assert_eq!(answer.0, Some(tci), "answered on the peer's VLAN");
    assert_eq!(check_payload(&rb[answer.1]), 7);
}

/// An Ethernet frame carrying `body` with the headers `h`.
fn udp_frame(h: &quench::wire::net::FrameHeaders, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; h.header_len() + body.len()];
    frame[h.header_len()..].copy_from_slice(body);
    let len = h.emit(&mut frame, body.len()).unwrap();
    frame.truncate(len);
    frame
}

/// Anyone on the segment can send a datagram with a peer's IP from their own MAC. Once
/// the engine has vouched for a peer's datagram (it authenticated), such a frame does not
/// redirect the replies to that peer; a peer nothing vouched for is answered where its
/// latest frame came from (a new client's first flight).
#[test]
fn a_spoofed_source_does_not_redirect_replies_to_an_authenticated_peer() {
    use quench::wire::net::{parse_udp_frame, FrameHeaders};
    let t = Topology::new("p");
    let cli_if = "qtpc";
    let srv_mac = mac_in(&t.srv, &t.srv_if);
    let cli_mac = mac_in(&t.cli, cli_if);
    let spoof_mac = [0x02, 0, 0, 0, 0, 0x66];
    let raw = packet_socket_in(&t.cli, cli_if);
    let server: SocketAddr = format!("10.99.0.1:{PORT}").parse().unwrap();
    let vouched_peer: SocketAddr = "10.99.0.2:50020".parse().unwrap();
    let new_peer: SocketAddr = "10.99.0.3:50021".parse().unwrap();
    // (sequence, source, source MAC); the server vouches for sequence 1 alone.
    let sends = [
        (1, vouched_peer, cli_mac),
        (2, vouched_peer, spoof_mac),
        (3, new_peer, cli_mac),
        (4, new_peer, spoof_mac),
    ];
    let (srv, srv_if) = (t.srv.clone(), t.srv_if.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_thread = std::thread::spawn(move || {
        enter_netns(&srv);
        let (_prog, mut dp) = start(&srv_if);
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < sends.len() && Instant::now() < deadline {
            dp.recv_batch_vouched(&mut |meta, p| {
                let seq = check_payload(p);
                got.push((seq, meta.src));
                seq == 1
            })
            .unwrap();
            dp.wait(Some(Duration::from_millis(20))).unwrap();
        }
        assert_eq!(got.len(), sends.len(), "every frame arrived over AF_XDP");
        // Answer both peers.
        for (seq, dst) in [(10, vouched_peer), (11, new_peer)] {
            let mut body = Vec::new();
            payload(seq, &mut body);
            assert!(dp.push_tx(&mut |out| {
                out[..body.len()].copy_from_slice(&body);
                Some(TxMeta {
                    dst,
                    src: None,
                    len: body.len(),
                    segment_size: None,
                    ecn: 0,
                })
            }));
        }
        dp.flush().unwrap();
    });
    ready_rx.recv().expect("server failed to start");
    for (seq, src, src_mac) in sends {
        let mut body = Vec::new();
        payload(seq, &mut body);
        let h = FrameHeaders {
            src_mac,
            dst_mac: srv_mac,
            vlan: None,
            src,
            dst: server,
            ecn: 0,
            hop_limit: 0,
        };
        let frame = udp_frame(&h, &body);
        // SAFETY: a valid socket and a buffer of `frame.len()` bytes.
        let n = unsafe { libc::send(raw.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
    server_thread.join().unwrap();
    // The answers as they appear on the client's wire (whatever MAC they were sent to).
    let mut answered = std::collections::HashMap::new();
    let mut rb = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    while answered.len() < 2 {
        assert!(Instant::now() < deadline, "answers missing: {answered:?}");
        let Some((n, _)) = recv_frame(&raw, &mut rb) else {
            continue;
        };
        if let Ok(f) = parse_udp_frame(&rb[..n]) {
            if f.src == server {
                let seq = check_payload(&rb[f.payload_range()]);
                answered.insert(seq, (f.dst, f.dst_mac));
            }
        }
    }
    assert_eq!(
        answered[&10],
        (vouched_peer, cli_mac),
        "the authenticated peer keeps its MAC"
    );
    assert_eq!(
        answered[&11],
        (new_peer, spoof_mac),
        "an unauthenticated peer is answered where its latest frame came from"
    );
}

/// The kernel's neighbour table, as the XDP datapath reads it (rtnetlink) when it must
/// send to a peer it has no frame from: both families, in the caller's namespace.
#[test]
fn kernel_neighbour_entries_are_found_for_both_families() {
    let t = Topology::new("n");
    let cli_if = "qtnc";
    for (addr, mac) in [
        ("10.99.0.7", "02:00:00:00:07:04"),
        ("fd99::7", "02:00:00:00:07:06"),
    ] {
        ip(&[
            "-n",
            &t.cli,
            "neigh",
            "add",
            addr,
            "lladdr",
            mac,
            "dev",
            cli_if,
            "nud",
            "permanent",
        ]);
    }
    let ns = t.cli.clone();
    let found = std::thread::spawn(move || {
        enter_netns(&ns);
        ["10.99.0.7", "fd99::7", "10.99.0.8"]
            .map(|a| quench::io::xdp::neigh::lookup(a.parse().unwrap(), None))
    })
    .join()
    .unwrap();
    assert_eq!(
        found,
        [Some([2, 0, 0, 0, 7, 4]), Some([2, 0, 0, 0, 7, 6]), None]
    );
}
