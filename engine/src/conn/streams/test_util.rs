//! Test-only decoding of the frames this module writes, so tests can pass frames
//! between two `Streams` without depending on the `wire` parser.

use std::time::Instant;

use super::{Streams, TransportError};

/// Decodes a varint; returns (value, bytes used).
pub fn varint(b: &[u8]) -> (u64, usize) {
    let len = 1usize << (b[0] >> 6);
    let mut v = u64::from(b[0] & 0x3f);
    for &x in &b[1..len] {
        v = v << 8 | u64::from(x);
    }
    (v, len)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestFrame {
    Stream {
        id: u64,
        offset: u64,
        data: Vec<u8>,
        fin: bool,
    },
    ResetStream {
        id: u64,
        error_code: u64,
        final_size: u64,
    },
    StopSending {
        id: u64,
        error_code: u64,
    },
    MaxData(u64),
    MaxStreamData {
        id: u64,
        max: u64,
    },
    MaxStreams {
        bidi: bool,
        max: u64,
    },
    DataBlocked(u64),
    StreamDataBlocked {
        id: u64,
        limit: u64,
    },
    StreamsBlocked {
        bidi: bool,
        limit: u64,
    },
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn v(&mut self) -> u64 {
        let (v, n) = varint(self.0);
        self.0 = &self.0[n..];
        v
    }
}

/// Parses a packet payload made of the frames `write_frames` emits.
pub fn parse(payload: &[u8]) -> Vec<TestFrame> {
    let mut c = Cursor(payload);
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let ty = c.v();
        let f = match ty {
            0x04 => TestFrame::ResetStream {
                id: c.v(),
                error_code: c.v(),
                final_size: c.v(),
            },
            0x05 => TestFrame::StopSending {
                id: c.v(),
                error_code: c.v(),
            },
            0x08..=0x0f => {
                let id = c.v();
                let offset = if ty & 0x04 != 0 { c.v() } else { 0 };
                let len = if ty & 0x02 != 0 {
                    c.v() as usize
                } else {
                    c.0.len()
                };
                let data = c.0[..len].to_vec();
                c.0 = &c.0[len..];
                TestFrame::Stream {
                    id,
                    offset,
                    data,
                    fin: ty & 1 != 0,
                }
            }
            0x10 => TestFrame::MaxData(c.v()),
            0x11 => TestFrame::MaxStreamData {
                id: c.v(),
                max: c.v(),
            },
            0x12 | 0x13 => TestFrame::MaxStreams {
                bidi: ty == 0x12,
                max: c.v(),
            },
            0x14 => TestFrame::DataBlocked(c.v()),
            0x15 => TestFrame::StreamDataBlocked {
                id: c.v(),
                limit: c.v(),
            },
            0x16 | 0x17 => TestFrame::StreamsBlocked {
                bidi: ty == 0x16,
                limit: c.v(),
            },
            other => panic!("unexpected frame type {other:#x}"),
        };
        out.push(f);
    }
    out
}

/// Feeds a decoded frame to `streams` as the connection would.
pub fn deliver(streams: &mut Streams, f: &TestFrame, now: Instant) -> Result<(), TransportError> {
    match f {
        TestFrame::Stream {
            id,
            offset,
            data,
            fin,
        } => streams.on_stream(*id, *offset, data, *fin, now),
        TestFrame::ResetStream {
            id,
            error_code,
            final_size,
        } => streams.on_reset_stream(*id, *error_code, *final_size),
        TestFrame::StopSending { id, error_code } => streams.on_stop_sending(*id, *error_code),
        TestFrame::MaxData(m) => {
            streams.on_max_data(*m);
            Ok(())
        }
        TestFrame::MaxStreamData { id, max } => streams.on_max_stream_data(*id, *max),
        TestFrame::MaxStreams { bidi, max } => streams.on_max_streams(*bidi, *max),
        TestFrame::DataBlocked(l) => {
            streams.on_data_blocked(*l);
            Ok(())
        }
        TestFrame::StreamDataBlocked { id, limit } => streams.on_stream_data_blocked(*id, *limit),
        TestFrame::StreamsBlocked { bidi, limit } => streams.on_streams_blocked(*bidi, *limit),
    }
}
