//! Tests of `Streams` as a whole: two instances exchange frames in memory through
//! `write_frames` and a small test parser, with loss, duplication and reordering.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::test_util::{deliver, parse, TestFrame};
use super::*;

const MTU: usize = 1200;

fn small_config() -> StreamsConfig {
    StreamsConfig {
        max_concurrent_bidi: 10,
        max_concurrent_uni: 10,
        stream_recv_window: 10_000,
        conn_recv_window: 15_000,
        max_stream_recv_window: 10_000,
        max_conn_recv_window: 15_000,
        send_buffer_per_stream: 50_000,
    }
}

/// A packet in flight: the frames to deliver and the records to ack or lose.
struct Packet {
    to: usize,
    frames: Vec<TestFrame>,
    records: Vec<StreamFrameRecord>,
}

/// Two `Streams` (0 = client, 1 = server) joined by a lossy, reordering "network".
/// Checks on every delivery that no data exceeds the limits the receiver had
/// advertised (and the sender had actually been told).
struct Pair {
    ends: [Streams; 2],
    flight: Vec<Packet>,
    rng: StdRng,
    loss: f64,
    dup: f64,
    ack_loss: f64,
    now: Instant,
    rtt: Duration,
    /// Limits advertised by end i that reached its peer.
    conn_limit: [u64; 2],
    stream_limit: [HashMap<u64, u64>; 2],
    initial_stream_limit: [u64; 2],
    /// Highest offset end i received per stream, and their sum.
    highest: [HashMap<u64, u64>; 2],
    received_sum: [u64; 2],
    packets: usize,
    lost: usize,
}

impl Pair {
    fn new(client: StreamsConfig, server: StreamsConfig, seed: u64) -> Self {
        let mut ends = [
            Streams::new(Side::Client, client),
            Streams::new(Side::Server, server),
        ];
        let l0 = ends[0].local_limits();
        let l1 = ends[1].local_limits();
        ends[0].set_peer_limits(l1);
        ends[1].set_peer_limits(l0);
        Self {
            ends,
            flight: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            dup: 0.0,
            ack_loss: 0.0,
            now: Instant::now(),
            rtt: Duration::from_millis(10),
            conn_limit: [l0.initial_max_data, l1.initial_max_data],
            stream_limit: [HashMap::new(), HashMap::new()],
            initial_stream_limit: [
                l0.initial_max_stream_data_uni,
                l1.initial_max_stream_data_uni,
            ],
            highest: [HashMap::new(), HashMap::new()],
            received_sum: [0, 0],
            packets: 0,
            lost: 0,
        }
    }

    /// Lets end `from` write packets while it has something to send (bounded).
    fn transmit(&mut self, from: usize, max_packets: usize) {
        for _ in 0..max_packets {
            if !self.ends[from].has_pending() {
                break;
            }
            let mut buf = [0u8; MTU];
            let mut records = Vec::new();
            let n = self.ends[from].write_frames(&mut buf, &mut |r| records.push(r));
            assert!(n <= MTU);
            if n == 0 {
                break;
            }
            let frames = parse(&buf[..n]);
            assert_eq!(frames.len(), records.len(), "one record per frame");
            self.flight.push(Packet {
                to: 1 - from,
                frames,
                records,
            });
            self.packets += 1;
        }
    }

    fn check_limits(&mut self, to: usize, f: &TestFrame) {
        let (id, end) = match *f {
            TestFrame::Stream {
                id,
                offset,
                ref data,
                ..
            } => (id, offset + data.len() as u64),
            TestFrame::ResetStream { id, final_size, .. } => (id, final_size),
            _ => return,
        };
        let limit = self.stream_limit[to]
            .get(&id)
            .copied()
            .unwrap_or(self.initial_stream_limit[to]);
        assert!(
            end <= limit,
            "stream {id}: data to {end} beyond advertised {limit}"
        );
        let h = self.highest[to].entry(id).or_insert(0);
        if end > *h {
            self.received_sum[to] += end - *h;
            *h = end;
        }
        assert!(
            self.received_sum[to] <= self.conn_limit[to],
            "connection data {} beyond advertised {}",
            self.received_sum[to],
            self.conn_limit[to]
        );
    }

    /// Delivers, drops or duplicates one packet in flight, in random order.
    fn step_network(&mut self) {
        if self.flight.is_empty() {
            return;
        }
        let i = self.rng.gen_range(0..self.flight.len());
        let p = self.flight.swap_remove(i);
        let from = 1 - p.to;
        if self.rng.gen_bool(self.loss) {
            self.lost += 1;
            for r in p.records {
                self.ends[from].on_lost(r);
            }
            return;
        }
        for f in &p.frames {
            self.check_limits(p.to, f);
            match *f {
                TestFrame::MaxData(m) => self.conn_limit[from] = self.conn_limit[from].max(m),
                TestFrame::MaxStreamData { id, max } => {
                    let e = self.stream_limit[from].entry(id).or_insert(0);
                    *e = (*e).max(max);
                }
                _ => {}
            }
            deliver(&mut self.ends[p.to], f, self.now).expect("peer frame accepted");
        }
        if self.rng.gen_bool(self.dup) {
            // A duplicate arrives later; its records were already handled.
            self.flight.push(Packet {
                to: p.to,
                frames: p.frames.clone(),
                records: Vec::new(),
            });
        }
        let ack_lost = self.rng.gen_bool(self.ack_loss);
        for r in p.records {
            if ack_lost {
                self.ends[from].on_lost(r);
            } else {
                self.ends[from].on_acked(r);
            }
        }
    }

