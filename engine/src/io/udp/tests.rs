//! Loopback tests of the UDP datapath against real sockets.

use super::*;
use sha2::{Digest, Sha256};
use std::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);

fn bind(addr: &str, opts: UdpOptions) -> UdpDatapath {
    UdpDatapath::bind(addr.parse().unwrap(), opts).unwrap()
}

/// Binds on ::1, or None where the machine has no IPv6 loopback.
fn bind6(opts: UdpOptions) -> Option<UdpDatapath> {
    match UdpDatapath::bind("[::1]:0".parse().unwrap(), opts) {
        Ok(dp) => Some(dp),
        Err(e) => {
            eprintln!("skipping IPv6 part: {e}");
            None
        }
    }
}

/// A deterministic payload: the index, then bytes from a small LCG.
fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = i.wrapping_mul(2_654_435_761).wrapping_add(12345);
    out.extend_from_slice(&i.to_be_bytes()[..len.min(4)]);
    while out.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        out.push((x >> 16) as u8);
    }
    out
}

/// Queues one datagram (or a GSO buffer) for `dst`; false if no buffer was free.
fn push(
    dp: &mut UdpDatapath,
    dst: SocketAddr,
    data: &[u8],
    segment: Option<usize>,
    ecn: u8,
) -> bool {
    dp.push_tx(&mut |buf: &mut [u8]| {
        buf[..data.len()].copy_from_slice(data);
        Some(TxMeta {
            dst,
            src: None,
            len: data.len(),
            segment_size: segment,
            ecn,
        })
    })
}

fn flush_all(dp: &mut UdpDatapath) -> usize {
    let start = Instant::now();
    let mut sent = 0;
    while dp.tx.queued() > 0 {
        sent += dp.flush().unwrap();
        assert!(start.elapsed() < DEADLINE, "flush never drained");
        if dp.tx.queued() > 0 {
            dp.wait(Some(Duration::from_millis(10))).unwrap();
        }
    }
    sent
}

/// Receives until `want` datagrams arrived (or the deadline passes).
fn recv_n(dp: &mut UdpDatapath, want: usize) -> Vec<(RxMeta, Vec<u8>)> {
    let start = Instant::now();
    let mut got = Vec::with_capacity(want);
    while got.len() < want && start.elapsed() < DEADLINE {
        dp.wait(Some(Duration::from_millis(50))).unwrap();
        dp.recv_batch(&mut |meta, data| got.push((meta, data.to_vec())))
            .unwrap();
    }
    got
}

/// Sends `count` datagrams of varied sizes from `a` to `b` in rounds of one batch and
/// checks that they all arrive, byte-exact and in order, with the right addresses.
fn transfer(a: &mut UdpDatapath, b: &mut UdpDatapath, count: u32) {
    let dst = b.local_addr();
    let mds = a
        .capabilities()
        .max_datagram_size
        .min(b.capabilities().max_datagram_size);
    let (mut sent_hash, mut recv_hash) = (Sha256::new(), Sha256::new());
    let mut next = 0u32;
    let mut received = 0usize;
    while next < count {
        let round_start = next;
        while next < count {
            let len = 1 + (next as usize * 7919) % mds;
            let data = payload(next, len);
            if !push(a, dst, &data, None, 0) {
                break;
            }
            sent_hash.update((len as u32).to_be_bytes());
            sent_hash.update(&data);
            next += 1;
        }
        assert!(
            next > round_start,
            "no transmit buffer free after a full flush"
        );
        flush_all(a);
        for (meta, data) in recv_n(b, (next - round_start) as usize) {
            assert_eq!(meta.src, a.local_addr());
            assert_eq!(meta.dst, b.local_addr());
            assert_eq!(meta.ecn, 0);
            recv_hash.update((data.len() as u32).to_be_bytes());
            recv_hash.update(&data);
            received += 1;
        }
        assert_eq!(received, next as usize, "datagrams lost on loopback");
    }
    assert_eq!(sent_hash.finalize(), recv_hash.finalize());
    assert_eq!(a.stats().tx_datagrams, u64::from(count));
    assert_eq!(b.stats().rx_datagrams, u64::from(count));
}

