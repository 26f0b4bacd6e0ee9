//! `Recovery` across spaces: loss detection, PTO, congestion response, bookkeeping.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Instant;

const MDS: u64 = 1200;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(side: Side, congestion: CongestionAlgorithm) -> RecoveryConfig {
    RecoveryConfig {
        congestion,
        ..RecoveryConfig::new(side)
    }
}

fn server() -> Recovery<u64> {
    confirmed(config(Side::Server, CongestionAlgorithm::NewReno))
}

/// Recovery on `config`, max_ack_delay 25 ms, the handshake confirmed.
fn confirmed(config: RecoveryConfig) -> Recovery<u64> {
    let mut r = Recovery::new(config);
    r.set_max_ack_delay(ms(25));
    r.set_handshake_confirmed();
    r
}

/// A NewReno server whose packets are ECT(0)-marked, so CE counts are congestion signals.
fn ecn_server() -> Recovery<u64> {
    confirmed(RecoveryConfig {
        ecn: true,
        ..config(Side::Server, CongestionAlgorithm::NewReno)
    })
}

fn pkt(pn: u64, t: Instant) -> SentPacket<u64> {
    SentPacket {
        pn,
        time_sent: t,
        size: MDS as u16,
        ack_eliciting: true,
        in_flight: true,
        mtu_probe: false,
        ecn: false,
        data: pn,
    }
}

/// `pkt`, sent marked ECT(0).
fn marked(pn: u64, t: Instant) -> SentPacket<u64> {
    SentPacket {
        ecn: true,
        ..pkt(pn, t)
    }
}

/// Acked and lost packet numbers an ACK produced.
#[derive(Debug, Default)]
struct Outcome {
    acked: Vec<u64>,
    lost: Vec<u64>,
}

fn ack(
    r: &mut Recovery<u64>,
    now: Instant,
    epoch: Epoch,
    ranges: &[RangeInclusive<u64>],
) -> (Result<AckResult, UnsentPacketAcked>, Outcome) {
    ack_ecn(r, now, epoch, ranges, None)
}

fn ack_ecn(
    r: &mut Recovery<u64>,
    now: Instant,
    epoch: Epoch,
    ranges: &[RangeInclusive<u64>],
    ecn: Option<(u64, u64, u64)>,
) -> (Result<AckResult, UnsentPacketAcked>, Outcome) {
    let mut out = Outcome::default();
    let mut acked = Vec::new();
    let res = r.on_ack_received(
        now,
        epoch,
        ranges.iter().cloned(),
        Duration::ZERO,
        ecn,
        &mut |p| acked.push(p.data),
        &mut |p| out.lost.push(p.data),
    );
    out.acked = acked;
    (res, out)
}

fn timeout(r: &mut Recovery<u64>, now: Instant) -> (Option<ProbeRequest>, Vec<u64>) {
    let mut lost = Vec::new();
    let probe = r.on_loss_detection_timeout(now, &mut |p| lost.push(p.data));
    (probe, lost)
}

#[test]
fn packet_threshold_then_time_threshold() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..6 {
        r.on_packet_sent(t0 + ms(pn), Epoch::Data, pkt(pn, t0 + ms(pn)));
    }
    assert_eq!(r.bytes_in_flight(), 6 * MDS);
    let (res, out) = ack(&mut r, t0 + ms(100), Epoch::Data, &[5..=5]);
    let res = res.unwrap();
    assert!(res.newly_acked && res.largest_newly_acked && res.rtt_sampled);
    assert_eq!(r.rtt().smoothed(), ms(95));
    assert_eq!(out.acked, vec![5]);
    // Packet threshold 3: 0, 1, 2 are lost; 3 and 4 are not yet.
    assert_eq!(out.lost, vec![0, 1, 2]);
    assert_eq!(r.bytes_in_flight(), 2 * MDS);
    // Time threshold: 9/8 * max(srtt 95, latest 95) = 106.875 ms after pn 3 was sent.
    let loss_delay = Duration::from_micros(106_875);
    assert_eq!(r.loss_detection_timer(), Some(t0 + ms(3) + loss_delay));
    // Early calls do nothing.
    assert_eq!(timeout(&mut r, t0 + ms(50)), (None, vec![]));
    let (probe, lost) = timeout(&mut r, t0 + ms(3) + loss_delay);
    assert_eq!((probe, lost), (None, vec![3]));
    assert_eq!(r.loss_detection_timer(), Some(t0 + ms(4) + loss_delay));
    assert_eq!(r.stats().lost_packets, 4);
}

#[test]
fn time_threshold_uses_latest_rtt_when_larger() {
    let t0 = Instant::now();
    let mut r = server();
    r.on_packet_sent(t0, Epoch::Data, pkt(0, t0));
    ack(&mut r, t0 + ms(80), Epoch::Data, &[0..=0]).0.unwrap();
    let t1 = t0 + ms(100);
    r.on_packet_sent(t1, Epoch::Data, pkt(1, t1));
    r.on_packet_sent(t1 + ms(1), Epoch::Data, pkt(2, t1 + ms(1)));
    // latest 160 ms > srtt (7/8*80 + 1/8*159 = 89.875): delay 9/8 * 160 = 180 ms.
    ack(&mut r, t1 + ms(160), Epoch::Data, &[2..=2]).0.unwrap();
    assert_eq!(r.rtt().latest(), ms(159));
    let delay = ms(159) / 8 * 9;
    assert_eq!(r.loss_detection_timer(), Some(t1 + delay));
}