    fn idle(&self) -> bool {
        self.flight.is_empty() && !self.ends[0].has_pending() && !self.ends[1].has_pending()
    }
}

/// A request/response application: the client sends each request and reads the
/// response; the server echoes every request reversed.
#[derive(Default)]
struct EchoApp {
    /// Data still to write (after partial writes) and whether to finish after.
    to_write: HashMap<StreamId, (Vec<u8>, usize)>,
    received: HashMap<StreamId, Vec<u8>>,
    done: HashMap<StreamId, Vec<u8>>,
}

impl EchoApp {
    fn queue(&mut self, id: StreamId, data: Vec<u8>) {
        self.to_write.insert(id, (data, 0));
    }

    fn flush(&mut self, s: &mut Streams) {
        self.to_write.retain(|&id, (data, off)| {
            while *off < data.len() {
                match s.write(id, &data[*off..]) {
                    Ok(n) => *off += n,
                    Err(StreamError::Blocked) => return true,
                    Err(e) => panic!("write {id}: {e}"),
                }
            }
            s.finish(id).unwrap();
            false
        });
    }

    /// Reads every readable stream; returns streams that reached FIN this call.
    fn poll(&mut self, s: &mut Streams, now: Instant, rtt: Duration) -> Vec<StreamId> {
        let mut finished = Vec::new();
        let mut readable = Vec::new();
        while let Some(ev) = s.poll_event() {
            match ev {
                StreamEvent::Readable { id } | StreamEvent::Opened { id } => readable.push(id),
                StreamEvent::Reset { .. } | StreamEvent::Stopped { .. } => {
                    panic!("unexpected {ev:?}")
                }
                _ => {}
            }
        }
        for id in readable {
            if self.done.contains_key(&id) {
                continue;
            }
            let mut buf = [0u8; 4096];
            loop {
                match s.read(id, &mut buf, now, rtt) {
                    Ok((n, fin)) => {
                        self.received
                            .entry(id)
                            .or_default()
                            .extend_from_slice(&buf[..n]);
                        if fin {
                            let data = self.received.remove(&id).unwrap_or_default();
                            self.done.insert(id, data);
                            finished.push(id);
                            break;
                        }
                        if n == 0 {
                            break;
                        }
                    }
                    Err(StreamError::ClosedStream) => break,
                    Err(e) => panic!("read {id}: {e}"),
                }
            }
        }
        finished
    }
}

