//! The XDP steering program, run through BPF_PROG_TEST_RUN on crafted frames: verdicts
//! per packet kind, counters, and worker choice identical to `wire::steer`.
//! Needs root (CAP_BPF + CAP_NET_ADMIN); fails with a clear message otherwise.
#![cfg(feature = "xdp")]

use std::os::fd::AsFd;

use quench::io::xdp::loader::{ProgramSettings, XdpProgram};
use quench::io::xdp::{ProgramStats, RingSizes, Umem, XdpSocket};
use quench::wire::net::{FrameHeaders, ETHERTYPE_VLAN};
use quench::wire::steer::{fnv1a32, owner_of_datagram, CidLayout};
use rand::{Rng, SeedableRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const PORT: u16 = 4433;
const WORKERS: u32 = 4;
const V1: u32 = 1;
const V2: u32 = 0x6b33_43cf;

fn load(n_workers: u32) -> XdpProgram {
    let p = XdpProgram::load(&ProgramSettings {
        layout: CidLayout::default(),
        n_workers,
        drop_small_initial: true,
    })
    .unwrap_or_else(|e| {
        panic!("cannot load the XDP program (this test needs root / CAP_BPF): {e}")
    });
    p.set_ports(&[PORT, 8443]).unwrap();
    p.set_local_addrs(&["10.99.0.1".parse().unwrap(), "fd99::1".parse().unwrap()])
        .unwrap();
    for w in 0..n_workers {
        p.set_worker(w, 0, true).unwrap();
    }
    p.set_queue_owner(0, 0, true).unwrap();
    let all: Vec<u32> = (0..n_workers).collect();
    p.set_queue_workers(0, &all).unwrap();
    p
}

/// The worker `wire::steer` picks for `payload` arriving on queue 0, which `local` lists.
fn rust_choice(payload: &[u8], local: &[u32], n_workers: u32) -> Option<u32> {
    owner_of_datagram(payload, &CidLayout::default(), n_workers)
        .map(|o| o.resolve(local, n_workers))
}

fn frame(dst: &str, payload: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let dst: std::net::SocketAddr = dst.parse().unwrap();
    let src = if dst.is_ipv4() {
        "10.99.0.2:50000"
    } else {
        "[fd99::2]:50000"
    };
    let h = FrameHeaders {
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
        vlan,
        src: src.parse().unwrap(),
        dst,
        ecn: 0,
        hop_limit: 0,
    };
    let mut buf = vec![0u8; h.header_len() + payload.len()];
    buf[h.header_len()..].copy_from_slice(payload);
    let n = h.emit(&mut buf, payload.len()).unwrap();
    buf.truncate(n);
    buf
}

fn v4(payload: &[u8]) -> Vec<u8> {
    frame("10.99.0.1:4433", payload, None)
}

fn short(dcid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0x41u8];
    p.extend_from_slice(dcid);
    p.resize(len, 0xab);
    p
}

/// A long header of `ty` type bits (already version-specific) with `dcid`, padded to `len`.
fn long(version: u32, ty: u8, dcid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0xc0 | (ty << 4)];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(8);
    p.extend_from_slice(&[7; 8]);
    p.resize(len.max(p.len()), 0);
    p
}

fn server_cid(worker: u8) -> [u8; 12] {
    let mut c = [0x5au8; 12];
    c[0] = CidLayout::default().first_octet(1);
    c[3] = worker;
    c
}

/// Runs one frame; returns the verdict, the counter deltas and which worker was chosen.
fn run(p: &XdpProgram, f: &[u8]) -> (u32, ProgramStats, Option<u32>) {
    let before = p.stats();
    let hits_before = p.worker_hits(WORKERS);
    let v = p.test_run(f).expect("BPF_PROG_TEST_RUN");
    let after = p.stats();
    let hits = p.worker_hits(WORKERS);
    let chosen = (0..WORKERS).find(|&w| hits[w as usize] != hits_before[w as usize]);
    let d = ProgramStats {
        pass_not_ip: after.pass_not_ip - before.pass_not_ip,
        pass_not_udp: after.pass_not_udp - before.pass_not_udp,
        pass_other_port: after.pass_other_port - before.pass_other_port,
        pass_malformed: after.pass_malformed - before.pass_malformed,
        drop_short_initial: after.drop_short_initial - before.drop_short_initial,
        drop_fixed_bit: after.drop_fixed_bit - before.drop_fixed_bit,
        drop_bad_short: after.drop_bad_short - before.drop_bad_short,
        drop_bad_long: after.drop_bad_long - before.drop_bad_long,
        redirect: after.redirect - before.redirect,
        redirect_missteered: after.redirect_missteered - before.redirect_missteered,
        redirect_failed: after.redirect_failed - before.redirect_failed,
        pass_no_socket: after.pass_no_socket - before.pass_no_socket,
        pass_not_local: after.pass_not_local - before.pass_not_local,
    };
    assert_eq!(d.total(), 1, "exactly one counter per packet: {d:?}");
    (v, d, chosen)
}