#[test]
fn pto_arming_backoff_and_reset() {
    let t0 = Instant::now();
    let mut r = server();
    r.on_packet_sent(t0, Epoch::Data, pkt(0, t0));
    // Before any sample: pto_base = 333 + 4 * 166.5 = 999 ms, plus max_ack_delay 25 ms.
    let pto = ms(1024);
    assert_eq!(r.pto(Epoch::Data), pto);
    assert_eq!(r.loss_detection_timer(), Some(t0 + pto));
    let (probe, lost) = timeout(&mut r, t0 + pto);
    assert_eq!(
        probe,
        Some(ProbeRequest {
            epoch: Epoch::Data,
            count: 2
        })
    );
    assert!(lost.is_empty());
    assert_eq!(r.pto_count(), 1);
    // Backoff doubles the period, measured from the last ack-eliciting send.
    assert_eq!(r.loss_detection_timer(), Some(t0 + pto * 2));
    timeout(&mut r, t0 + pto * 2);
    assert_eq!(r.loss_detection_timer(), Some(t0 + pto * 4));
    assert_eq!(r.pto(Epoch::Data), pto * 4);
    assert_eq!(r.stats().pto_count, 2);
    // The probe is acknowledged: backoff resets and nothing is left to arm.
    let t1 = t0 + pto * 4;
    r.on_packet_sent(t1, Epoch::Data, pkt(1, t1));
    ack(&mut r, t1 + ms(50), Epoch::Data, &[1..=1]).0.unwrap();
    assert_eq!(r.pto_count(), 0);
    // Packet 0 is lost by time threshold: the timer now serves loss detection.
    assert_eq!(r.bytes_in_flight(), 0);
    assert_eq!(r.loss_detection_timer(), None);
}

#[test]
fn pto_picks_earliest_space_and_skips_data_before_confirmation() {
    let t0 = Instant::now();
    let mut r = Recovery::<u64>::new(config(Side::Server, CongestionAlgorithm::Cubic));
    r.on_packet_sent(t0, Epoch::Data, pkt(0, t0));
    assert_eq!(
        r.loss_detection_timer(),
        None,
        "no Data PTO before confirmation"
    );
    r.on_packet_sent(t0 + ms(10), Epoch::Handshake, pkt(0, t0 + ms(10)));
    // Handshake space: no max_ack_delay.
    assert_eq!(r.loss_detection_timer(), Some(t0 + ms(10) + ms(999)));
    let (probe, _) = timeout(&mut r, t0 + ms(1009));
    assert_eq!(
        probe,
        Some(ProbeRequest {
            epoch: Epoch::Handshake,
            count: 2
        })
    );
}

#[test]
fn client_anti_deadlock_pto() {
    let t0 = Instant::now();
    let mut r = Recovery::<u64>::new(config(Side::Client, CongestionAlgorithm::Cubic));
    r.on_packet_sent(t0, Epoch::Initial, pkt(0, t0));
    let t1 = t0 + ms(50);
    ack(&mut r, t1, Epoch::Initial, &[0..=0]).0.unwrap();
    assert!(!r.in_flight_ack_eliciting(Epoch::Initial));
    // Nothing in flight, but the server has not validated us: arm from now.
    // pto_base = 50 + 4 * 25 = 150 ms.
    assert_eq!(r.loss_detection_timer(), Some(t1 + ms(150)));
    let (probe, _) = timeout(&mut r, t1 + ms(150));
    assert_eq!(
        probe,
        Some(ProbeRequest {
            epoch: Epoch::Initial,
            count: 1
        })
    );
    // Backed off, re-armed from the timeout.
    assert_eq!(r.loss_detection_timer(), Some(t1 + ms(150) + ms(300)));
    r.set_has_handshake_keys();
    let (probe, _) = timeout(&mut r, t1 + ms(450));
    assert_eq!(
        probe,
        Some(ProbeRequest {
            epoch: Epoch::Handshake,
            count: 1
        })
    );
    assert_eq!(r.pto_count(), 2);
    // A Handshake ACK proves the server validated us: timer off, backoff reset.
    let t2 = t1 + ms(500);
    r.on_packet_sent(t2, Epoch::Handshake, pkt(0, t2));
    ack(&mut r, t2 + ms(50), Epoch::Handshake, &[0..=0])
        .0
        .unwrap();
    assert_eq!(r.pto_count(), 0);
    assert_eq!(r.loss_detection_timer(), None);
}

/// A Retry makes the client drop its Initial packets (`discard_space`) without giving it
/// Handshake keys: its anti-deadlock probe must stay an Initial (RFC 9002 §6.2.2.1).
#[test]
fn after_a_retry_the_anti_deadlock_probe_is_still_an_initial() {
    let t0 = Instant::now();
    let mut r = Recovery::<u64>::new(config(Side::Client, CongestionAlgorithm::Cubic));
    r.on_packet_sent(t0, Epoch::Initial, pkt(0, t0));
    let t1 = t0 + ms(20);
    r.discard_space(Epoch::Initial, t1, &mut |_| {});
    r.on_packet_sent(t1, Epoch::Initial, pkt(1, t1));
    ack(&mut r, t1 + ms(50), Epoch::Initial, &[1..=1])
        .0
        .unwrap();
    let at = r.loss_detection_timer().expect("anti-deadlock timer armed");
    let (probe, _) = timeout(&mut r, at);
    assert_eq!(
        probe,
        Some(ProbeRequest {
            epoch: Epoch::Initial,
            count: 1
        })
    );
}

#[test]
fn client_keeps_backoff_until_address_validated() {
    let t0 = Instant::now();
    let mut r = Recovery::<u64>::new(config(Side::Client, CongestionAlgorithm::Cubic));
    r.on_packet_sent(t0, Epoch::Initial, pkt(0, t0));
    timeout(&mut r, t0 + ms(999));
    assert_eq!(r.pto_count(), 1);
    r.on_packet_sent(t0 + ms(999), Epoch::Initial, pkt(1, t0 + ms(999)));
    ack(&mut r, t0 + ms(1100), Epoch::Initial, &[1..=1])
        .0
        .unwrap();
    assert_eq!(r.pto_count(), 1, "§6.2.2.1: not reset before validation");
    r.set_peer_completed_address_validation(true);
    r.on_packet_sent(t0 + ms(1100), Epoch::Initial, pkt(2, t0 + ms(1100)));
    ack(&mut r, t0 + ms(1200), Epoch::Initial, &[2..=2])
        .0
        .unwrap();
    assert_eq!(r.pto_count(), 0);
}

#[test]
fn server_without_packets_in_flight_has_no_timer() {
    let t0 = Instant::now();
    let mut r = server();
    r.on_packet_sent(t0, Epoch::Initial, pkt(0, t0));
    ack(&mut r, t0 + ms(30), Epoch::Initial, &[0..=0])
        .0
        .unwrap();
    assert_eq!(r.loss_detection_timer(), None);
    // Amplification-blocked servers do not arm the PTO either.
    r.on_packet_sent(t0 + ms(40), Epoch::Initial, pkt(1, t0 + ms(40)));
    assert!(r.loss_detection_timer().is_some());
    r.set_anti_amplification_blocked(true);
    assert_eq!(r.loss_detection_timer(), None);
}

