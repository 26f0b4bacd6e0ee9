//! Streams, CRYPTO streams and flow control for one connection (RFC 9000 §2–§4).
//!
//! `Streams` is driven by the connection: frames from the peer go in through the
//! `on_*` methods (protocol violations come back as `TransportError`), the application
//! reads and writes through `open`/`read`/`write`/..., and `write_frames` fills the
//! rest of an outgoing packet with control frames and round-robin stream data, naming
//! what it wrote through `StreamFrameRecord`s the connection hands back on ack or loss.
//!
//! Pieces: `id` (stream ids), `assembler` (reassembly), `send_buffer` (retransmission
//! bookkeeping), `flow` (windows and credit), `send` / `recv` (per-direction stream
//! states), `crypto_stream` (CRYPTO data per epoch), `transmit` (frame writing, acks and
//! losses), `table` (stream id → state: direct-mapped slots in front of a hash map).

mod assembler;
mod crypto_stream;
mod flow;
mod id;
mod recv;
mod send;
mod send_buffer;
mod table;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
mod transmit;

use crate::wire;

use std::collections::VecDeque;

use std::time::{Duration, Instant};

use crate::Side;

pub use crypto_stream::{CryptoStream, DEFAULT_CRYPTO_BUFFER};
pub use id::StreamId;

use assembler::Assembler;
use flow::{RecvWindow, SendCredit};
use recv::{ConnRecv, RecvStream};
use send::SendStream;
use send_buffer::SendBuffer;
use table::StreamTable;
use wire::error::{TransportError, TransportErrorCode as Code};

/// Largest stream count a MAX_STREAMS / STREAMS_BLOCKED may carry (§4.6).
const MAX_STREAM_COUNT: u64 = 1 << 60;

/// Finished streams' states (boxed, buffers and all) kept for new ones, so that a
/// connection serving a stream per request neither allocates nor moves a ~430-byte state
/// in and out of the stream table per request: the table holds boxes, and a new stream
/// is the last finished one, reset in place. Also the bound on parts parked separately
/// when a reused state lacks one (a bidirectional stream's state reused for a
/// unidirectional one).
const SPARE_BUFFERS: usize = 32;
/// A finished stream's buffer larger than this is freed rather than kept.
const RECYCLE_BUFFER_BYTES: usize = 16 * 1024;

/// Local stream and flow-control settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsConfig {
    /// Concurrent bidirectional streams we let the peer open.
    pub max_concurrent_bidi: u64,
    /// Concurrent unidirectional streams we let the peer open.
    pub max_concurrent_uni: u64,
    /// Initial receive window per stream.
    pub stream_recv_window: u64,
    /// Initial connection receive window.
    pub conn_recv_window: u64,
    /// Auto-tuning caps.
    pub max_stream_recv_window: u64,
    pub max_conn_recv_window: u64,
    /// Bytes the application may have buffered (unacknowledged) per stream.
    pub send_buffer_per_stream: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            max_concurrent_bidi: 100,
            max_concurrent_uni: 100,
            stream_recv_window: 1 << 20,
            conn_recv_window: 3 << 19,
            max_stream_recv_window: 16 << 20,
            max_conn_recv_window: 24 << 20,
            send_buffer_per_stream: 1 << 20,
        }
    }
}

/// Stream-related transport parameters (RFC 9000 §18.2), ours or the peer's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerLimits {
    pub initial_max_data: u64,
    pub initial_max_stream_data_bidi_local: u64,
    pub initial_max_stream_data_bidi_remote: u64,
    pub initial_max_stream_data_uni: u64,
    pub initial_max_streams_bidi: u64,
    pub initial_max_streams_uni: u64,
}

/// What a sent packet carried for streams, so the connection can report acks and
/// losses back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFrameRecord {
    Stream {
        id: StreamId,
        offset: u64,
        len: u16,
        fin: bool,
    },
    MaxData,
    MaxStreamData {
        id: StreamId,
    },
    MaxStreams {
        bidi: bool,
    },
    DataBlocked,
    StreamDataBlocked {
        id: StreamId,
    },
    StreamsBlocked {
        bidi: bool,
    },
    ResetStream {
        id: StreamId,
    },
    StopSending {
        id: StreamId,
    },
}