fn request(i: u64) -> Vec<u8> {
    let len = 1 + (i * 7919 % 3000) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn run_echo(pair: &mut Pair, count: u64, max_steps: usize) {
    let mut client = EchoApp::default();
    let mut server = EchoApp::default();
    let mut next = 0u64;
    for _ in 0..max_steps {
        while next < count {
            let Some(id) = pair.ends[0].open(true) else {
                break;
            };
            assert_eq!(id, StreamId::new(Side::Client, true, next));
            client.queue(id, request(next));
            next += 1;
        }
        client.flush(&mut pair.ends[0]);
        server.flush(&mut pair.ends[1]);
        pair.transmit(0, 8);
        pair.transmit(1, 8);
        for _ in 0..12 {
            pair.step_network();
        }
        pair.now += Duration::from_micros(100);
        let (now, rtt) = (pair.now, pair.rtt);
        for id in server.poll(&mut pair.ends[1], now, rtt) {
            let mut resp = server.done[&id].clone();
            resp.reverse();
            server.queue(id, resp);
        }
        client.poll(&mut pair.ends[0], now, rtt);
        if client.done.len() as u64 == count && pair.idle() && server.to_write.is_empty() {
            break;
        }
    }
    assert_eq!(client.done.len() as u64, count, "all responses received");
    for (id, resp) in &client.done {
        let mut expect = request(id.index());
        expect.reverse();
        assert!(resp == &expect, "response on {id} is byte-exact");
    }
}

#[test]
fn thousand_concurrent_streams_complete_under_loss() {
    let config = StreamsConfig {
        max_concurrent_bidi: 1000,
        ..StreamsConfig::default()
    };
    let mut pair = Pair::new(config.clone(), config, 1);
    pair.loss = 0.05;
    pair.dup = 0.05;
    pair.ack_loss = 0.05;
    // All 1,000 open before any completes.
    let ids: Vec<_> = (0..1000)
        .map(|_| pair.ends[0].open(true).unwrap())
        .collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(pair.ends[0].open(true), None);
    // Hand them to the echo driver: they are streams 0..1000 already opened.
    let mut client = EchoApp::default();
    for id in &ids {
        client.queue(*id, request(id.index()));
    }
    let mut server = EchoApp::default();
    let mut steps = 0;
    while !(client.done.len() == 1000 && pair.idle() && server.to_write.is_empty()) {
        steps += 1;
        assert!(steps < 200_000, "no progress");
        client.flush(&mut pair.ends[0]);
        server.flush(&mut pair.ends[1]);
        pair.transmit(0, 8);
        pair.transmit(1, 8);
        for _ in 0..12 {
            pair.step_network();
        }
        pair.now += Duration::from_micros(100);
        let (now, rtt) = (pair.now, pair.rtt);
        for id in server.poll(&mut pair.ends[1], now, rtt) {
            let mut resp = server.done[&id].clone();
            resp.reverse();
            server.queue(id, resp);
        }
        client.poll(&mut pair.ends[0], now, rtt);
    }
    for (id, resp) in &client.done {
        let mut expect = request(id.index());
        expect.reverse();
        assert!(resp == &expect);
    }
    assert!(pair.packets > 2500 && pair.lost > 100);
    // Every stream was reaped on both sides and memory released.
    for end in &pair.ends {
        let st = end.stats();
        assert_eq!(st.open_streams, 0);
        assert_eq!(st.reaped_streams, 1000);
        assert_eq!((st.send_buffered, st.recv_buffered), (0, 0));
    }
    // Reaped ids stay closed.
    assert_eq!(
        pair.ends[0].read(ids[0], &mut [0; 4], pair.now, pair.rtt),
        Err(StreamError::ClosedStream)
    );
}

#[test]
fn stream_limit_is_reissued_as_streams_close() {
    let mut pair = Pair::new(small_config(), small_config(), 2);
    run_echo(&mut pair, 60, 100_000);
    // The server kept granting streams: 10 initially plus one per reaped stream.
    assert_eq!(pair.ends[1].max_remote[0], 70);
    assert_eq!(pair.ends[0].stats().reaped_streams, 60);
    // Later streams ran on the states and buffers of earlier ones (byte-exact above), and
    // the spare pools stay bounded.
    for end in &pair.ends {
        assert!(!end.spare_streams.is_empty());
        assert!(end
            .spare_streams
            .iter()
            .all(|s| s.send.is_some() && s.recv.is_some()));
        let spare = end.spare_streams.len();
        assert!(spare + end.spare_send.len() <= SPARE_BUFFERS);
        assert!(spare + end.spare_recv.len() <= SPARE_BUFFERS);
    }
}

/// A state that served a bidirectional stream serves a unidirectional one: the part it
/// does not need is parked for a later stream that does, and nothing of the old stream
/// shows through (each stream's bytes arrive exact).
#[test]
fn recycled_stream_states_change_shape_cleanly() {
    let mut pair = Pair::new(small_config(), small_config(), 5);
    run_echo(&mut pair, 4, 50_000);
    let spare = pair.ends[0].spare_streams.len();
    assert!(spare > 0);
    // Unidirectional streams from end 0 need only a send part: the recycled bidi states'
    // receive parts are parked.
    let mut ids = Vec::new();
    for _ in 0..spare {
        let id = pair.ends[0].open(false).expect("uni stream");
        let s = pair.ends[0].streams.get(id.0).expect("open");
        assert!(s.send.is_some() && s.recv.is_none());
        ids.push(id);
    }
    assert_eq!(pair.ends[0].spare_recv.len(), spare.min(SPARE_BUFFERS));
    for (i, &id) in ids.iter().enumerate() {
        let data = vec![i as u8 + 1; 3000];
        assert_eq!(pair.ends[0].write(id, &data).unwrap(), 3000);
        pair.ends[0].finish(id).unwrap();
    }
    let mut got: Vec<(Vec<u8>, bool)> = vec![(Vec::new(), false); ids.len()];
    for _ in 0..1000 {
        pair.transmit(0, 8);
        pair.transmit(1, 8);
        while !pair.flight.is_empty() {
            pair.step_network();
        }
        pair.now += Duration::from_micros(100);
        let (now, rtt) = (pair.now, pair.rtt);
        for (&id, (data, fin)) in ids.iter().zip(&mut got) {
            let mut buf = [0u8; 4096];
            while !*fin {
                match pair.ends[1].read(id, &mut buf, now, rtt) {
                    Ok((0, false)) => break,
                    Ok((n, f)) => {
                        data.extend_from_slice(&buf[..n]);
                        *fin = f;
                    }
                    Err(e) => panic!("read {id}: {e}"),
                }
            }
        }
        if got.iter().all(|(_, fin)| *fin) && pair.idle() {
            break;
        }
    }
    for (i, (data, fin)) in got.iter().enumerate() {
        assert!(*fin);
        assert_eq!(*data, vec![i as u8 + 1; 3000]);
    }
}

/// With the default 100 concurrent streams the limit grows in steps of 12 (§4.6 leaves
/// the pace to us): 11 finished streams send no MAX_STREAMS at all, and a STREAMS_BLOCKED
/// from the peer brings the held-back credit at once.
#[test]
fn the_stream_limit_grows_in_steps_and_at_once_when_the_peer_is_blocked() {
    let mut pair = Pair::new(StreamsConfig::default(), StreamsConfig::default(), 6);
    run_echo(&mut pair, 11, 100_000);
    assert_eq!(pair.ends[1].stats().reaped_streams, 11);
    assert_eq!(pair.ends[1].max_remote[0], 111);
    assert_eq!(
        pair.ends[0].max_local[0], 100,
        "no MAX_STREAMS below a step"
    );
    // The credit held back is not the peer's yet: a stream past the announced limit is
    // still an error (§4.6).
    let now = pair.now;
    let past = StreamId::new(Side::Client, true, 100).0;
    let err = pair.ends[1]
        .on_stream(past, 0, b"x", false, now)
        .unwrap_err();
    assert_eq!(err.code, Code::STREAM_LIMIT_ERROR);
    pair.ends[1].on_streams_blocked(true, 100).unwrap();
    pair.transmit(1, 8);
    while !pair.flight.is_empty() {
        pair.step_network();
    }
    assert_eq!(pair.ends[0].max_local[0], 111);
    pair.ends[1].on_stream(past, 0, b"x", false, now).unwrap();
}

#[test]
fn open_beyond_limit_signals_blocked_then_available() {
    let mut pair = Pair::new(small_config(), small_config(), 3);
    for _ in 0..10 {
        pair.ends[0].open(false).unwrap();
    }
    assert_eq!(pair.ends[0].open(false), None);
    assert_eq!(pair.ends[0].open(false), None);
    let mut buf = [0u8; 100];
    let mut recs = Vec::new();
    let n = pair.ends[0].write_frames(&mut buf, &mut |r| recs.push(r));
    // Exactly one STREAMS_BLOCKED for this limit.
    assert_eq!(
        parse(&buf[..n]),
        vec![TestFrame::StreamsBlocked {
            bidi: false,
            limit: 10
        }]
    );
    assert!(!pair.ends[0].has_pending());
    // Lost while still blocked: sent again.
    pair.ends[0].on_lost(recs[0]);
    assert!(pair.ends[0].has_pending());
    pair.ends[0].on_max_streams(false, 12).unwrap();
    assert_eq!(
        pair.ends[0].poll_event(),
        Some(StreamEvent::StreamsAvailable { bidi: false })
    );
    assert!(pair.ends[0].open(false).is_some());
    // A smaller MAX_STREAMS is ignored (§4.6); above 2^60 is an encoding error.
    pair.ends[0].on_max_streams(false, 5).unwrap();
    assert!(pair.ends[0].open(false).is_some());
    assert_eq!(
        pair.ends[0]
            .on_max_streams(true, (1 << 60) + 1)
            .unwrap_err()
            .code,
        Code::FRAME_ENCODING_ERROR
    );
}

#[test]
fn peer_exceeding_stream_limit_is_an_error() {
    let mut s = Streams::new(Side::Server, small_config());
    let now = Instant::now();
    // Client bidi stream index 9 is the last allowed (limit 10).
    s.on_stream(StreamId::new(Side::Client, true, 9).0, 0, b"x", false, now)
        .unwrap();
    let err = s
        .on_stream(StreamId::new(Side::Client, true, 10).0, 0, b"x", false, now)
        .unwrap_err();
    assert_eq!(err.code, Code::STREAM_LIMIT_ERROR);
    let err = s
        .on_reset_stream(StreamId::new(Side::Client, false, 10).0, 0, 0)
        .unwrap_err();
    assert_eq!(err.code, Code::STREAM_LIMIT_ERROR);
    let err = s
        .on_max_stream_data(StreamId::new(Side::Client, true, 11).0, 5)
        .unwrap_err();
    assert_eq!(err.code, Code::STREAM_LIMIT_ERROR);
}

#[test]
fn implicit_open_of_lower_streams() {
    let mut s = Streams::new(Side::Server, small_config());
    s.on_stream(
        StreamId::new(Side::Client, false, 2).0,
        0,
        b"x",
        false,
        Instant::now(),
    )
    .unwrap();
    let opened: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(
        opened,
        vec![
            StreamEvent::Opened { id: StreamId(2) },
            StreamEvent::Opened { id: StreamId(6) },
            StreamEvent::Opened { id: StreamId(10) },
            StreamEvent::Readable { id: StreamId(10) },
        ]
    );
    assert_eq!(s.stats().open_streams, 3);
    // Reading stream 2 yields nothing yet, and it is not writable (peer's uni).
    assert_eq!(
        s.read(StreamId(2), &mut [0; 4], Instant::now(), Duration::ZERO),
        Ok((0, false))
    );
    assert_eq!(s.write(StreamId(2), b"x"), Err(StreamError::WrongDirection));
    assert_eq!(s.write(StreamId(14), b"x"), Err(StreamError::UnknownStream));
}

#[test]
fn stream_state_errors() {
    let mut s = Streams::new(Side::Client, small_config());
    s.set_peer_limits(Streams::new(Side::Server, small_config()).local_limits());
    let now = Instant::now();
    let state = |r: Result<(), TransportError>| r.unwrap_err().code;
    // Our bidi stream 0 was never opened.
    assert_eq!(
        state(s.on_stream(0, 0, b"x", false, now)),
        Code::STREAM_STATE_ERROR
    );
    assert_eq!(state(s.on_max_stream_data(0, 10)), Code::STREAM_STATE_ERROR);
    assert_eq!(state(s.on_stop_sending(0, 1)), Code::STREAM_STATE_ERROR);
    let uni = s.open(false).unwrap();
    // STREAM / RESET_STREAM / STREAM_DATA_BLOCKED on our send-only stream.
    assert_eq!(
        state(s.on_stream(uni.0, 0, b"x", false, now)),
        Code::STREAM_STATE_ERROR
    );
    assert_eq!(
        state(s.on_reset_stream(uni.0, 0, 0)),
        Code::STREAM_STATE_ERROR
    );
    assert_eq!(
        state(s.on_stream_data_blocked(uni.0, 0)),
        Code::STREAM_STATE_ERROR
    );
    // MAX_STREAM_DATA / STOP_SENDING on the peer's (receive-only for us) uni stream.
    let peer_uni = StreamId::new(Side::Server, false, 0).0;
    assert_eq!(
        state(s.on_max_stream_data(peer_uni, 10)),
        Code::STREAM_STATE_ERROR
    );
    assert_eq!(
        state(s.on_stop_sending(peer_uni, 1)),
        Code::STREAM_STATE_ERROR
    );
    // Valid ones on the opened stream.
    s.on_max_stream_data(uni.0, 10).unwrap();
    s.on_stop_sending(uni.0, 1).unwrap();
}

#[test]
fn flow_control_violations() {
    let mut s = Streams::new(Side::Server, small_config());
    let now = Instant::now();
    let code = |r: Result<(), TransportError>| r.unwrap_err().code;
    // Stream window is 10,000.
    assert_eq!(
        code(s.on_stream(0, 9_999, b"xy", false, now)),
        Code::FLOW_CONTROL_ERROR
    );
    s.on_stream(0, 9_999, b"x", false, now).unwrap();
    // Connection window is 15,000: 10,000 on stream 0, 5,001 on stream 4 is too much.
    assert_eq!(
        code(s.on_stream(4, 5_000, b"x", false, now)),
        Code::FLOW_CONTROL_ERROR
    );
    s.on_stream(4, 4_999, b"x", false, now).unwrap();
    assert_eq!(code(s.on_reset_stream(8, 0, 1)), Code::FLOW_CONTROL_ERROR);
    // Final size rules through the public API.
    s.on_stream(8, 0, b"", true, now).unwrap();
    assert_eq!(
        code(s.on_stream(8, 0, b"a", false, now)),
        Code::FINAL_SIZE_ERROR
    );
}

#[test]
fn windows_open_as_the_application_reads() {
    windows_open_as_read(|s, id, now, rtt, got| {
        let mut buf = [0u8; 3000];
        let r = s.read(id, &mut buf, now, rtt);
        if let Ok((n, _)) = r {
            got.extend_from_slice(&buf[..n]);
        }
        r
    });
}

#[test]
fn windows_open_as_the_application_reads_in_place() {
    windows_open_as_read(|s, id, now, rtt, got| {
        let mut seen = 0;
        let r = s.read_with(
            id,
            4000,
            |data| {
                seen = data.len();
                got.extend_from_slice(data)
            },
            now,
            rtt,
        );
        if let Ok((n, _)) = r {
            assert_eq!(n, seen, "read_with reports what it handed over");
        }
        r
    });
}

/// A 200 KB transfer through 10 KB stream / 15 KB connection windows, the receiver
/// reading with `read`, which appends what it read to its last argument.
fn windows_open_as_read(
    mut read: impl FnMut(
        &mut Streams,
        StreamId,
        Instant,
        Duration,
        &mut Vec<u8>,
    ) -> Result<(usize, bool), StreamError>,
) {
    let mut pair = Pair::new(small_config(), small_config(), 4);
    let id = pair.ends[0].open(false).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut app = EchoApp::default();
    app.queue(id, data.clone());
    let mut got = Vec::new();
    let mut blocked_seen = false;
    for _ in 0..20_000 {
        app.flush(&mut pair.ends[0]);
        pair.transmit(0, 4);
        pair.transmit(1, 4);
        blocked_seen |= pair.flight.iter().any(|p| {
            p.frames.iter().any(|f| {
                matches!(
                    f,
                    TestFrame::StreamDataBlocked { .. } | TestFrame::DataBlocked(_)
                )
            })
        });
        while !pair.flight.is_empty() {
            pair.step_network();
        }
        while let Ok((n, fin)) = read(&mut pair.ends[1], id, pair.now, pair.rtt, &mut got) {
            if fin || n == 0 {
                break;
            }
        }
        pair.now += Duration::from_millis(20);
        if got.len() == data.len() && pair.idle() {
            break;
        }
    }
    assert!(got == data);
    assert!(blocked_seen, "the sender reported being blocked");
}

#[test]
fn auto_tuning_grows_the_receive_window() {
    let config = StreamsConfig {
        stream_recv_window: 16_000,
        conn_recv_window: 24_000,
        max_stream_recv_window: 1_000_000,
        max_conn_recv_window: 1_500_000,
        ..StreamsConfig::default()
    };
    let mut pair = Pair::new(config.clone(), config, 5);
    pair.rtt = Duration::from_millis(50);
    let id = pair.ends[0].open(false).unwrap();
    let total = 3_000_000usize;
    let chunk = vec![0xabu8; 100_000];
    let mut written = 0;
    let mut read = 0;
    let mut buf = vec![0u8; 65536];
    for _ in 0..100_000 {
        while written < total {
            match pair.ends[0].write(id, &chunk[..chunk.len().min(total - written)]) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        pair.transmit(0, 16);
        pair.transmit(1, 16);
        while !pair.flight.is_empty() {
            pair.step_network();
        }
        // The application consumes instantly; the network is fast (1 ms per round).
        loop {
            let (n, _) = pair.ends[1].read(id, &mut buf, pair.now, pair.rtt).unwrap();
            read += n;
            if n == 0 {
                break;
            }
        }
        pair.now += Duration::from_millis(1);
        if read == total {
            break;
        }
    }
    assert_eq!(read, total);
    let window = pair.ends[1]
        .streams
        .get(id.0)
        .unwrap()
        .recv
        .as_ref()
        .unwrap()
        .window
        .window();
    assert!(window > 16_000 * 8, "stream window grew: {window}");
    assert!(window <= 1_000_000);
    assert!(pair.ends[1].conn_recv.window.window() >= window);
}

#[test]
fn stop_sending_is_answered_with_reset() {
    let mut pair = Pair::new(small_config(), small_config(), 6);
    let id = pair.ends[0].open(true).unwrap();
    pair.ends[0].write(id, &[1u8; 5000]).unwrap();
    pair.transmit(0, 10);
    while !pair.flight.is_empty() {
        pair.step_network();
    }
    assert_eq!(pair.ends[1].poll_event(), Some(StreamEvent::Opened { id }));
    pair.ends[1].stop_sending(id, 42).unwrap();
    pair.ends[1].finish(id).unwrap();
    pair.transmit(1, 2);
    while !pair.flight.is_empty() {
        pair.step_network();
    }
    let events: Vec<_> = std::iter::from_fn(|| pair.ends[0].poll_event()).collect();
    assert!(events.contains(&StreamEvent::Stopped { id, error_code: 42 }));
    assert_eq!(
        pair.ends[0].write(id, b"more"),
        Err(StreamError::Stopped(42))
    );
    let mut buf = [0u8; 200];
    let mut recs = Vec::new();
    let n = pair.ends[0].write_frames(&mut buf, &mut |r| recs.push(r));
    let frames = parse(&buf[..n]);
    assert!(frames.contains(&TestFrame::ResetStream {
        id: id.0,
        error_code: 42,
        final_size: 5000
    }));
    // The reset is lost once and re-sent.
    for r in recs {
        pair.ends[0].on_lost(r);
    }
    pair.transmit(0, 2);
    pair.transmit(1, 2);
    while !pair.flight.is_empty() {
        pair.step_network();
    }
    // Client reads the server's FIN; then both sides are done with the stream.
    assert_eq!(
        pair.ends[0].read(id, &mut buf, pair.now, pair.rtt),
        Ok((0, true))
    );
    pair.transmit(0, 2);
    pair.transmit(1, 2);
    while !pair.flight.is_empty() {
        pair.step_network();
    }
    assert_eq!(pair.ends[0].stats().open_streams, 0);
    assert_eq!(pair.ends[1].stats().open_streams, 0);
    // The server's window credit for the discarded bytes came back.
    assert_eq!(pair.ends[1].conn_recv.window.consumed(), 5000);
}

#[test]
fn peer_reset_is_reported_to_reader() {
    let mut pair = Pair::new(small_config(), small_config(), 7);
    let id = pair.ends[0].open(false).unwrap();
    pair.ends[0].write(id, &[9u8; 100]).unwrap();
    pair.transmit(0, 1);
    pair.ends[0].reset(id, 7).unwrap();
    pair.transmit(0, 1);
    while !pair.flight.is_empty() {
        pair.step_network();
    }
    let events: Vec<_> = std::iter::from_fn(|| pair.ends[1].poll_event()).collect();
    assert!(events.contains(&StreamEvent::Reset { id, error_code: 7 }));
    assert_eq!(
        pair.ends[1].read(id, &mut [0; 10], pair.now, pair.rtt),
        Err(StreamError::Reset(7))
    );
    assert_eq!(
        pair.ends[1].read(id, &mut [0; 10], pair.now, pair.rtt),
        Err(StreamError::ClosedStream)
    );
    // The sender forgets the stream once the reset is acknowledged.
    assert_eq!(pair.ends[0].stats().open_streams, 0);
    assert_eq!(pair.ends[0].write(id, b"x"), Err(StreamError::ClosedStream));
}

#[test]
fn blocked_frames_once_per_limit() {
    let mut s = Streams::new(Side::Client, small_config());
    let mut peer = Streams::new(Side::Server, small_config()).local_limits();
    peer.initial_max_data = 100;
    s.set_peer_limits(peer);
    let id = s.open(true).unwrap();
    s.write(id, &[0u8; 500]).unwrap();
    let mut buf = [0u8; 1200];
    let n = s.write_frames(&mut buf, &mut |_| {});
    let frames = parse(&buf[..n]);
    assert!(matches!(&frames[0], TestFrame::Stream { data, .. } if data.len() == 100));
    assert_eq!(frames[1], TestFrame::DataBlocked(100));
    assert_eq!(s.write_frames(&mut buf, &mut |_| {}), 0);
    assert!(!s.has_pending());
    s.on_max_data(1000);
    let n = s.write_frames(&mut buf, &mut |_| {});
    assert!(
        matches!(&parse(&buf[..n])[0], TestFrame::Stream { data, offset: 100, .. } if data.len() == 400)
    );
}

#[test]
fn blocked_signalled_for_data_written_after_credit_ran_out() {
    let mut s = Streams::new(Side::Client, small_config());
    let mut peer = Streams::new(Side::Server, small_config()).local_limits();
    peer.initial_max_data = 100;
    s.set_peer_limits(peer);
    let id = s.open(true).unwrap();
    s.write(id, &[0u8; 100]).unwrap();
    let mut buf = [0u8; 1200];
    let n = s.write_frames(&mut buf, &mut |_| {});
    assert_eq!(
        parse(&buf[..n]).len(),
        1,
        "all credit used, nothing held back yet"
    );
    assert!(!s.has_pending());
    s.write(id, &[0u8; 50]).unwrap();
    assert!(s.has_pending());
    let n = s.write_frames(&mut buf, &mut |_| {});
    assert_eq!(parse(&buf[..n]), vec![TestFrame::DataBlocked(100)]);
    // Once per limit: more blocked data on another stream adds nothing.
    let id2 = s.open(true).unwrap();
    s.write(id2, b"x").unwrap();
    assert!(!s.has_pending());
    // Stream-level: a stream limit of 10 reached by an application write.
    let mut s = Streams::new(Side::Client, small_config());
    let mut peer = Streams::new(Side::Server, small_config()).local_limits();
    peer.initial_max_stream_data_bidi_remote = 10;
    s.set_peer_limits(peer);
    let id = s.open(true).unwrap();
    s.write(id, &[0u8; 10]).unwrap();
    s.write_frames(&mut buf, &mut |_| {});
    s.write(id, &[0u8; 10]).unwrap();
    let n = s.write_frames(&mut buf, &mut |_| {});
    assert_eq!(
        parse(&buf[..n]),
        vec![TestFrame::StreamDataBlocked {
            id: id.0,
            limit: 10
        }]
    );
}

#[test]
fn write_frames_respects_tiny_buffers() {
    let mut s = Streams::new(Side::Client, small_config());
    s.set_peer_limits(Streams::new(Side::Server, small_config()).local_limits());
    let ids: Vec<_> = (0..5).map(|_| s.open(true).unwrap()).collect();
    for (i, id) in ids.iter().enumerate() {
        s.write(*id, &vec![i as u8; 777]).unwrap();
        s.finish(*id).unwrap();
    }
    let mut rx = Streams::new(Side::Server, small_config());
    let now = Instant::now();
    for size in (1..40).cycle().take(2000) {
        let mut buf = vec![0u8; size];
        let mut recs = Vec::new();
        let n = s.write_frames(&mut buf, &mut |r| recs.push(r));
        assert!(n <= size);
        for f in parse(&buf[..n]) {
            deliver(&mut rx, &f, now).unwrap();
        }
        for r in recs {
            s.on_acked(r);
        }
        if !s.has_pending() {
            break;
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let mut out = vec![0u8; 1000];
        assert_eq!(rx.read(*id, &mut out, now, Duration::ZERO), Ok((777, true)));
        assert!(out[..777].iter().all(|&b| b == i as u8));
    }
    let finished = std::iter::from_fn(|| s.poll_event())
        .filter(|e| matches!(e, StreamEvent::Finished { .. }))
        .count();
    assert_eq!(finished, 5);
}

#[test]
fn round_robin_shares_packets() {
    let mut s = Streams::new(Side::Client, small_config());
    s.set_peer_limits(Streams::new(Side::Server, small_config()).local_limits());
    let a = s.open(true).unwrap();
    let b = s.open(true).unwrap();
    s.write(a, &[1; 5000]).unwrap();
    s.write(b, &[2; 5000]).unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let mut buf = [0u8; 1200];
        s.write_frames(&mut buf, &mut |r| {
            if let StreamFrameRecord::Stream { id, .. } = r {
                order.push(id)
            }
        });
    }
    assert_eq!(order, vec![a, b, a, b]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random data on a few streams through random packet sizes, loss, duplication
    /// and reordering arrives byte-exact, within every advertised window.
    #[test]
    fn random_network_delivers_exact_bytes(
        seed in any::<u64>(),
        sizes in proptest::collection::vec(0usize..30_000, 1..5),
        loss in 0.0f64..0.3,
        dup in 0.0f64..0.3,
    ) {
        let mut pair = Pair::new(small_config(), small_config(), seed);
        pair.loss = loss;
        pair.dup = dup;
        pair.ack_loss = loss / 2.0;
        let mut app = EchoApp::default();
        let mut expect = HashMap::new();
        for (i, &n) in sizes.iter().enumerate() {
            let id = pair.ends[0].open(i % 2 == 0).unwrap();
            let data: Vec<u8> = (0..n).map(|j| (j * 13 + i * 7 + seed as usize) as u8).collect();
            app.queue(id, data.clone());
            expect.insert(id, data);
        }
        let mut rx = EchoApp::default();
        let mut steps = 0;
        while rx.done.len() < sizes.len() {
            steps += 1;
            prop_assert!(steps < 50_000);
            app.flush(&mut pair.ends[0]);
            pair.transmit(0, 4);
            pair.transmit(1, 4);
            for _ in 0..6 { pair.step_network(); }
            pair.now += Duration::from_millis(1);
            let (now, rtt) = (pair.now, pair.rtt);
            rx.poll(&mut pair.ends[1], now, rtt);
        }
        for (id, data) in &expect {
            prop_assert!(&rx.done[id] == data);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Arbitrary frames from a hostile peer never panic, and what we buffer stays
    /// within the connection window however the data is fragmented.
    #[test]
    fn hostile_frames_never_panic_and_memory_stays_bounded(
        ops in proptest::collection::vec(
            (0u8..8, 0u64..64, any::<u64>(), 0u64..40_000, 0usize..200, any::<bool>()),
            1..300,
        ),
    ) {
        let mut s = Streams::new(Side::Server, small_config());
        s.set_peer_limits(Streams::new(Side::Client, small_config()).local_limits());
        let now = Instant::now();
        let data = [7u8; 200];
        for (kind, id, big, offset, len, flag) in ops {
            let r = match kind {
                0 | 1 => s.on_stream(id, offset, &data[..len], flag, now),
                2 => s.on_reset_stream(id, big, offset),
                3 => s.on_stop_sending(id, big),
                4 => s.on_max_stream_data(id, big),
                5 => s.on_max_streams(flag, big),
                6 => s.on_streams_blocked(flag, big),
                _ => {
                    s.on_max_data(big);
                    s.on_stream_data_blocked(id, big)
                }
            };
            // A connection error ends the connection; it must be one of the stream
            // errors, and the state must stay sane regardless.
            if let Err(e) = r {
                prop_assert!([
                    Code::FLOW_CONTROL_ERROR,
                    Code::STREAM_LIMIT_ERROR,
                    Code::STREAM_STATE_ERROR,
                    Code::FINAL_SIZE_ERROR,
                    Code::FRAME_ENCODING_ERROR,
                    Code::PROTOCOL_VIOLATION,
                ]
                .contains(&e.code));
            }
            let st = s.stats();
            prop_assert!(st.recv_buffered as u64 <= 15_000);
            prop_assert!(st.data_received <= st.local_max_data);
            let mut buf = [0u8; 1200];
            let n = s.write_frames(&mut buf, &mut |_| {});
            prop_assert!(n <= 1200);
        }
    }
}

/// Sum of the reassembly buffers' allocations over open streams, from the streams
/// themselves (what `ConnRecv::buffers` must agree with).
fn recv_allocations(s: &Streams) -> usize {
    s.streams
        .iter()
        .filter_map(|st| st.recv.as_ref())
        .map(|r| r.allocation())
        .sum()
}

/// A peer that fills each stream's window out of order, lets us read it all and never
/// finishes the stream cannot leave every stream holding a window's worth of memory: the
/// reassembly buffers of a connection stay within twice its window (plus a small buffer
/// per stream), whatever the streams once needed.
#[test]
fn drained_streams_do_not_keep_their_windows_allocated() {
    let config = StreamsConfig::default();
    let window = config.stream_recv_window as usize;
    let mut s = Streams::new(Side::Server, config);
    let mut now = Instant::now();
    let rtt = Duration::from_millis(10);
    let chunk = vec![7u8; 1200];
    let mut sink = vec![0u8; 64 * 1024];
    for i in 0..40 {
        let id = StreamId::new(Side::Client, true, i).0;
        // Everything but the first byte, then the first byte: all readable at once.
        let mut offset = 1;
        while offset < window {
            let n = chunk.len().min(window - offset);
            s.on_stream(id, offset as u64, &chunk[..n], false, now)
                .unwrap();
            offset += n;
        }
        s.on_stream(id, 0, &chunk[..1], false, now).unwrap();
        let mut read = 0;
        while read < window {
            let (n, fin) = s.read(StreamId(id), &mut sink, now, rtt).unwrap();
            assert!(n > 0 && !fin);
            read += n;
        }
        now += rtt;
    }
    let total = recv_allocations(&s);
    assert_eq!(
        s.conn_recv.buffers, total,
        "the count matches the allocations"
    );
    let bound = 2 * s.conn_recv.window.window() as usize + 40 * RECYCLE_BUFFER_BYTES;
    assert!(
        total <= bound,
        "40 drained streams hold {total} bytes (bound {bound})"
    );
    // Reaped streams stop counting.
    for i in 0..40 {
        let id = StreamId::new(Side::Client, true, i);
        s.on_stream(id.0, window as u64, &[], true, now).unwrap();
        assert_eq!(s.read(id, &mut sink, now, rtt).unwrap(), (0, true));
        s.finish(id).unwrap();
    }
    assert_eq!(s.conn_recv.buffers, recv_allocations(&s));
}