#[test]
fn discard_space_removes_bytes_in_flight() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..3 {
        r.on_packet_sent(t0, Epoch::Initial, pkt(pn, t0));
    }
    let mut small = pkt(0, t0);
    small.size = 100;
    r.on_packet_sent(t0, Epoch::Data, small);
    assert_eq!(r.bytes_in_flight(), 3 * MDS + 100);
    let mut discarded = Vec::new();
    r.discard_space(Epoch::Initial, t0 + ms(1), &mut |p| discarded.push(p.pn));
    assert_eq!(discarded, vec![0, 1, 2]);
    assert_eq!(r.bytes_in_flight(), 100);
    assert!(!r.in_flight_ack_eliciting(Epoch::Initial));
    assert_eq!(r.outstanding(Epoch::Initial).count(), 0);
    assert_eq!(r.stats().lost_packets, 0, "discarded, not lost");
    // The Data packet now arms the PTO alone.
    assert_eq!(r.loss_detection_timer(), Some(t0 + ms(1024)));
}

#[test]
fn acking_unsent_or_skipped_packets_is_an_error() {
    let t0 = Instant::now();
    let mut r = server();
    r.on_packet_sent(t0, Epoch::Data, pkt(0, t0));
    r.on_packet_sent(t0, Epoch::Data, pkt(2, t0)); // 1 skipped
    let (res, _) = ack(&mut r, t0 + ms(10), Epoch::Data, &[3..=3]);
    assert_eq!(
        res,
        Err(UnsentPacketAcked {
            epoch: Epoch::Data,
            pn: 3
        })
    );
    let (res, _) = ack(&mut r, t0 + ms(10), Epoch::Handshake, &[0..=0]);
    assert_eq!(
        res,
        Err(UnsentPacketAcked {
            epoch: Epoch::Handshake,
            pn: 0
        })
    );
    let (res, _) = ack(&mut r, t0 + ms(10), Epoch::Data, &[1..=2]);
    assert_eq!(
        res,
        Err(UnsentPacketAcked {
            epoch: Epoch::Data,
            pn: 1
        })
    );
    // Acking already-acked packets again is fine and changes nothing.
    let (res, out) = ack(&mut r, t0 + ms(10), Epoch::Data, &[0..=0]);
    assert!(res.unwrap().newly_acked);
    assert_eq!(out.acked, vec![0]);
    let (res, out) = ack(&mut r, t0 + ms(11), Epoch::Data, &[0..=0]);
    assert_eq!(res.unwrap(), AckResult::default());
    assert!(out.acked.is_empty());
}

#[test]
fn one_window_reduction_per_round_trip() {
    let t0 = Instant::now();
    let mut r = server();
    assert_eq!(r.congestion_window(), 10 * MDS);
    for pn in 0..10 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    let t1 = t0 + ms(100);
    let (_, out) = ack(&mut r, t1, Epoch::Data, &[9..=9]);
    assert_eq!(out.lost, (0..=6).collect::<Vec<_>>());
    assert_eq!(r.congestion_window(), 5 * MDS);
    assert_eq!(r.stats().congestion_events, 1);
    // More losses of packets sent before recovery began: no further reduction.
    r.on_packet_sent(t1, Epoch::Data, pkt(10, t1));
    let t2 = t1 + ms(50);
    for pn in 11..15 {
        r.on_packet_sent(t2, Epoch::Data, pkt(pn, t2));
    }
    let (_, out) = ack(&mut r, t2 + ms(100), Epoch::Data, &[14..=14]);
    // 7 and 8 by time, 10 and 11 by packet threshold.
    assert_eq!(out.lost, vec![7, 8, 10, 11]);
    // 11 was sent after recovery started: that is a new round trip.
    assert_eq!(r.stats().congestion_events, 2);
    assert_eq!(r.congestion_window(), 2 * MDS + MDS / 2);
}

/// RFC 9438 §5.8: CUBIC's clock stops while the sender is application limited, even with
/// data in flight (a request/response connection), so the first ACK after such a stretch
/// grows the window as if it had not passed: never the 1.5× jump ten seconds on the curve
/// would give.
#[test]
fn cubic_clock_stops_while_application_limited() {
    let growth_after = |limited: bool| {
        let t0 = Instant::now();
        let mut r = confirmed(config(Side::Server, CongestionAlgorithm::Cubic));
        for pn in 0..5 {
            r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
        }
        // 0 and 1 lost: a reduction, and the next ACK starts congestion avoidance.
        ack(&mut r, t0 + ms(100), Epoch::Data, &[4..=4]).0.unwrap();
        ack(&mut r, t0 + ms(101), Epoch::Data, &[2..=4]).0.unwrap();
        let mut now = t0 + ms(200);
        let mut pn = 5;
        r.on_packet_sent(now, Epoch::Data, pkt(pn, now));
        now += ms(100);
        pn += 1;
        r.on_packet_sent(now, Epoch::Data, pkt(pn, now));
        ack(&mut r, now, Epoch::Data, &[pn - 1..=pn - 1]).0.unwrap();
        // Ten seconds of one packet in flight at a time, each acknowledged; `limited`
        // says whether the application had more to send.
        r.set_app_limited(limited);
        for _ in 0..100 {
            now += ms(100);
            pn += 1;
            r.on_packet_sent(now, Epoch::Data, pkt(pn, now));
            ack(&mut r, now, Epoch::Data, &[pn - 1..=pn - 1]).0.unwrap();
        }
        r.set_app_limited(false);
        let before = r.congestion_window();
        now += ms(100);
        ack(&mut r, now, Epoch::Data, &[pn..=pn]).0.unwrap();
        (before, r.congestion_window() - before)
    };
    let (window, limited) = growth_after(true);
    // Just after the reduction the curve is concave: under half a datagram per datagram.
    assert!(
        limited > 0 && limited < MDS / 4,
        "grew {limited} at {window}"
    );
    // The same ten seconds not application limited are time on the curve.
    let (_, unlimited) = growth_after(false);
    assert!(unlimited > MDS / 4, "grew {unlimited}");
}