#[test]
fn exchange_10k_v4_both_ways() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let mut b = bind(
        "127.0.0.1:0",
        UdpOptions {
            gro: false,
            gso: false,
            ..UdpOptions::default()
        },
    );
    transfer(&mut a, &mut b, 10_000);
    transfer(&mut b, &mut a, 10_000);
    assert!(
        a.stats().tx_syscalls < 10_000 / 8,
        "sends are batched: {:?}",
        a.stats()
    );
}

#[test]
fn exchange_10k_v6() {
    let (Some(mut a), Some(mut b)) = (bind6(UdpOptions::default()), bind6(UdpOptions::default()))
    else {
        return;
    };
    assert_eq!(a.capabilities().max_datagram_size, DEFAULT_MAX_DATAGRAM_V6);
    transfer(&mut a, &mut b, 10_000);
    transfer(&mut b, &mut a, 2_000);
}

#[test]
fn gso_buffer_arrives_as_datagrams() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let mut b = bind(
        "127.0.0.1:0",
        UdpOptions {
            gro: false,
            ..UdpOptions::default()
        },
    );
    let caps = a.capabilities();
    assert!(
        a.gso_enabled() && caps.max_segments > 1,
        "GSO expected on this kernel: {caps:?}"
    );
    assert!(caps.max_segments <= 64 && caps.max_segments * caps.max_datagram_size <= 65_507);
    let seg = 1000;
    let segs: Vec<Vec<u8>> = (0..11u32)
        .map(|i| payload(i, if i == 10 { 321 } else { seg }))
        .collect();
    let whole = segs.concat();
    assert!(push(&mut a, b.local_addr(), &whole, Some(seg), 0));
    assert_eq!(flush_all(&mut a), 11);
    let st = a.stats();
    assert_eq!(
        (st.tx_syscalls, st.tx_datagrams, st.tx_gso_segments),
        (1, 11, 11)
    );
    let got = recv_n(&mut b, 11);
    let datagrams: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
    assert_eq!(datagrams, segs);
}

#[test]
fn gro_splits_coalesced_datagrams() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let mut b = bind("127.0.0.1:0", UdpOptions::default());
    assert!(b.gro_enabled());
    let seg = 1200;
    let mut expected = Vec::new();
    for buf in 0..20u32 {
        // 1..=30 segments per buffer, the last one shorter.
        let n = 1 + (buf * 7) % 30;
        let segs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                payload(
                    buf * 100 + i,
                    if i + 1 == n {
                        1 + (buf as usize * 37) % seg
                    } else {
                        seg
                    },
                )
            })
            .collect();
        assert!(push(&mut a, b.local_addr(), &segs.concat(), Some(seg), 0));
        expected.extend(segs);
        if buf % 5 == 4 {
            flush_all(&mut a);
        }
    }
    let got = recv_n(&mut b, expected.len());
    let datagrams: Vec<Vec<u8>> = got.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(datagrams, expected);
    assert!(got
        .iter()
        .all(|(m, _)| m.src == a.local_addr() && m.dst == b.local_addr()));
    let st = b.stats();
    assert!(
        st.rx_gro_segments > 0,
        "loopback GSO into a GRO socket stays coalesced: {st:?}"
    );
    assert!(st.rx_syscalls < expected.len() as u64);
}