#[test]
fn verdicts_without_sockets() {
    let p = load(WORKERS);
    // No XSK in the map yet: a steered packet falls back to the kernel, counted.
    let (v, d, w) = run(&p, &v4(&short(&server_cid(2), 60)));
    assert_eq!((v, d.redirect_failed, w), (XDP_PASS, 1, Some(2)));

    // Not ours: ARP, TCP, other port, truncated UDP header.
    let mut arp = v4(&short(&server_cid(1), 60));
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(run(&p, &arp).1.pass_not_ip, 1);
    let mut tcp = v4(&short(&server_cid(1), 60));
    tcp[23] = 6;
    assert_eq!(run(&p, &tcp).1.pass_not_udp, 1);
    let other = frame("10.99.0.1:53", &short(&server_cid(1), 60), None);
    assert_eq!(run(&p, &other).1.pass_other_port, 1);
    let whole = v4(&short(&server_cid(1), 60));
    let (v, d, _) = run(&p, &whole[..14 + 20 + 4]);
    assert_eq!((v, d.pass_malformed), (XDP_PASS, 1));
    let mut frag = v4(&short(&server_cid(1), 60));
    frag[20] = 0x20;
    assert_eq!(run(&p, &frag).1.pass_malformed, 1);
    // UDP length claiming more than the frame holds.
    let mut lying = v4(&short(&server_cid(1), 60));
    lying[38..40].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(run(&p, &lying).1.pass_malformed, 1);
    // To multicast or broadcast, from port 0: left to the kernel.
    for dst in ["224.0.0.251:4433", "255.255.255.255:4433", "[ff02::1]:4433"] {
        let f = frame(dst, &short(&server_cid(1), 60), None);
        assert_eq!(run(&p, &f).1.pass_malformed, 1, "{dst}");
    }
    let mut port0 = v4(&short(&server_cid(1), 60));
    port0[34..36].fill(0);
    assert_eq!(run(&p, &port0).1.pass_malformed, 1);
    // To our port on another host (a forwarding box's transit traffic): the kernel's.
    // An IPv6 packet to our IPv4 address mapped is not to that address.
    for dst in [
        "10.99.0.7:4433",
        "[fd99::7]:4433",
        "[::ffff:10.99.0.1]:4433",
    ] {
        let f = frame(dst, &short(&server_cid(1), 60), None);
        let (v, d, w) = run(&p, &f);
        assert_eq!(
            (v, d.pass_not_local, d.total(), w),
            (XDP_PASS, 1, 1, None),
            "{dst}"
        );
    }
    // The set is replaceable while loaded: an added address is served at once, a removed
    // one no longer.
    p.set_local_addrs(&["10.99.0.7".parse().unwrap()]).unwrap();
    let f = frame("10.99.0.7:4433", &short(&server_cid(1), 60), None);
    assert_eq!(run(&p, &f).1.redirect_failed, 1);
    assert_eq!(run(&p, &v4(&short(&server_cid(1), 60))).1.pass_not_local, 1);
    p.set_local_addrs(&["10.99.0.1".parse().unwrap(), "fd99::1".parse().unwrap()])
        .unwrap();
    // RFC 8200 §8.1: UDP over IPv6 with a zero checksum is invalid; the kernel drops it.
    let mut zero_sum = frame("[fd99::1]:4433", &short(&server_cid(1), 60), None);
    zero_sum[14 + 40 + 6..14 + 40 + 8].fill(0);
    assert_eq!(run(&p, &zero_sum).1.pass_malformed, 1);
}