#[test]
fn no_growth_for_packets_sent_during_recovery_or_when_app_limited() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..5 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    // 0 and 1 lost; 4 acked: but the reduction covers everything sent until now.
    ack(&mut r, t0 + ms(100), Epoch::Data, &[4..=4]).0.unwrap();
    assert_eq!(r.congestion_window(), 5 * MDS);
    ack(&mut r, t0 + ms(101), Epoch::Data, &[2..=4]).0.unwrap();
    assert_eq!(r.congestion_window(), 5 * MDS, "sent before recovery start");
    let t1 = t0 + ms(200);
    r.on_packet_sent(t1, Epoch::Data, pkt(5, t1));
    r.set_app_limited(true);
    ack(&mut r, t1 + ms(100), Epoch::Data, &[5..=5]).0.unwrap();
    assert_eq!(r.congestion_window(), 5 * MDS, "app limited");
    r.set_app_limited(false);
    let t2 = t1 + ms(200);
    for pn in 6..11 {
        r.on_packet_sent(t2, Epoch::Data, pkt(pn, t2));
    }
    assert_eq!(r.send_window(), 0);
    ack(&mut r, t2 + ms(100), Epoch::Data, &[6..=10]).0.unwrap();
    assert_eq!(
        r.congestion_window(),
        6 * MDS,
        "one datagram per window in avoidance"
    );
    assert_eq!(r.send_window(), 6 * MDS);
}

#[test]
fn a_reduction_for_packets_that_were_only_reordered_is_undone() {
    for algorithm in [CongestionAlgorithm::NewReno, CongestionAlgorithm::Cubic] {
        let t0 = Instant::now();
        let mut r = confirmed(config(Side::Server, algorithm));
        for pn in 0..10 {
            r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
        }
        // 1 and 2 are overtaken by 3 later packets: declared lost, the window cut.
        let t1 = t0 + ms(100);
        let (_, out) = ack(&mut r, t1, Epoch::Data, &[3..=5, 0..=0]);
        assert_eq!(out.lost, vec![1, 2], "{algorithm:?}");
        let cut = r.congestion_window();
        assert!(cut < 10 * MDS, "{algorithm:?}: {cut}");
        // Their acknowledgement arrives: one of them, then the other.
        ack(&mut r, t1 + ms(1), Epoch::Data, &[1..=1]).0.unwrap();
        assert_eq!(r.congestion_window(), cut, "{algorithm:?}: 2 not yet");
        assert_eq!(r.stats().spurious_congestion_events, 0);
        ack(&mut r, t1 + ms(2), Epoch::Data, &[6..=6, 2..=2])
            .0
            .unwrap();
        assert_eq!(r.congestion_window(), 10 * MDS, "{algorithm:?}: undone");
        assert_eq!(r.ssthresh(), u64::MAX, "{algorithm:?}: back in slow start");
        let stats = r.stats();
        assert_eq!(
            (stats.congestion_events, stats.spurious_congestion_events),
            (1, 1),
            "{algorithm:?}"
        );
        // An undone event is over: a later ACK of the same packets changes nothing.
        ack(&mut r, t1 + ms(3), Epoch::Data, &[7..=7, 0..=2])
            .0
            .unwrap();
        assert_eq!(r.stats().spurious_congestion_events, 1, "{algorithm:?}");
    }
}

#[test]
fn the_packet_threshold_grows_to_the_reordering_seen() {
    let t0 = Instant::now();
    let mut r = server();
    assert_eq!(r.packet_threshold(), 3);
    for pn in 0..20 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    let t1 = t0 + ms(100);
    let (_, out) = ack(&mut r, t1, Epoch::Data, &[4..=12, 0..=0]);
    assert_eq!(out.lost, vec![1, 2, 3]);
    // 1 to 3 arrive late, overtaken by up to 13 packets (4..=16 acknowledged by then).
    ack(&mut r, t1 + ms(1), Epoch::Data, &[13..=16, 1..=3])
        .0
        .unwrap();
    assert_eq!(r.packet_threshold(), 16);
    assert_eq!(r.stats().spurious_congestion_events, 1);
    // Now 17 may be overtaken by 2 (its loss waits for the time threshold instead).
    let (_, out) = ack(&mut r, t1 + ms(2), Epoch::Data, &[18..=19]);
    assert!(out.lost.is_empty(), "{:?}", out.lost);
    // A new path starts from RFC 9002's threshold again.
    r.reset_for_new_path(t1 + ms(3), 20);
    assert_eq!(r.packet_threshold(), 3);
}

#[test]
fn a_raised_packet_threshold_returns_to_3_after_16_real_cuts() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..20 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    let t1 = t0 + ms(100);
    ack(&mut r, t1, Epoch::Data, &[4..=12, 0..=0]).0.unwrap();
    ack(&mut r, t1 + ms(1), Epoch::Data, &[13..=19, 1..=3])
        .0
        .unwrap();
    assert_eq!(r.packet_threshold(), 19);
    // Round after round, one packet really lost (a hole the next ACKs never fill).
    let mut pn = 20;
    let mut t = t1 + ms(2);
    for round in 1..=16 {
        let first = pn;
        for _ in 0..40 {
            r.on_packet_sent(t, Epoch::Data, pkt(pn, t));
            pn += 1;
        }
        t += ms(100);
        let (_, out) = ack(&mut r, t, Epoch::Data, &[first + 1..=pn - 1]);
        assert_eq!(out.lost, vec![first], "round {round}");
        let expect = if round < 16 { 19 } else { 3 };
        assert_eq!(r.packet_threshold(), expect, "round {round}");
        t += ms(1);
    }
    assert_eq!(r.stats().congestion_events, 17);
}

#[test]
fn the_packet_threshold_stops_at_its_cap() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..200 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    let t1 = t0 + ms(100);
    let (_, out) = ack(&mut r, t1, Epoch::Data, &[4..=4, 0..=0]);
    assert_eq!(out.lost, vec![1]);
    ack(&mut r, t1 + ms(1), Epoch::Data, &[5..=150, 1..=1])
        .0
        .unwrap();
    assert_eq!(r.packet_threshold(), 32);
}

#[test]
fn a_reduction_stands_while_any_of_its_losses_stays_unacknowledged() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..12 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    let t1 = t0 + ms(100);
    let (_, out) = ack(&mut r, t1, Epoch::Data, &[4..=6, 0..=0]);
    assert_eq!(out.lost, vec![1, 2, 3]);
    let cut = r.congestion_window();
    // 1 and 3 arrived late; 2 was really lost.
    ack(&mut r, t1 + ms(1), Epoch::Data, &[7..=11, 3..=3, 1..=1])
        .0
        .unwrap();
    assert_eq!(r.congestion_window(), cut);
    assert_eq!(r.stats().spurious_congestion_events, 0);
}