fn check_ecn(a: &mut UdpDatapath, b: &mut UdpDatapath, dst: SocketAddr) {
    for ecn in [0u8, 1, 2, 3] {
        assert!(push(a, dst, b"ecn", None, ecn));
        flush_all(a);
        let got = recv_n(b, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.ecn, ecn, "codepoint sent to {dst}");
        assert_eq!(got[0].1, b"ecn");
    }
    // GSO and ECN in one message.
    if a.gso_enabled() {
        assert!(push(a, dst, &[7u8; 300], Some(100), 2));
        flush_all(a);
        let got = recv_n(b, 3);
        assert!(got.len() == 3 && got.iter().all(|(m, d)| m.ecn == 2 && d.len() == 100));
    }
}

#[test]
fn ecn_codepoints_round_trip() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let mut b = bind("127.0.0.1:0", UdpOptions::default());
    let dst = b.local_addr();
    check_ecn(&mut a, &mut b, dst);
    if let (Some(mut a), Some(mut b)) = (bind6(UdpOptions::default()), bind6(UdpOptions::default()))
    {
        let dst = b.local_addr();
        check_ecn(&mut a, &mut b, dst);
    }
}

#[test]
fn wildcard_bind_reports_real_destination() {
    let mut server = bind("0.0.0.0:0", UdpOptions::default());
    let port = server.local_addr().port();
    let mut client = bind("127.0.0.1:0", UdpOptions::default());
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        assert!(push(&mut client, to, b"hi", None, 0));
        flush_all(&mut client);
        let got = recv_n(&mut server, 1);
        assert_eq!(
            got[0].0.dst, to,
            "IP_PKTINFO gives the address the datagram was sent to"
        );
        assert_eq!(got[0].0.src, client.local_addr());
    }
}

/// Queues one datagram for `dst`, to be sent from `src`.
fn push_from(dp: &mut UdpDatapath, dst: SocketAddr, src: Option<IpAddr>, data: &[u8]) -> bool {
    dp.push_tx(&mut |buf: &mut [u8]| {
        buf[..data.len()].copy_from_slice(data);
        Some(TxMeta {
            dst,
            src,
            len: data.len(),
            segment_size: None,
            ecn: 0,
        })
    })
}

/// A wildcard-bound socket answers from the address the peer wrote to (IP_PKTINFO on
/// send), not from the one the kernel's route prefers: on a host with several addresses a
/// QUIC client (a connected UDP socket) would drop the latter. 127.0.0.2 is a local
/// address the loopback route does not prefer. Also through a dual-stack socket, where the
/// addresses are v4-mapped.
#[test]
fn wildcard_bind_answers_from_the_address_written_to() {
    let mut client = bind("127.0.0.1:0", UdpOptions::default());
    let mut servers = vec![bind("0.0.0.0:0", UdpOptions::default())];
    servers.extend(UdpDatapath::bind("[::]:0".parse().unwrap(), UdpOptions::default()).ok());
    for server in &mut servers {
        let port = server.local_addr().port();
        let to: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        for answer_from in [true, false] {
            assert!(push(&mut client, to, b"ping", None, 0));
            flush_all(&mut client);
            let got = recv_n(server, 1);
            let meta = got[0].0;
            let src = answer_from.then(|| meta.dst.ip());
            assert!(push_from(server, meta.src, src, b"pong"));
            flush_all(server);
            let back = recv_n(&mut client, 1);
            assert_eq!(back[0].1, b"pong");
            if answer_from {
                assert_eq!(back[0].0.src, to, "answered from the address written to");
            } else {
                // Without it the route's preferred source answers: the premise of the test.
                assert_ne!(back[0].0.src, to);
            }
        }
    }
}