#[test]
fn verdicts_with_sockets() {
    let p = load(WORKERS);
    // Unbound sockets with a UMEM and an RX ring are enough for the XSKMAP.
    let umem = Umem::new(2048, 64, false).unwrap();
    let sizes = RingSizes {
        fill: 32,
        completion: 32,
        rx: 32,
        tx: 32,
    };
    let socks: Vec<_> = (0..WORKERS)
        .map(|_| XdpSocket::unbound_for_map(&umem, sizes).expect("AF_XDP socket"))
        .collect();
    for (w, s) in socks.iter().enumerate() {
        p.set_xsk(w as u32, s.as_fd()).expect("XSKMAP update");
    }
    let ok = |f: Vec<u8>, worker: u32| {
        let (v, d, w) = run(&p, &f);
        assert_eq!((v, d.redirect, w), (XDP_REDIRECT, 1, Some(worker)), "{d:?}");
    };
    let dropped = |f: Vec<u8>| -> ProgramStats {
        let (v, d, w) = run(&p, &f);
        assert_eq!((v, w), (XDP_DROP, None), "{d:?}");
        d
    };

    // Short headers route by the worker byte; minimum size is DCID + 20.
    ok(v4(&short(&server_cid(3), 100)), 3);
    ok(v4(&short(&server_cid(6), 1 + 12 + 20)), 6 % WORKERS);
    assert_eq!(
        dropped(v4(&short(&server_cid(1), 1 + 12 + 19))).drop_bad_short,
        1
    );
    assert_eq!(dropped(v4(&[])).drop_bad_short, 1);
    let mut no_fixed = short(&server_cid(1), 60);
    no_fixed[0] = 0x01;
    assert_eq!(dropped(v4(&no_fixed)).drop_fixed_bit, 1);

    // VLAN and IPv6 carry the same decisions; port 8443 is ours too.
    ok(
        frame("10.99.0.1:4433", &short(&server_cid(1), 80), Some(100)),
        1,
    );
    ok(frame("[fd99::1]:8443", &short(&server_cid(2), 80), None), 2);
    let f = frame("10.99.0.1:4433", &short(&server_cid(1), 80), Some(100));
    assert_eq!(u16::from_be_bytes([f[12], f[13]]), ETHERTYPE_VLAN);

    // Initial: hashed client DCID, at least 1200 bytes (RFC 9000 §14.1), v1 and v2.
    let cdcid = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    let hw = fnv1a32(&cdcid) % WORKERS;
    ok(v4(&long(V1, 0, &cdcid, 1200)), hw);
    assert_eq!(
        dropped(v4(&long(V1, 0, &cdcid, 1199))).drop_short_initial,
        1
    );
    ok(
        frame("[fd99::1]:4433", &long(V2, 1, &cdcid, 1250), None),
        hw,
    );
    assert_eq!(dropped(v4(&long(V2, 1, &cdcid, 600))).drop_short_initial, 1);
    // v2 type 0 is Retry, v1 type 2 Handshake, 0-RTT alone may be small: not dropped.
    ok(v4(&long(V2, 0, &cdcid, 100)), hw);
    ok(v4(&long(V1, 2, &cdcid, 100)), hw);
    ok(v4(&long(V1, 1, &cdcid, 100)), hw);
    // A long header with a CID of ours reads the worker byte, Initial included (a client
    // switches to our CID after our first Initial, RFC 9000 §7.2); a client's DCID of our
    // length but not our first octet is hashed.
    ok(v4(&long(V1, 2, &server_cid(2), 100)), 2);
    ok(v4(&long(V1, 0, &server_cid(1), 1200)), 1);
    let mut random12 = server_cid(2);
    random12[0] = 0;
    ok(
        v4(&long(V1, 0, &random12, 1200)),
        fnv1a32(&random12) % WORKERS,
    );
    // Version Negotiation (version 0) may have the fixed bit clear; v1 may not.
    let mut vn = long(0, 0, &cdcid, 60);
    vn[0] = 0x80;
    ok(v4(&vn), hw);
    let mut bad = long(V1, 2, &cdcid, 60);
    bad[0] &= !0x40;
    assert_eq!(dropped(v4(&bad)).drop_fixed_bit, 1);
    // DCID longer than 20, and a DCID running past the datagram.
    assert_eq!(dropped(v4(&long(V1, 2, &[1; 21], 100))).drop_bad_long, 1);
    // A version we do not speak gets to userspace for Version Negotiation at 1200 bytes,
    // whatever its fixed bit and DCID length (RFC 8999); under 1200 it is dropped (RFC
    // 9000 §5.2.2).
    let grease = 0x1a2a_3a4a;
    let long_dcid = [7u8; 40];
    ok(
        v4(&long(grease, 0, &long_dcid, 1200)),
        fnv1a32(&long_dcid[..20]) % WORKERS,
    );
    let mut no_fixed_bit = long(grease, 0, &cdcid, 1200);
    no_fixed_bit[0] &= !0x40;
    ok(v4(&no_fixed_bit), hw);
    assert_eq!(
        dropped(v4(&long(grease, 0, &cdcid, 1199))).drop_short_initial,
        1
    );
    let mut trunc = vec![0xe0u8, 0, 0, 0, 1, 20];
    trunc.extend_from_slice(&[9; 10]);
    assert_eq!(dropped(v4(&trunc)).drop_bad_long, 1);
    assert_eq!(dropped(v4(&[0xc0, 0, 0])).drop_bad_long, 1);

    // Worker 3 bound to queue 1: a packet for it arriving on queue 0 goes to queue 0's
    // owner (worker 0) and is counted as mis-steered.
    p.set_worker(3, 1, true).unwrap();
    let (v, d, w) = run(&p, &v4(&short(&server_cid(3), 100)));
    assert_eq!((v, d.redirect_missteered, w), (XDP_REDIRECT, 1, Some(3)));
    // Client-chosen DCIDs stay on the arrival queue (test runs arrive on queue 0): with
    // workers 1 and 3 moved to queue 1, every Initial goes to 0 or 2, never mis-steered.
    p.set_worker(1, 1, true).unwrap();
    p.set_queue_workers(0, &[0, 2]).unwrap();
    p.set_queue_workers(1, &[1, 3]).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut seen = [0u32; WORKERS as usize];
    for _ in 0..200 {
        let dcid: Vec<u8> = (0..8).map(|_| rng.gen()).collect();
        let initial = long(V1, 0, &dcid, 1200);
        let (v, d, w) = run(&p, &v4(&initial));
        assert_eq!((v, d.redirect), (XDP_REDIRECT, 1), "{d:?}");
        assert_eq!(w, rust_choice(&initial, &[0, 2], WORKERS));
        seen[w.unwrap() as usize] += 1;
    }
    assert!(
        seen[0] > 0 && seen[2] > 0 && seen[1] == 0 && seen[3] == 0,
        "{seen:?}"
    );
    // Our CID naming worker 1 (now on queue 1) still goes to worker 1: mis-steered.
    let (_, d, w) = run(&p, &v4(&long(V1, 0, &server_cid(1), 1200)));
    assert_eq!((d.redirect_missteered, w), (1, Some(1)));
    // No socket on the arrival queue: the kernel gets it.
    p.set_queue_owner(0, 0, false).unwrap();
    let (v, d, _) = run(&p, &v4(&short(&server_cid(3), 100)));
    assert_eq!((v, d.pass_no_socket), (XDP_PASS, 1));
}