#[test]
fn a_later_reduction_replaces_the_record_of_the_earlier_one() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..6 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    let t1 = t0 + ms(100);
    ack(&mut r, t1, Epoch::Data, &[4..=5]).0.unwrap();
    let first_cut = r.congestion_window();
    assert_eq!(r.stats().congestion_events, 1);
    // A new round trip, and a new loss in it.
    let t1 = t1 + ms(1);
    for pn in 6..12 {
        r.on_packet_sent(t1, Epoch::Data, pkt(pn, t1));
    }
    let t2 = t1 + ms(100);
    ack(&mut r, t2, Epoch::Data, &[8..=11]).0.unwrap();
    assert_eq!(r.stats().congestion_events, 2);
    // Acknowledging the first event's losses undoes nothing: the second cut stands.
    let second_cut = r.congestion_window();
    assert!(second_cut < first_cut);
    ack(&mut r, t2 + ms(1), Epoch::Data, &[0..=3]).0.unwrap();
    assert_eq!(r.congestion_window(), second_cut);
    // The second event's own losses, acknowledged, take it back to the first cut.
    ack(&mut r, t2 + ms(2), Epoch::Data, &[6..=7]).0.unwrap();
    assert_eq!(r.congestion_window(), first_cut);
    assert_eq!(r.stats().spurious_congestion_events, 1);
}

#[test]
fn an_ecn_mark_is_never_undone() {
    let t0 = Instant::now();
    let mut r = ecn_server();
    for pn in 0..8 {
        r.on_packet_sent(t0, Epoch::Data, marked(pn, t0));
    }
    let t1 = t0 + ms(100);
    ack_ecn(&mut r, t1, Epoch::Data, &[4..=4, 0..=0], Some((2, 0, 1)))
        .0
        .unwrap();
    let cut = r.congestion_window();
    assert!(cut < 10 * MDS);
    // The packets declared lost with the mark arrive: the mark still stands.
    ack_ecn(&mut r, t1 + ms(1), Epoch::Data, &[0..=4], Some((5, 0, 1)))
        .0
        .unwrap();
    assert_eq!(r.congestion_window(), cut);
    assert_eq!(r.stats().spurious_congestion_events, 0);
}

#[test]
fn persistent_congestion_collapses_window() {
    for (ranges, persistent) in [(vec![11..=11], true), (vec![11..=11, 5..=5], false)] {
        let t0 = Instant::now();
        let mut r = server();
        r.on_packet_sent(t0, Epoch::Data, pkt(0, t0));
        ack(&mut r, t0 + ms(100), Epoch::Data, &[0..=0]).0.unwrap();
        // srtt 100, rttvar 50: duration = (100 + 200 + 25) * 3 = 975 ms.
        for pn in 1..=10 {
            let t = t0 + ms(200 * pn);
            r.on_packet_sent(t, Epoch::Data, pkt(pn, t));
        }
        let t11 = t0 + ms(2100);
        r.on_packet_sent(t11, Epoch::Data, pkt(11, t11));
        // This sample (150 ms) is above min_rtt (100 ms).
        let (_, out) = ack(&mut r, t11 + ms(150), Epoch::Data, &ranges);
        assert_eq!(out.lost.len(), if persistent { 10 } else { 9 });
        // §5.2: persistent congestion restarts min_rtt from the newest sample.
        let min = if persistent { ms(150) } else { ms(100) };
        assert_eq!(r.rtt().min(), min);
        assert_eq!(
            r.stats().persistent_congestion_events,
            u64::from(persistent)
        );
        if persistent {
            // Minimum window, then slow start from it on the acked bytes (11 was sent
            // after the period ended).
            assert_eq!(r.congestion_window(), 2 * MDS + MDS);
        } else {
            // Slow start took the first ACK to 11 datagrams; one halving.
            assert_eq!(r.congestion_window(), 11 * MDS / 2);
        }
    }
}

#[test]
fn ecn_ce_increase_is_a_congestion_event() {
    let t0 = Instant::now();
    let mut r = ecn_server();
    for pn in 0..4 {
        r.on_packet_sent(t0, Epoch::Data, marked(pn, t0));
    }
    ack_ecn(&mut r, t0 + ms(50), Epoch::Data, &[0..=0], Some((1, 0, 0)))
        .0
        .unwrap();
    assert_eq!(r.stats().congestion_events, 0);
    ack_ecn(&mut r, t0 + ms(51), Epoch::Data, &[0..=1], Some((1, 0, 1)))
        .0
        .unwrap();
    assert_eq!(r.stats().congestion_events, 1);
    assert_eq!(r.stats().ecn_ce_events, 1);
    // 11 datagrams after the first ACK in slow start, then halved.
    assert_eq!(r.congestion_window(), 11 * MDS / 2);
    ack_ecn(&mut r, t0 + ms(52), Epoch::Data, &[0..=2], Some((2, 0, 1)))
        .0
        .unwrap();
    assert_eq!(r.stats().ecn_ce_events, 1, "same count: no new signal");
    assert_eq!(r.ecn().state(), ecn::EcnState::Capable);
}

/// Without ECT marks on our packets no ECN count can be validated: CE reports are ignored.
#[test]
fn ecn_counts_for_unmarked_packets_are_ignored() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..4 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    ack_ecn(&mut r, t0 + ms(50), Epoch::Data, &[0..=1], Some((0, 0, 2)))
        .0
        .unwrap();
    assert_eq!(r.stats().congestion_events, 0);
    assert_eq!(r.stats().ecn_ce_events, 0);
    assert_eq!(r.congestion_window(), 12 * MDS, "slow start went on");
}