#[test]
fn dual_stack_socket_talks_v4() {
    let Some(mut server) = UdpDatapath::bind("[::]:0".parse().unwrap(), UdpOptions::default()).ok()
    else {
        return;
    };
    let port = server.local_addr().port();
    let mut client = bind("127.0.0.1:0", UdpOptions::default());
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(push(&mut client, to, b"ping", None, 3));
    flush_all(&mut client);
    let got = recv_n(&mut server, 1);
    let meta = got[0].0;
    let mapped = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    assert_eq!(meta.src, mapped(client.local_addr()));
    assert_eq!(meta.dst, mapped(to));
    assert_eq!(meta.ecn, 3);
    // Replies to the mapped source and to the plain IPv4 address both arrive.
    assert!(push(&mut server, meta.src, b"pong", None, 1));
    assert!(push(&mut server, client.local_addr(), b"pong2", None, 0));
    assert_eq!(flush_all(&mut server), 2);
    let got = recv_n(&mut client, 2);
    assert_eq!((got[0].1.as_slice(), got[0].0.ecn), (&b"pong"[..], 1));
    assert_eq!(got[1].1, b"pong2");
    assert_eq!(got[0].0.src, to);
}

#[test]
fn v6_only_socket_rejects_v4_peers_at_push() {
    let Some(mut a) = bind6(UdpOptions::default()) else {
        return;
    };
    // A v4 destination becomes v4-mapped, which a v6-only socket cannot reach: the send
    // fails and the datagram is dropped, not left wedging the queue.
    assert!(push(&mut a, "127.0.0.1:9".parse().unwrap(), b"x", None, 0));
    flush_all(&mut a);
    assert_eq!(a.stats().tx_dropped, 1);
    // An IPv4 socket cannot express a real IPv6 destination at all.
    let mut b = bind("127.0.0.1:0", UdpOptions::default());
    assert!(push(&mut b, "[::1]:9".parse().unwrap(), b"x", None, 0));
    assert_eq!((b.tx.queued(), b.stats().tx_dropped), (0, 1));
}

#[test]
fn reuseport_shares_a_port() {
    let opts = UdpOptions {
        reuse_port: true,
        ..UdpOptions::default()
    };
    let mut s0 = bind("127.0.0.1:0", opts);
    let addr = s0.local_addr();
    let mut s1 = UdpDatapath::bind(addr, opts).unwrap();
    assert_eq!(s1.local_addr(), addr);
    let err = UdpDatapath::bind(addr, UdpOptions::default())
        .err()
        .expect("bind without SO_REUSEPORT must fail");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

    // Steer everything to the second socket with a one-instruction cBPF program.
    let ret1 = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 1,
    };
    s0.attach_reuseport_cbpf(&[ret1]).unwrap();
    let mut clients: Vec<UdpDatapath> = (0..8)
        .map(|_| bind("127.0.0.1:0", UdpOptions::default()))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(push(c, addr, &[i as u8; 10], None, 0));
        flush_all(c);
    }
    let got = recv_n(&mut s1, clients.len());
    assert_eq!(got.len(), clients.len());
    let mut none = 0;
    s0.recv_batch(&mut |_, _| none += 1).unwrap();
    assert_eq!(none, 0);
    assert!(s0.attach_reuseport_cbpf(&[]).is_err());
}

#[test]
fn backpressure_neither_loses_nor_duplicates() {
    let opts = UdpOptions {
        batch: 4,
        gso: false,
        ..UdpOptions::default()
    };
    let mut a = bind("127.0.0.1:0", opts);
    let mut b = bind("127.0.0.1:0", UdpOptions::default());
    let dst = b.local_addr();
    // The pool has `batch` buffers: the fifth push is refused until a flush.
    for i in 0..4u32 {
        assert!(push(&mut a, dst, &payload(i, 100), None, 0));
    }
    let mut called = false;
    assert!(!a.push_tx(&mut |_| {
        called = true;
        None
    }));
    assert!(!called, "write must not run without a free buffer");
    // A write that declines keeps the buffer free.
    assert_eq!(a.flush().unwrap(), 4);
    assert!(a.push_tx(&mut |_| None));
    assert_eq!(a.tx.queued(), 0);

    let total = 3_000u32;
    let mut seen = vec![0u8; total as usize];
    seen[..4].fill(1);
    recv_n(&mut b, 4);
    let mut i = 4;
    let mut received = 4;
    while i < total {
        if push(&mut a, dst, &payload(i, 200 + i as usize % 1000), None, 0) {
            i += 1;
            continue;
        }
        flush_all(&mut a);
        b.recv_batch(&mut |_, d| {
            let id = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
            assert_eq!(d, payload(id as u32, d.len()));
            seen[id] += 1;
            received += 1;
        })
        .unwrap();
    }
    flush_all(&mut a);
    for (_, d) in recv_n(&mut b, total as usize - received) {
        seen[u32::from_be_bytes(d[..4].try_into().unwrap()) as usize] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "every datagram exactly once");
}