/// Something the application should look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened this stream.
    Opened { id: StreamId },
    /// New data (or the FIN, or a reset) can be read. Not repeated until the
    /// application has read everything readable.
    Readable { id: StreamId },
    /// Buffer space freed after a write was refused or cut short.
    Writable { id: StreamId },
    /// All our data, including the FIN, was acknowledged.
    Finished { id: StreamId },
    /// The peer reset its sending part.
    Reset { id: StreamId, error_code: u64 },
    /// The peer sent STOP_SENDING; we reset our sending part with its error code.
    Stopped { id: StreamId, error_code: u64 },
    /// The peer raised its stream limit after `open` failed.
    StreamsAvailable { bidi: bool },
}

/// Errors of the application API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream not opened")]
    UnknownStream,
    #[error("stream closed")]
    ClosedStream,
    #[error("no buffer space")]
    Blocked,
    #[error("stream reset by peer with code {0}")]
    Reset(u64),
    #[error("peer sent STOP_SENDING with code {0}")]
    Stopped(u64),
    #[error("stream cannot be used in this direction")]
    WrongDirection,
}

/// Counters for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub open_streams: usize,
    pub reaped_streams: u64,
    pub send_buffered: usize,
    pub recv_buffered: usize,
    /// Stream bytes sent for the first time / connection credit used.
    pub data_sent: u64,
    /// Highest offsets received, summed over streams.
    pub data_received: u64,
    pub peer_max_data: u64,
    pub local_max_data: u64,
}

#[derive(Debug)]
struct Stream {
    id: u64,
    send: Option<SendStream>,
    recv: Option<RecvStream>,
    in_send_queue: bool,
    in_ctrl_queue: bool,
}

impl Stream {
    /// A stream with neither part yet, queued nowhere.
    fn empty(id: u64) -> Box<Self> {
        Box::new(Stream {
            id,
            send: None,
            recv: None,
            in_send_queue: false,
            in_ctrl_queue: false,
        })
    }

    fn has_ctrl(&self) -> bool {
        self.send
            .as_ref()
            .is_some_and(|s| s.credit.blocked_pending || s.reset.is_some_and(|r| r.frame_pending))
            || self
                .recv
                .as_ref()
                .is_some_and(|r| r.max_data_pending || r.stop.is_some_and(|s| s.frame_pending))
    }

    fn is_terminal(&self) -> bool {
        self.send.as_ref().is_none_or(SendStream::is_terminal)
            && self.recv.as_ref().is_none_or(RecvStream::is_terminal)
    }
}

/// Which part of a stream a peer frame addresses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// STREAM, RESET_STREAM, STREAM_DATA_BLOCKED: the peer sends, we receive.
    Recv,
    /// MAX_STREAM_DATA, STOP_SENDING: about data we send.
    Send,
}

const fn dir(bidi: bool) -> usize {
    if bidi {
        0
    } else {
        1
    }
}

/// All streams of one connection.
#[derive(Debug)]
pub struct Streams {
    side: Side,
    config: StreamsConfig,
    peer: PeerLimits,
    streams: StreamTable,
    /// Per direction (0 bidi, 1 uni): next index we open and the peer's limit.
    next_local: [u64; 2],
    max_local: [u64; 2],
    streams_blocked_at: [Option<u64>; 2],
    streams_blocked_pending: [bool; 2],
    /// Set when `open` failed, to announce when the limit rises.
    open_refused: [bool; 2],
    /// Per direction: streams the peer has opened and the limit we gave it.
    next_remote: [u64; 2],
    max_remote: [u64; 2],
    /// The limit the peer last heard of (the transport parameter or our last MAX_STREAMS).
    max_remote_sent: [u64; 2],
    max_streams_pending: [bool; 2],
    conn_send: SendCredit,
    data_sent: u64,
    conn_recv: ConnRecv,
    max_data_pending: bool,
    send_queue: VecDeque<u64>,
    ctrl_queue: VecDeque<u64>,
    events: VecDeque<StreamEvent>,
    reaped: u64,
    // Boxed on purpose: a state moves between this pool and the table as a pointer.
    #[allow(clippy::vec_box)]
    spare_streams: Vec<Box<Stream>>,
    spare_send: Vec<SendBuffer>,
    spare_recv: Vec<Assembler>,
}