/// A path that clears the marks: the ACK of marked packets has no counts, so validation
/// fails (RFC 9000 §13.4.2.1), marking stops and later CE counts are no congestion. A new
/// path is tested again, and marked packets all lost there fail it too.
#[test]
fn ecn_validation_failure_stops_marking_until_a_new_path() {
    let t0 = Instant::now();
    let mut r = ecn_server();
    assert!(r.ecn_marking(t0));
    for pn in 0..4 {
        r.on_packet_sent(t0, Epoch::Data, marked(pn, t0));
    }
    ack_ecn(&mut r, t0 + ms(50), Epoch::Data, &[0..=1], None)
        .0
        .unwrap();
    assert_eq!(r.ecn().failure(), Some(ecn::EcnFailure::NoCounts));
    assert!(!r.ecn_marking(t0 + ms(50)));
    ack_ecn(&mut r, t0 + ms(51), Epoch::Data, &[0..=3], Some((0, 0, 2)))
        .0
        .unwrap();
    assert_eq!(r.stats().congestion_events, 0);
    assert_eq!(r.stats().ecn_failures, 1);

    let t1 = t0 + ms(100);
    r.reset_for_new_path(t1, 4);
    r.restart_ecn(4);
    assert_eq!(
        r.ecn().state(),
        ecn::EcnState::Testing {
            marked: 0,
            since: None
        }
    );
    let mut pn = 4;
    while r.ecn_marking(t1) {
        r.on_packet_sent(t1, Epoch::Data, marked(pn, t1));
        pn += 1;
    }
    assert_eq!(pn - 4, ecn::TESTING_PACKETS);
    // Unmarked packets after the test get through; every marked one is lost. The counts
    // are those of the failed path, which stayed the baseline.
    for p in pn..pn + 4 {
        r.on_packet_sent(t1, Epoch::Data, pkt(p, t1));
    }
    ack_ecn(
        &mut r,
        t1 + ms(50),
        Epoch::Data,
        &[pn..=pn + 3],
        Some((0, 0, 2)),
    )
    .0
    .unwrap();
    assert_eq!(r.ecn().failure(), Some(ecn::EcnFailure::MarkedLost));
    assert_eq!(r.stats().ecn_failures, 2);
}

/// A marked packet declared lost and then acknowledged after all arrived: once the test's
/// other nine are lost too, not every marked packet was, so ECN does not fail.
#[test]
fn a_late_acknowledged_marked_packet_is_not_lost_for_ecn() {
    let t0 = Instant::now();
    let mut r = ecn_server();
    let mut pn = 0;
    while r.ecn_marking(t0) {
        r.on_packet_sent(t0, Epoch::Data, marked(pn, t0));
        pn += 1;
    }
    assert_eq!(pn, ecn::TESTING_PACKETS);
    for p in pn..pn + 10 {
        r.on_packet_sent(t0, Epoch::Data, pkt(p, t0));
    }
    // Unmarked 10 arrives: 0..=7 are lost (packet threshold).
    ack_ecn(
        &mut r,
        t0 + ms(50),
        Epoch::Data,
        &[10..=10],
        Some((0, 0, 0)),
    )
    .0
    .unwrap();
    // 3 arrives late (which raises the packet threshold to 8); then 19 makes 8 and 9 lost.
    ack_ecn(
        &mut r,
        t0 + ms(51),
        Epoch::Data,
        &[10..=10, 3..=3],
        Some((1, 0, 0)),
    )
    .0
    .unwrap();
    let (_, out) = ack_ecn(
        &mut r,
        t0 + ms(52),
        Epoch::Data,
        &[19..=19, 10..=10, 3..=3],
        Some((1, 0, 0)),
    );
    assert!(out.lost.starts_with(&[8, 9]), "{:?}", out.lost);
    assert_eq!(r.ecn().failure(), None, "{:?}", r.ecn().state());
    assert_eq!(r.ecn().state(), ecn::EcnState::Unknown);
}

/// RFC 9000 §9.4: a CE mark on a packet of the old path is no congestion on the new one
/// (the counts still pass and stay the baseline); one on the new path is.
#[test]
fn ce_marks_on_the_old_path_do_not_cut_the_new_paths_window() {
    let t0 = Instant::now();
    let mut r = ecn_server();
    for pn in 0..4 {
        r.on_packet_sent(t0, Epoch::Data, marked(pn, t0));
    }
    let t1 = t0 + ms(10);
    r.reset_for_new_path(t1, 4);
    r.restart_ecn(4);
    for pn in 4..8 {
        r.on_packet_sent(t1, Epoch::Data, marked(pn, t1));
    }
    let window = r.congestion_window();
    ack_ecn(&mut r, t1 + ms(50), Epoch::Data, &[0..=3], Some((3, 0, 1)))
        .0
        .unwrap();
    assert_eq!(r.stats().congestion_events, 0);
    assert_eq!(r.congestion_window(), window);
    ack_ecn(&mut r, t1 + ms(60), Epoch::Data, &[0..=5], Some((4, 0, 2)))
        .0
        .unwrap();
    assert_eq!(r.stats().congestion_events, 1);
    assert_eq!(r.ecn().failure(), None);
}

#[test]
fn non_in_flight_packets_are_tracked_but_do_not_count() {
    let t0 = Instant::now();
    let mut r = server();
    let mut ack_only = pkt(0, t0);
    ack_only.ack_eliciting = false;
    ack_only.in_flight = false;
    r.on_packet_sent(t0, Epoch::Data, ack_only);
    assert_eq!(r.bytes_in_flight(), 0);
    assert_eq!(r.loss_detection_timer(), None);
    r.on_packet_sent(t0, Epoch::Data, pkt(1, t0));
    let (res, out) = ack(&mut r, t0 + ms(40), Epoch::Data, &[0..=1]);
    assert!(res.unwrap().rtt_sampled);
    assert_eq!(
        out.acked,
        vec![0, 1],
        "the ACK-only packet is reported for ack-of-ack"
    );
}

#[test]
fn asks_for_an_ack_eliciting_packet_after_many_ack_only_packets() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..16 {
        let mut p = pkt(pn, t0);
        p.ack_eliciting = false;
        p.in_flight = false;
        assert!(!r.needs_ack_eliciting(Epoch::Data));
        r.on_packet_sent(t0, Epoch::Data, p);
    }
    assert!(r.needs_ack_eliciting(Epoch::Data));
    // The PING goes out and is acknowledged: the ACK-only packets below it are cleared
    // by the packet threshold, the rest by the ACK itself.
    r.on_packet_sent(t0, Epoch::Data, pkt(16, t0));
    assert!(!r.needs_ack_eliciting(Epoch::Data));
    let (_, out) = ack(&mut r, t0 + ms(30), Epoch::Data, &[14..=16]);
    assert_eq!(out.acked, vec![14, 15, 16]);
    assert_eq!(out.lost.len(), 14);
    assert_eq!(r.outstanding(Epoch::Data).count(), 0);
    assert_eq!(
        r.stats().congestion_events,
        0,
        "ACK-only losses are not congestion"
    );
}