#[test]
fn send_errors_drop_one_datagram_and_gso_falls_back() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let mut b = bind(
        "127.0.0.1:0",
        UdpOptions {
            gro: false,
            ..UdpOptions::default()
        },
    );
    let dst = b.local_addr();
    let bad: SocketAddr = "127.0.0.1:0".parse().unwrap(); // port 0: EINVAL from the kernel
    assert!(push(&mut a, bad, b"lost", None, 0));
    assert!(push(&mut a, dst, b"kept", None, 0));
    assert_eq!(flush_all(&mut a), 1);
    assert_eq!(a.stats().tx_dropped, 1);
    assert_eq!(recv_n(&mut b, 1)[0].1, b"kept");

    // EINVAL on a GSO message turns GSO off; the queued GSO buffers still go out, split.
    assert!(a.gso_enabled());
    assert!(push(&mut a, bad, &[1u8; 300], Some(100), 0));
    let segs: Vec<Vec<u8>> = (0..5u32).map(|i| payload(i, 100)).collect();
    assert!(push(&mut a, dst, &segs.concat(), Some(100), 0));
    assert_eq!(flush_all(&mut a), 5);
    assert!(!a.gso_enabled());
    assert_eq!(a.capabilities().max_segments, 1);
    assert_eq!(a.stats().tx_dropped, 1 + 3);
    let got: Vec<Vec<u8>> = recv_n(&mut b, 5).into_iter().map(|(_, d)| d).collect();
    assert_eq!(got, segs);
}

#[test]
fn bad_transmit_metadata_is_dropped() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let size = a.tx.buf_size();
    for meta in [
        TxMeta {
            dst,
            src: None,
            len: 0,
            segment_size: None,
            ecn: 0,
        },
        TxMeta {
            dst,
            src: None,
            len: size + 1,
            segment_size: None,
            ecn: 0,
        },
        TxMeta {
            dst,
            src: None,
            len: 10,
            segment_size: Some(0),
            ecn: 0,
        },
    ] {
        assert!(a.push_tx(&mut |_| Some(meta)));
    }
    assert_eq!((a.tx.queued(), a.stats().tx_dropped), (0, 3));
    // All buffers came back.
    for _ in 0..a.batch {
        assert!(push(&mut a, dst, b"x", None, 0));
    }
}

#[test]
fn wait_times_out_and_wakes() {
    let mut a = bind("127.0.0.1:0", UdpOptions::default());
    let mut b = bind("127.0.0.1:0", UdpOptions::default());
    let t = Instant::now();
    b.wait(Some(Duration::from_millis(30))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(25));
    assert!(push(&mut a, b.local_addr(), b"wake", None, 0));
    flush_all(&mut a);
    let t = Instant::now();
    b.wait(Some(Duration::from_secs(5))).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(b.recv_batch(&mut |_, _| {}).unwrap(), 1);
    assert_eq!(
        b.recv_batch(&mut |_, _| {}).unwrap(),
        0,
        "nothing more: no blocking"
    );
}

#[test]
fn datapaths_can_move_to_worker_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<UdpDatapath>();
    assert_send::<crate::io::mem::MemDatapath>();
    let dp = bind("127.0.0.1:0", UdpOptions::default());
    let addr = dp.local_addr();
    let moved = std::thread::spawn(move || dp.local_addr()).join().unwrap();
    assert_eq!(moved, addr);
}