#[test]
fn worker_choice_matches_rust_on_random_dcids() {
    let p = load(WORKERS);
    let layout = CidLayout::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9000);
    for i in 0..3000 {
        let len = if i % 3 == 0 {
            12
        } else {
            rng.gen_range(0..=20)
        };
        let dcid: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let all: Vec<u32> = (0..WORKERS).collect();
        // Long header (Handshake, no size rule) with any DCID length.
        let f = long(V1, 2, &dcid, 200);
        let (_, _, got) = run(&p, &v4(&f));
        assert_eq!(
            got,
            rust_choice(&f, &all, WORKERS),
            "long header DCID {dcid:02x?}"
        );
        if len == 12 {
            let f = short(&dcid, 64);
            let (_, _, got) = run(&p, &frame("[fd99::1]:4433", &f, None));
            assert_eq!(
                got,
                rust_choice(&f, &all, WORKERS),
                "short header DCID {dcid:02x?}"
            );
            // Our shape: the byte decides in long headers too.
            let mut ours = dcid.clone();
            ours[0] = layout.first_octet(3);
            let f = long(V1, 2, &ours, 200);
            let (_, _, got) = run(&p, &v4(&f));
            assert_eq!(got, Some(u32::from(ours[3]) % WORKERS));
            assert_eq!(got, rust_choice(&f, &all, WORKERS));
        }
    }
    // Other worker counts, including ones that do not divide 256.
    for n in [1u32, 3, 7] {
        let p = load(n);
        for _ in 0..200 {
            let len = rng.gen_range(0..=20);
            let dcid: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let before = p.worker_hits(n);
            p.test_run(&v4(&long(V1, 2, &dcid, 200))).unwrap();
            let after = p.worker_hits(n);
            let got = (0..n).find(|&w| after[w as usize] != before[w as usize]);
            let all: Vec<u32> = (0..n).collect();
            assert_eq!(got, rust_choice(&long(V1, 2, &dcid, 200), &all, n));
        }
    }
}