impl Streams {
    pub fn new(side: Side, mut config: StreamsConfig) -> Self {
        config.max_concurrent_bidi = config.max_concurrent_bidi.min(MAX_STREAM_COUNT);
        config.max_concurrent_uni = config.max_concurrent_uni.min(MAX_STREAM_COUNT);
        config.max_stream_recv_window =
            config.max_stream_recv_window.max(config.stream_recv_window);
        config.max_conn_recv_window = config.max_conn_recv_window.max(config.conn_recv_window);
        Self {
            side,
            peer: PeerLimits::default(),
            streams: StreamTable::new(),
            next_local: [0; 2],
            max_local: [0; 2],
            streams_blocked_at: [None; 2],
            streams_blocked_pending: [false; 2],
            open_refused: [false; 2],
            next_remote: [0; 2],
            max_remote: [config.max_concurrent_bidi, config.max_concurrent_uni],
            max_remote_sent: [config.max_concurrent_bidi, config.max_concurrent_uni],
            max_streams_pending: [false; 2],
            conn_send: SendCredit::new(0),
            data_sent: 0,
            conn_recv: ConnRecv {
                window: RecvWindow::new(config.conn_recv_window, config.max_conn_recv_window),
                received: 0,
                buffers: 0,
            },
            max_data_pending: false,
            send_queue: VecDeque::new(),
            ctrl_queue: VecDeque::new(),
            events: VecDeque::new(),
            reaped: 0,
            spare_streams: Vec::new(),
            spare_send: Vec::new(),
            spare_recv: Vec::new(),
            config,
        }
    }

    /// Our transport parameters implied by the configuration.
    pub fn local_limits(&self) -> PeerLimits {
        let c = &self.config;
        PeerLimits {
            initial_max_data: c.conn_recv_window,
            initial_max_stream_data_bidi_local: c.stream_recv_window,
            initial_max_stream_data_bidi_remote: c.stream_recv_window,
            initial_max_stream_data_uni: c.stream_recv_window,
            initial_max_streams_bidi: c.max_concurrent_bidi,
            initial_max_streams_uni: c.max_concurrent_uni,
        }
    }

    /// The peer's transport parameters. Limits only ever grow, so this may also be
    /// applied after 0-RTT streams were opened with remembered values.
    pub fn set_peer_limits(&mut self, peer: PeerLimits) {
        self.peer = peer;
        self.conn_send.raise(peer.initial_max_data);
        self.raise_max_local(true, peer.initial_max_streams_bidi.min(MAX_STREAM_COUNT));
        self.raise_max_local(false, peer.initial_max_streams_uni.min(MAX_STREAM_COUNT));
        let side = self.side;
        for s in self.streams.values_mut() {
            let (id, sid) = (s.id, StreamId(s.id));
            if let Some(send) = &mut s.send {
                let max = match (sid.is_bidi(), sid.initiator() == side) {
                    (false, _) => peer.initial_max_stream_data_uni,
                    (true, true) => peer.initial_max_stream_data_bidi_remote,
                    (true, false) => peer.initial_max_stream_data_bidi_local,
                };
                send.credit.raise(max);
                if send.wants_send() && !s.in_send_queue {
                    s.in_send_queue = true;
                    self.send_queue.push_back(id);
                }
            }
        }
    }

    fn raise_max_local(&mut self, bidi: bool, max: u64) {
        let d = dir(bidi);
        if max > self.max_local[d] {
            self.max_local[d] = max;
            self.streams_blocked_pending[d] = false;
            if std::mem::take(&mut self.open_refused[d]) {
                self.events
                    .push_back(StreamEvent::StreamsAvailable { bidi });
            }
        }
    }

    // ---- frames from the peer ----