#[test]
fn recovery_paces_after_a_burst() {
    let t0 = Instant::now();
    let mut r = server();
    let mut n = 0;
    while r.pacing_next_send(t0, MDS).is_none() {
        r.on_packet_sent(t0, Epoch::Data, pkt(n, t0));
        n += 1;
    }
    assert_eq!(n, 10);
    let next = r.pacing_next_send(t0, MDS).unwrap();
    // 1.25 * 12000 B / 333 ms: one datagram per 26.64 ms.
    let gap = next.duration_since(t0);
    assert!(gap > ms(26) && gap < ms(27), "{gap:?}");
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        epoch: usize,
        size: u16,
        eliciting: bool,
        in_flight: bool,
        skip: bool,
    },
    Ack {
        epoch: usize,
        picks: Vec<(u64, u64)>,
        ce: u64,
    },
    Advance(u64),
    Timeout,
    Discard(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 20u16..1500, any::<bool>(), any::<bool>(), proptest::bool::weighted(0.03))
            .prop_map(|(epoch, size, eliciting, in_flight, skip)| Op::Send {
                epoch, size, eliciting, in_flight: in_flight || eliciting, skip
            }),
        3 => (0usize..3, proptest::collection::vec((0u64..60, 0u64..5), 1..4), 0u64..3)
            .prop_map(|(epoch, picks, ce)| Op::Ack { epoch, picks, ce }),
        2 => (0u64..400).prop_map(Op::Advance),
        1 => Just(Op::Timeout),
        1 => (0usize..2).prop_map(Op::Discard),
    ]
}