    /// Validates a stream id in a peer frame and opens peer streams implicitly
    /// (§3.2: a frame for stream N opens every lower-numbered one of its type).
    fn check_incoming(&mut self, id: u64, part: Part) -> Result<(), TransportError> {
        if id > StreamId::MAX {
            return Err(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "stream id too large",
            ));
        }
        let sid = StreamId(id);
        let ok_dir = match part {
            Part::Recv => sid.can_recv(self.side),
            Part::Send => sid.can_send(self.side),
        };
        if !ok_dir {
            // §19.4, §19.5, §19.8, §19.10, §19.13.
            return Err(TransportError::new(
                Code::STREAM_STATE_ERROR,
                "frame for a stream in the wrong direction",
            ));
        }
        let d = dir(sid.is_bidi());
        let index = sid.index();
        if sid.initiator() == self.side {
            if index >= self.next_local[d] {
                return Err(TransportError::new(
                    Code::STREAM_STATE_ERROR,
                    "frame for a stream we have not opened",
                ));
            }
            return Ok(());
        }
        // §4.6: against the limit the peer was told. `max_remote` runs ahead of it by the
        // credit `reap` holds back for the next MAX_STREAMS.
        if index >= self.max_remote_sent[d] {
            return Err(TransportError::new(
                Code::STREAM_LIMIT_ERROR,
                "peer exceeded the stream limit",
            ));
        }
        while self.next_remote[d] <= index {
            let new = StreamId::new(self.side.peer(), sid.is_bidi(), self.next_remote[d]);
            self.next_remote[d] += 1;
            let send_credit = new
                .is_bidi()
                .then_some(self.peer.initial_max_stream_data_bidi_local);
            let stream = self.new_stream(new.0, send_credit, true);
            self.streams.insert(stream);
            self.events.push_back(StreamEvent::Opened { id: new });
        }
        Ok(())
    }

    /// A stream with a send part (given the peer's credit for it) and/or a receive part,
    /// in the state of the last finished stream when there is one.
    fn new_stream(&mut self, id: u64, send_credit: Option<u64>, recv: bool) -> Box<Stream> {
        let mut stream = self
            .spare_streams
            .pop()
            .unwrap_or_else(|| Stream::empty(id));
        stream.id = id;
        stream.in_send_queue = false;
        stream.in_ctrl_queue = false;
        let max_buffer = self.config.send_buffer_per_stream;
        match (send_credit, &mut stream.send) {
            (Some(credit), Some(send)) => send.reuse(credit, max_buffer),
            (Some(credit), None) => stream.send = Some(self.new_send(credit)),
            (None, _) => self.park_send(stream.send.take()),
        }
        let (window, max_window) = (
            self.config.stream_recv_window,
            self.config.max_stream_recv_window,
        );
        match (recv, &mut stream.recv) {
            (true, Some(r)) => r.reuse(window, max_window),
            (true, None) => stream.recv = Some(self.new_recv()),
            (false, _) => self.park_recv(stream.recv.take()),
        }
        stream
    }

    fn new_send(&mut self, credit: u64) -> SendStream {
        let buf = self.spare_send.pop().unwrap_or_default();
        SendStream::with_buffer(buf, credit, self.config.send_buffer_per_stream)
    }

    fn new_recv(&mut self) -> RecvStream {
        let c = &self.config;
        RecvStream::with_assembler(
            self.spare_recv.pop(),
            c.stream_recv_window,
            c.max_stream_recv_window,
        )
    }

    // Parked parts come from recycled states and are empty already; emptying them again
    // is cheap and keeps the pools clean whatever the caller.
    fn park_send(&mut self, send: Option<SendStream>) {
        if let Some(send) = send {
            // Spare states hold buffers too: together at most SPARE_BUFFERS of each kind.
            if self.spare_send.len() + self.spare_streams.len() < SPARE_BUFFERS {
                let mut buf = send.buf;
                buf.recycle();
                self.spare_send.push(buf);
            }
        }
    }

    fn park_recv(&mut self, recv: Option<RecvStream>) {
        if let Some(recv) = recv {
            if self.spare_recv.len() + self.spare_streams.len() < SPARE_BUFFERS {
                let mut asm = recv.into_assembler();
                asm.recycle();
                self.spare_recv.push(asm);
            }
        }
    }

    /// Keeps a finished stream's state, its buffers emptied, for the next stream.
    fn recycle(&mut self, mut stream: Box<Stream>) {
        if self.spare_streams.len() >= SPARE_BUFFERS {
            return;
        }
        // Parked parts make way: spare states and parts together stay within SPARE_BUFFERS
        // buffers of each kind.
        if self.spare_streams.len() + self.spare_send.len() >= SPARE_BUFFERS {
            self.spare_send.pop();
        }
        if self.spare_streams.len() + self.spare_recv.len() >= SPARE_BUFFERS {
            self.spare_recv.pop();
        }
        if let Some(send) = &mut stream.send {
            send.buf.recycle();
        }
        if let Some(recv) = &mut stream.recv {
            recv.recycle_assembler();
        }
        self.spare_streams.push(stream);
    }

    /// A STREAM frame.
    pub fn on_stream(
        &mut self,
        id: u64,
        offset: u64,
        data: &[u8],
        fin: bool,
        _now: Instant,
    ) -> Result<(), TransportError> {
        self.check_incoming(id, Part::Recv)?;
        let Some(stream) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let Some(recv) = &mut stream.recv else {
            return Ok(());
        };
        let outcome = recv.on_data(offset, data, fin, &mut self.conn_recv)?;
        if outcome.readable && !recv.readable_signalled {
            recv.readable_signalled = true;
            self.events
                .push_back(StreamEvent::Readable { id: StreamId(id) });
        }
        let terminal = stream.is_terminal();
        self.after_untimed_consume();
        if terminal {
            self.reap(id);
        }
        Ok(())
    }

    /// A RESET_STREAM frame.
    pub fn on_reset_stream(
        &mut self,
        id: u64,
        error_code: u64,
        final_size: u64,
    ) -> Result<(), TransportError> {
        self.check_incoming(id, Part::Recv)?;
        let Some(stream) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let Some(recv) = &mut stream.recv else {
            return Ok(());
        };
        if recv.on_reset(error_code, final_size, &mut self.conn_recv)? {
            self.events.push_back(StreamEvent::Reset {
                id: StreamId(id),
                error_code,
            });
            if !recv.readable_signalled {
                recv.readable_signalled = true;
                self.events
                    .push_back(StreamEvent::Readable { id: StreamId(id) });
            }
        }
        let terminal = stream.is_terminal();
        self.after_untimed_consume();
        if terminal {
            self.reap(id);
        }
        Ok(())
    }

    /// A STOP_SENDING frame: we answer with RESET_STREAM (§3.5).
    pub fn on_stop_sending(&mut self, id: u64, error_code: u64) -> Result<(), TransportError> {
        self.check_incoming(id, Part::Send)?;
        let Some(stream) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let Some(send) = &mut stream.send else {
            return Ok(());
        };
        // §3.5: copy the error code from STOP_SENDING into RESET_STREAM.
        if send.reset(error_code, true) {
            self.events.push_back(StreamEvent::Stopped {
                id: StreamId(id),
                error_code,
            });
            Self::enqueue_ctrl(&mut self.ctrl_queue, id, stream);
        }
        Ok(())
    }

    pub fn on_max_data(&mut self, max: u64) {
        self.conn_send.raise(max);
    }

    pub fn on_max_stream_data(&mut self, id: u64, max: u64) -> Result<(), TransportError> {
        self.check_incoming(id, Part::Send)?;
        let Some(stream) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let Some(send) = &mut stream.send else {
            return Ok(());
        };
        if send.credit.raise(max) && send.wants_send() {
            Self::enqueue_send(&mut self.send_queue, id, stream);
        }
        Ok(())
    }

    pub fn on_max_streams(&mut self, bidi: bool, max: u64) -> Result<(), TransportError> {
        if max > MAX_STREAM_COUNT {
            // §4.6 / §19.11
            return Err(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "MAX_STREAMS above 2^60",
            ));
        }
        self.raise_max_local(bidi, max);
        Ok(())
    }

    /// DATA_BLOCKED is informational: our MAX_DATA logic does not wait for it (§4.1).
    pub fn on_data_blocked(&mut self, limit: u64) {
        tracing::trace!(limit, "peer blocked by connection flow control");
    }

    pub fn on_stream_data_blocked(&mut self, id: u64, limit: u64) -> Result<(), TransportError> {
        self.check_incoming(id, Part::Recv)?;
        tracing::trace!(id, limit, "peer blocked by stream flow control");
        Ok(())
    }

    pub fn on_streams_blocked(&mut self, bidi: bool, limit: u64) -> Result<(), TransportError> {
        if limit > MAX_STREAM_COUNT {
            // §19.14
            return Err(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "STREAMS_BLOCKED above 2^60",
            ));
        }
        tracing::trace!(bidi, limit, "peer blocked by stream limit");
        let d = dir(bidi);
        if self.max_remote[d] > self.max_remote_sent[d] {
            // Credit held back for a batch (see `reap`) goes out now.
            self.max_streams_pending[d] = true;
        }
        Ok(())
    }

    // ---- application API ----

    /// Opens a stream, or None when the peer's stream limit is reached (a
    /// STREAMS_BLOCKED is then queued and `StreamsAvailable` follows when it rises).
    pub fn open(&mut self, bidi: bool) -> Option<StreamId> {
        let d = dir(bidi);
        if self.next_local[d] >= self.max_local[d] {
            self.open_refused[d] = true;
            if self.streams_blocked_at[d] != Some(self.max_local[d]) {
                self.streams_blocked_at[d] = Some(self.max_local[d]);
                self.streams_blocked_pending[d] = true;
            }
            return None;
        }
        let id = StreamId::new(self.side, bidi, self.next_local[d]);
        self.next_local[d] += 1;
        let send_credit = if bidi {
            self.peer.initial_max_stream_data_bidi_remote
        } else {
            self.peer.initial_max_stream_data_uni
        };
        let stream = self.new_stream(id.0, Some(send_credit), bidi);
        self.streams.insert(stream);
        Some(id)
    }

    /// The error for an application call on a stream that is not in the map:
    /// UnknownStream if never opened, ClosedStream if already reaped.
    fn missing(&self, id: StreamId) -> StreamError {
        let d = dir(id.is_bidi());
        let opened = if id.initiator() == self.side {
            self.next_local[d]
        } else {
            self.next_remote[d]
        };
        if id.index() < opened {
            StreamError::ClosedStream
        } else {
            StreamError::UnknownStream
        }
    }

    /// Buffers data for sending; returns how many bytes were accepted (Blocked if none).
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let Some(stream) = self.streams.get_mut(id.0) else {
            return Err(self.missing(id));
        };
        let send = stream.send.as_mut().ok_or(StreamError::WrongDirection)?;
        let n = send.write(data)?;
        if n > 0 {
            // New data behind an exhausted limit: the data pass will not see it as
            // sendable, so signal the block here (§4.1).
            if send.is_stream_blocked() {
                send.credit.on_blocked();
                if send.credit.blocked_pending {
                    Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
                }
            } else if self.data_sent >= self.conn_send.max {
                self.conn_send.on_blocked();
            }
            Self::enqueue_send(&mut self.send_queue, id.0, stream);
        }
        Ok(n)
    }

    /// Marks the end of the stream's data (FIN).
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let Some(stream) = self.streams.get_mut(id.0) else {
            return Err(self.missing(id));
        };
        let send = stream.send.as_mut().ok_or(StreamError::WrongDirection)?;
        send.finish()?;
        Self::enqueue_send(&mut self.send_queue, id.0, stream);
        Ok(())
    }

    /// Copies received data into `buf`. Returns (bytes, FIN reached); (0, false) when
    /// nothing is readable yet.
    pub fn read(
        &mut self,
        id: StreamId,
        buf: &mut [u8],
        now: Instant,
        rtt: Duration,
    ) -> Result<(usize, bool), StreamError> {
        let len = buf.len();
        self.read_with(
            id,
            len,
            |data| buf[..data.len()].copy_from_slice(data),
            now,
            rtt,
        )
    }

    /// Like `read` but drops up to `max` bytes without copying.
    pub fn discard(
        &mut self,
        id: StreamId,
        max: usize,
        now: Instant,
        rtt: Duration,
    ) -> Result<(usize, bool), StreamError> {
        self.read_with(id, max, |_| {}, now, rtt)
    }

    /// Hands up to `max` received bytes to `f` where they lie (no copy) and consumes
    /// them. Returns (bytes, FIN reached) as `read` does.
    pub fn read_with(
        &mut self,
        id: StreamId,
        max: usize,
        f: impl FnOnce(&[u8]),
        now: Instant,
        rtt: Duration,
    ) -> Result<(usize, bool), StreamError> {
        let Some(stream) = self.streams.get_mut(id.0) else {
            return Err(self.missing(id));
        };
        let recv = stream.recv.as_mut().ok_or(StreamError::WrongDirection)?;
        let result = recv.read(max, f, now, rtt, &mut self.conn_recv);
        let stream_window = recv.window.window();
        if recv.max_data_pending {
            Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
        }
        let terminal = stream.is_terminal();
        if let Ok((n, _)) = result {
            self.conn_recv.window.consume(n as u64);
            // Keep the connection window ahead of the busiest stream window.
            self.conn_recv
                .window
                .grow_to(stream_window.saturating_add(stream_window / 2));
            if self.conn_recv.window.should_update() {
                self.conn_recv.window.update(now, rtt);
                self.max_data_pending = true;
            }
        }
        if terminal {
            self.reap(id.0);
        }
        result
    }

    /// Abandons sending (RESET_STREAM with `error_code`).
    pub fn reset(&mut self, id: StreamId, error_code: u64) -> Result<(), StreamError> {
        let Some(stream) = self.streams.get_mut(id.0) else {
            return Err(self.missing(id));
        };
        let send = stream.send.as_mut().ok_or(StreamError::WrongDirection)?;
        if send.reset(error_code, false) {
            Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
        }
        if stream.is_terminal() {
            self.reap(id.0);
        }
        Ok(())
    }

    /// Asks the peer to stop sending (STOP_SENDING); received data is dropped.
    pub fn stop_sending(&mut self, id: StreamId, error_code: u64) -> Result<(), StreamError> {
        let Some(stream) = self.streams.get_mut(id.0) else {
            return Err(self.missing(id));
        };
        let recv = stream.recv.as_mut().ok_or(StreamError::WrongDirection)?;
        if recv.stop(error_code, &mut self.conn_recv) {
            Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
        }
        let terminal = stream.is_terminal();
        self.after_untimed_consume();
        if terminal {
            self.reap(id.0);
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Bytes `write` would accept now (0 for unknown or closed streams).
    pub fn send_capacity(&self, id: StreamId) -> usize {
        self.streams
            .get(id.0)
            .and_then(|s| s.send.as_ref())
            .map_or(0, SendStream::capacity)
    }

    /// Credit handed back without a read (reset, STOP_SENDING, discarded data) may
    /// call for a MAX_DATA; no timing information, so the window is not tuned.
    fn after_untimed_consume(&mut self) {
        let w = &mut self.conn_recv.window;
        if w.should_update() {
            w.raise_limit();
            self.max_data_pending = true;
        }
    }

    fn enqueue_send(queue: &mut VecDeque<u64>, id: u64, stream: &mut Stream) {
        if !stream.in_send_queue {
            stream.in_send_queue = true;
            queue.push_back(id);
        }
    }

    fn enqueue_ctrl(queue: &mut VecDeque<u64>, id: u64, stream: &mut Stream) {
        if !stream.in_ctrl_queue {
            stream.in_ctrl_queue = true;
            queue.push_back(id);
        }
    }

    /// Frees a stream once both parts are finished (§3: ids are never reused) and,
    /// for a peer's stream, lets it open another (§4.6).
    fn reap(&mut self, id: u64) {
        let Some(mut stream) = self.streams.remove(id) else {
            return;
        };
        if let Some(recv) = &mut stream.recv {
            recv.uncount_buffer(&mut self.conn_recv);
        }
        self.recycle(stream);
        self.reaped += 1;
        let sid = StreamId(id);
        if sid.initiator() != self.side {
            let d = dir(sid.is_bidi());
            if self.max_remote[d] < MAX_STREAM_COUNT {
                self.max_remote[d] += 1;
                // §4.6: keep the peer's room roughly constant, but announce it in steps of
                // an eighth of the concurrency we allow rather than a MAX_STREAMS frame per
                // finished stream (one in every response of a request/response peer). The
                // peer never has less than 7/8 of its room, and a STREAMS_BLOCKED from it
                // brings the held-back credit at once.
                if self.max_remote[d] - self.max_remote_sent[d] >= self.max_streams_step(d) {
                    self.max_streams_pending[d] = true;
                }
            }
        }
        tracing::trace!(stream = %sid, "stream reaped");
    }

    /// Streams the peer's limit grows by per MAX_STREAMS frame (at least one).
    fn max_streams_step(&self, d: usize) -> u64 {
        let concurrent = [
            self.config.max_concurrent_bidi,
            self.config.max_concurrent_uni,
        ][d];
        (concurrent / 8).max(1)
    }

    pub fn stats(&self) -> StreamStats {
        let mut stats = StreamStats {
            open_streams: self.streams.len(),
            reaped_streams: self.reaped,
            data_sent: self.data_sent,
            data_received: self.conn_recv.received,
            peer_max_data: self.conn_send.max,
            local_max_data: self.conn_recv.window.limit(),
            ..StreamStats::default()
        };
        for s in self.streams.values() {
            stats.send_buffered += s.send.as_ref().map_or(0, |s| s.buf.buffered());
            stats.recv_buffered += s.recv.as_ref().map_or(0, RecvStream::buffered);
        }
        stats
    }
}