/// Descending, disjoint, non-adjacent ranges below `limit` from random picks.
fn to_ranges(picks: &[(u64, u64)], limit: u64) -> Vec<RangeInclusive<u64>> {
    let mut set = std::collections::BTreeSet::new();
    for &(start, len) in picks {
        for pn in start..=start + len {
            if pn < limit {
                set.insert(pn);
            }
        }
    }
    let mut out: Vec<RangeInclusive<u64>> = Vec::new();
    for pn in set.into_iter().rev() {
        match out.last_mut() {
            Some(r) if *r.start() == pn + 1 => *r = pn..=*r.end(),
            _ => out.push(pn..=pn),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random traffic, ACK and loss patterns keep every counter consistent with the set of
    /// packets still outstanding, and every packet comes back exactly once.
    #[test]
    fn bytes_in_flight_stays_consistent(
        ops in proptest::collection::vec(op(), 1..120),
        cubic in any::<bool>(),
        side_server in any::<bool>(),
    ) {
        let side = if side_server { Side::Server } else { Side::Client };
        let algo = if cubic { CongestionAlgorithm::Cubic } else { CongestionAlgorithm::NewReno };
        let mut r = Recovery::<(usize, u64)>::new(config(side, algo));
        let mut now = Instant::now();
        let mut next_pn = [0u64; 3];
        // (epoch, pn) -> (size, in_flight, ack_eliciting)
        let mut model: BTreeMap<(usize, u64), (u64, bool, bool)> = BTreeMap::new();
        let mut discarded = [false; 3];
        for op in ops {
            let mut gone: Vec<(usize, u64)> = Vec::new();
            match op {
                Op::Send { epoch, size, eliciting, in_flight, skip } => {
                    if discarded[epoch] { continue; }
                    if skip { next_pn[epoch] += 1; }
                    let pn = next_pn[epoch];
                    next_pn[epoch] += 1;
                    r.on_packet_sent(now, Epoch::ALL[epoch], SentPacket {
                        pn, time_sent: now, size, ack_eliciting: eliciting, in_flight, mtu_probe: false, ecn: false, data: (epoch, pn),
                    });
                    model.insert((epoch, pn), (u64::from(size), in_flight, eliciting));
                    if epoch == 2 && !discarded[0] && next_pn[2] > 3 {
                        r.set_handshake_confirmed();
                    }
                }
                Op::Ack { epoch, picks, ce } => {
                    let ranges = to_ranges(&picks, next_pn[epoch]);
                    let (mut acked, mut lost) = (Vec::new(), Vec::new());
                    let res = r.on_ack_received(
                        now, Epoch::ALL[epoch], ranges.iter().cloned(), ms(3), Some((0, 0, ce)),
                        &mut |p| acked.push(p.data), &mut |p| lost.push(p.data));
                    gone = acked;
                    gone.extend(lost);
                    if res.is_err() {
                        // A skipped number was acked: the connection would close here.
                        for k in &gone { prop_assert!(model.remove(k).is_some()); }
                        break;
                    }
                }
                Op::Advance(d) => now += ms(d),
                Op::Timeout => {
                    if let Some(t) = r.loss_detection_timer() { now = now.max(t); }
                    let mut g = Vec::new();
                    r.on_loss_detection_timeout(now, &mut |p| g.push(p.data));
                    gone = g;
                }
                Op::Discard(epoch) => {
                    discarded[epoch] = true;
                    let mut g = Vec::new();
                    r.discard_space(Epoch::ALL[epoch], now, &mut |p| g.push(p.data));
                    gone = g;
                }
            }
            for k in gone {
                prop_assert!(model.remove(&k).is_some(), "packet {:?} returned twice", k);
            }
            let expect: u64 = model.values().filter(|v| v.1).map(|v| v.0).sum();
            prop_assert_eq!(r.bytes_in_flight(), expect);
            for e in 0..3 {
                let eliciting = model.iter().any(|(k, v)| k.0 == e && v.1 && v.2);
                prop_assert_eq!(r.in_flight_ack_eliciting(Epoch::ALL[e]), eliciting);
                let count = model.keys().filter(|k| k.0 == e).count();
                prop_assert_eq!(r.outstanding(Epoch::ALL[e]).count(), count);
            }
            prop_assert!(r.congestion_window() >= 2 * MDS);
            if side_server && model.is_empty() {
                // §6.2.2.1: a server with nothing outstanding has no timer.
                prop_assert_eq!(r.loss_detection_timer(), None);
            }
        }
    }
}

/// RFC 9000 §9.4: after a reset for a new path, acknowledgments and losses of packets sent
/// on the old one feed neither the RTT estimate nor the congestion window.
#[test]
fn old_path_packets_do_not_feed_the_new_path() {
    let t0 = Instant::now();
    let mut r = server();
    for pn in 0..10 {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
    }
    r.reset_for_new_path(t0, 10);
    let window = r.congestion_window();
    let rtt = r.rtt().smoothed();
    // A late ACK of the old path's packets, declaring the oldest lost.
    let late = t0 + Duration::from_secs(5);
    let (res, out) = ack(&mut r, late, Epoch::Data, &[5..=9]);
    res.unwrap();
    assert_eq!(out.lost, vec![0, 1, 2, 3, 4]);
    assert_eq!(r.rtt().smoothed(), rtt, "no RTT sample from the old path");
    assert_eq!(
        r.congestion_window(),
        window,
        "neither growth nor reduction"
    );
    assert_eq!(r.stats().congestion_events, 0);
    // Packets of the new path do count.
    for pn in 10..12 {
        r.on_packet_sent(late, Epoch::Data, pkt(pn, late));
    }
    ack(&mut r, late + ms(20), Epoch::Data, &[10..=11])
        .0
        .unwrap();
    assert_ne!(r.rtt().smoothed(), rtt);
    assert!(r.congestion_window() > window);
}

/// RFC 9000 §9.4: after a path change, what the old path still has in flight is tracked
/// (acknowledged or lost as usual) but no longer counts against the new path's window, so
/// the new path can send at once even when the old one left a full window in flight.
#[test]
fn the_old_paths_flight_does_not_block_the_new_path() {
    let t0 = Instant::now();
    let mut r = server();
    let window = r.send_window();
    let mut pn = 0;
    while r.send_window() >= MDS {
        r.on_packet_sent(t0, Epoch::Data, pkt(pn, t0));
        pn += 1;
    }
    let old = pn;
    r.reset_for_new_path(t0 + ms(1), old);
    assert_eq!(r.send_window(), window, "a fresh window for the new path");
    assert_eq!(
        r.bytes_in_flight(),
        old * MDS,
        "the old flight is still tracked"
    );
    // New-path packets count against the new window...
    r.on_packet_sent(t0 + ms(2), Epoch::Data, pkt(old, t0 + ms(2)));
    assert_eq!(r.send_window(), window - MDS);
    // ...old-path acknowledgements and losses leave the old flight only.
    let (res, out) = ack(&mut r, t0 + ms(10), Epoch::Data, &[0..=1, old..=old]);
    res.unwrap();
    assert!(out.acked.contains(&0) && out.acked.contains(&old));
    assert_eq!(
        r.send_window(),
        r.congestion_window(),
        "the new path has nothing in flight: old-path ACKs did not count"
    );
    assert!(r.bytes_in_flight() < old * MDS);
    // A second path change moves only what was sent since the first.
    r.on_packet_sent(t0 + ms(11), Epoch::Data, pkt(old + 1, t0 + ms(11)));
    r.reset_for_new_path(t0 + ms(12), old + 2);
    assert_eq!(r.send_window(), window, "a fresh window again");
    let total = r.bytes_in_flight();
    r.discard_space(Epoch::Data, t0 + ms(13), &mut |_| {});
    assert_eq!(r.bytes_in_flight(), 0, "{total} bytes all released");
}

/// RFC 9002 §7.2: ten datagrams, but no more than 14,720 bytes unless that is under two
/// datagrams; a configured count scales the byte cap with it.
#[test]
fn the_initial_window_is_capped_in_bytes() {
    use super::loss::initial_window;
    assert_eq!(initial_window(10, 1200), 12_000);
    assert_eq!(initial_window(10, 1452), 14_520);
    assert_eq!(initial_window(10, 1472), 14_720);
    assert_eq!(initial_window(10, 9000), 18_000);
    assert_eq!(initial_window(10, 65_527), 131_054);
    assert_eq!(initial_window(32, 1200), 38_400);
    // After a path change at a jumbo size the controller starts from the capped window.
    let mut r: Recovery<u64> = Recovery::new(RecoveryConfig {
        max_datagram_size: 9000,
        ..config(Side::Server, CongestionAlgorithm::NewReno)
    });
    r.reset_for_new_path(Instant::now(), 0);
    assert_eq!(r.congestion_window(), 18_000);
}

/// RFC 9002 §5.3: the ACK delay of an Initial ACK may be ignored (Initials are acknowledged
/// at once), but a Handshake ACK's counts: the peer may have held our packets waiting for
/// keys (RFC 9000 §13.2.5). Before the handshake is confirmed it is not capped by
/// max_ack_delay.
#[test]
fn handshake_acks_report_their_delay_and_initial_acks_do_not() {
    let t0 = Instant::now();
    for (epoch, want) in [(Epoch::Initial, ms(50)), (Epoch::Handshake, ms(10))] {
        let mut r: Recovery<u64> =
            Recovery::new(config(Side::Client, CongestionAlgorithm::NewReno));
        r.set_max_ack_delay(ms(25));
        // A first sample of 10 ms, so the next one may be adjusted down to it.
        r.on_packet_sent(t0, epoch, pkt(0, t0));
        let sample = |r: &mut Recovery<u64>, pn: u64, now, delay| {
            let acked = [pn..=pn].into_iter();
            r.on_ack_received(now, epoch, acked, delay, None, &mut |_| {}, &mut |_| {})
                .unwrap();
        };
        sample(&mut r, 0, t0 + ms(10), Duration::ZERO);
        let t1 = t0 + ms(20);
        r.on_packet_sent(t1, epoch, pkt(1, t1));
        // 50 ms, of which the peer says 40 ms were its own (more than max_ack_delay).
        sample(&mut r, 1, t1 + ms(50), ms(40));
        assert_eq!(r.rtt().latest(), ms(50));
        // smoothed = 7/8 * 10 + 1/8 * adjusted
        let adjusted = (r.rtt().smoothed().as_nanos() as f64 - 8.75e6) * 8.0;
        assert!(
            (adjusted - want.as_nanos() as f64).abs() < 1e3,
            "{epoch:?}: adjusted sample {adjusted} ns"
        );
    }
}
