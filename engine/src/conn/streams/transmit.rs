//! The transmit side of `Streams`: choosing and writing frames, and reacting to
//! their acknowledgement or loss.

use std::collections::VecDeque;

use super::wire::frame::Frame;
use super::wire::varint::Writer;
use super::{dir, SendStream, StreamEvent, StreamFrameRecord, StreamId, Streams};

impl Streams {
    /// Control frames or stream data could be sent now.
    pub fn has_pending(&self) -> bool {
        if self.max_data_pending
            || self.conn_send.blocked_pending
            || self.max_streams_pending.iter().any(|&p| p)
            || self.streams_blocked_pending.iter().any(|&p| p)
        {
            return true;
        }
        let has_ctrl = |id: &u64| self.streams.get(*id).is_some_and(|s| s.has_ctrl());
        if any_queued(&self.ctrl_queue, has_ctrl) {
            return true;
        }
        let conn_avail = self.conn_send.max.saturating_sub(self.data_sent);
        any_queued(&self.send_queue, |id: &u64| {
            self.streams
                .get(*id)
                .and_then(|s| s.send.as_ref())
                .is_some_and(|s| s.can_send(conn_avail))
        })
    }

    /// Writes control frames, then stream data round-robin, into `buf` (the rest of a
    /// packet). Calls `record` for each frame. Returns bytes written.
    pub fn write_frames(
        &mut self,
        buf: &mut [u8],
        record: &mut dyn FnMut(StreamFrameRecord),
    ) -> usize {
        let mut pos = self.write_control(buf, 0, record);
        pos = self.write_data(buf, pos, record);
        // Data writing may have hit a limit worth signalling in the space left.
        if pos < buf.len() {
            pos = self.write_control(buf, pos, record);
        }
        pos
    }

    /// Encodes `frame` at `pos` if it fits.
    fn put(buf: &mut [u8], pos: &mut usize, frame: Frame) -> bool {
        let mut w = Writer::new(&mut buf[*pos..]);
        if frame.encode(&mut w).is_ok() {
            *pos += w.len();
            true
        } else {
            false
        }
    }

    /// Flow-control credit, blocked signals, RESET_STREAM and STOP_SENDING into `buf[pos..]`;
    /// returns the new position.
    pub(crate) fn write_control(
        &mut self,
        buf: &mut [u8],
        mut pos: usize,
        record: &mut dyn FnMut(StreamFrameRecord),
    ) -> usize {
        if self.max_data_pending
            && Self::put(buf, &mut pos, Frame::MaxData(self.conn_recv.window.limit()))
        {
            self.max_data_pending = false;
            record(StreamFrameRecord::MaxData);
        }
        for bidi in [true, false] {
            let d = dir(bidi);
            if self.max_streams_pending[d]
                && Self::put(
                    buf,
                    &mut pos,
                    Frame::MaxStreams {
                        bidi,
                        max: self.max_remote[d],
                    },
                )
            {
                self.max_streams_pending[d] = false;
                self.max_remote_sent[d] = self.max_remote[d];
                record(StreamFrameRecord::MaxStreams { bidi });
            }
            if self.streams_blocked_pending[d]
                && Self::put(
                    buf,
                    &mut pos,
                    Frame::StreamsBlocked {
                        bidi,
                        limit: self.max_local[d],
                    },
                )
            {
                self.streams_blocked_pending[d] = false;
                record(StreamFrameRecord::StreamsBlocked { bidi });
            }
        }
        if self.conn_send.blocked_pending
            && Self::put(buf, &mut pos, Frame::DataBlocked(self.conn_send.max))
        {
            self.conn_send.blocked_pending = false;
            record(StreamFrameRecord::DataBlocked);
        }
        for _ in 0..self.ctrl_queue.len() {
            let Some(id) = self.ctrl_queue.pop_front() else {
                break;
            };
            let Some(stream) = self.streams.get_mut(id) else {
                continue;
            };
            let sid = StreamId(id);
            if let Some(send) = &mut stream.send {
                if let Some(reset) = &mut send.reset {
                    if reset.frame_pending
                        && Self::put(
                            buf,
                            &mut pos,
                            Frame::ResetStream {
                                id,
                                error_code: reset.error_code,
                                final_size: reset.final_size,
                            },
                        )
                    {
                        reset.frame_pending = false;
                        record(StreamFrameRecord::ResetStream { id: sid });
                    }
                }
                if send.credit.blocked_pending
                    && Self::put(
                        buf,
                        &mut pos,
                        Frame::StreamDataBlocked {
                            id,
                            limit: send.credit.max,
                        },
                    )
                {
                    send.credit.blocked_pending = false;
                    record(StreamFrameRecord::StreamDataBlocked { id: sid });
                }
            }
            if let Some(recv) = &mut stream.recv {
                if let Some(stop) = &mut recv.stop {
                    if stop.frame_pending
                        && Self::put(
                            buf,
                            &mut pos,
                            Frame::StopSending {
                                id,
                                error_code: stop.error_code,
                            },
                        )
                    {
                        stop.frame_pending = false;
                        record(StreamFrameRecord::StopSending { id: sid });
                    }
                }
                if recv.max_data_pending
                    && Self::put(
                        buf,
                        &mut pos,
                        Frame::MaxStreamData {
                            id,
                            max: recv.window.limit(),
                        },
                    )
                {
                    recv.max_data_pending = false;
                    record(StreamFrameRecord::MaxStreamData { id: sid });
                }
            }
            if stream.has_ctrl() {
                self.ctrl_queue.push_back(id);
            } else {
                stream.in_ctrl_queue = false;
            }
        }
        pos
    }

    fn write_data(
        &mut self,
        buf: &mut [u8],
        mut pos: usize,
        record: &mut dyn FnMut(StreamFrameRecord),
    ) -> usize {
        // Passes over the queue, one frame per stream per pass, until a pass writes
        // nothing: fair across streams and still fills the packet. A stream that does
        // not fit keeps its place at the front for the next packet.
        let mut progress = true;
        while progress {
            progress = false;
            for _ in 0..self.send_queue.len() {
                if pos >= buf.len() {
                    return pos;
                }
                let Some(id) = self.send_queue.pop_front() else {
                    break;
                };
                let Some(stream) = self.streams.get_mut(id) else {
                    continue;
                };
                let Some(send) = &mut stream.send else {
                    stream.in_send_queue = false;
                    continue;
                };
                if !send.wants_send() {
                    stream.in_send_queue = false;
                    continue;
                }
                let conn_avail = self.conn_send.max.saturating_sub(self.data_sent);
                if send.can_send(conn_avail) {
                    let Some(f) = send.write_frame(id, &mut buf[pos..], conn_avail) else {
                        self.send_queue.push_front(id);
                        return pos;
                    };
                    pos += f.frame_len;
                    self.data_sent += f.new_bytes;
                    progress = true;
                    record(StreamFrameRecord::Stream {
                        id: StreamId(id),
                        offset: f.offset,
                        len: f.len,
                        fin: f.fin,
                    });
                }
                // §4.1: say when flow control, not the application, holds data back.
                if send.is_stream_blocked() {
                    send.credit.on_blocked();
                    if send.credit.blocked_pending {
                        Self::enqueue_ctrl(&mut self.ctrl_queue, id, stream);
                    }
                } else if send.buf.has_unsent() && self.data_sent >= self.conn_send.max {
                    self.conn_send.on_blocked();
                }
                if stream.send.as_ref().is_some_and(SendStream::wants_send) {
                    self.send_queue.push_back(id);
                } else {
                    stream.in_send_queue = false;
                }
            }
        }
        pos
    }

    /// A packet carrying `r` was acknowledged.
    pub fn on_acked(&mut self, r: StreamFrameRecord) {
        match r {
            StreamFrameRecord::Stream {
                id,
                offset,
                len,
                fin,
            } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                let Some(send) = &mut stream.send else { return };
                if send.on_ack(offset, len, fin) {
                    self.events.push_back(StreamEvent::Finished { id });
                }
                if send.write_blocked && send.capacity() > 0 {
                    send.write_blocked = false;
                    self.events.push_back(StreamEvent::Writable { id });
                }
                if stream.is_terminal() {
                    self.reap(id.0);
                }
            }
            StreamFrameRecord::ResetStream { id } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                if let Some(reset) = stream.send.as_mut().and_then(|s| s.reset.as_mut()) {
                    reset.acked = true;
                    reset.frame_pending = false;
                }
                if stream.is_terminal() {
                    self.reap(id.0);
                }
            }
            StreamFrameRecord::MaxData
            | StreamFrameRecord::MaxStreamData { .. }
            | StreamFrameRecord::MaxStreams { .. }
            | StreamFrameRecord::DataBlocked
            | StreamFrameRecord::StreamDataBlocked { .. }
            | StreamFrameRecord::StreamsBlocked { .. }
            | StreamFrameRecord::StopSending { .. } => {}
        }
    }

    /// A packet carrying `r` was declared lost: queue it again if still needed. Limits
    /// are re-sent with their current value, which supersedes the lost one.
    pub fn on_lost(&mut self, r: StreamFrameRecord) {
        match r {
            StreamFrameRecord::Stream {
                id,
                offset,
                len,
                fin,
            } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                let Some(send) = &mut stream.send else { return };
                send.on_lost(offset, len, fin);
                if send.wants_send() {
                    Self::enqueue_send(&mut self.send_queue, id.0, stream);
                }
            }
            StreamFrameRecord::MaxData => self.max_data_pending = true,
            StreamFrameRecord::MaxStreams { bidi } => self.max_streams_pending[dir(bidi)] = true,
            StreamFrameRecord::DataBlocked => self.conn_send.on_blocked_lost(self.data_sent),
            StreamFrameRecord::StreamsBlocked { bidi } => {
                let d = dir(bidi);
                if self.streams_blocked_at[d] == Some(self.max_local[d])
                    && self.next_local[d] >= self.max_local[d]
                {
                    self.streams_blocked_pending[d] = true;
                }
            }
            StreamFrameRecord::MaxStreamData { id } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                let Some(recv) = &mut stream.recv else { return };
                if recv.wants_max_data() {
                    recv.max_data_pending = true;
                    Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
                }
            }
            StreamFrameRecord::StreamDataBlocked { id } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                let Some(send) = &mut stream.send else { return };
                let used = send.buf.unsent_offset();
                send.credit.on_blocked_lost(used);
                if send.credit.blocked_pending {
                    Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
                }
            }
            StreamFrameRecord::ResetStream { id } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                let Some(reset) = stream.send.as_mut().and_then(|s| s.reset.as_mut()) else {
                    return;
                };
                if !reset.acked {
                    reset.frame_pending = true;
                    Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
                }
            }
            StreamFrameRecord::StopSending { id } => {
                let Some(stream) = self.streams.get_mut(id.0) else {
                    return;
                };
                let Some(recv) = &mut stream.recv else { return };
                if recv.wants_stop_frame() {
                    if let Some(stop) = &mut recv.stop {
                        stop.frame_pending = true;
                    }
                    Self::enqueue_ctrl(&mut self.ctrl_queue, id.0, stream);
                }
            }
        }
    }
}

/// Whether `f` holds for a stream in `queue`, the front one tried first: `has_pending` is
/// asked before every packet and the front usually decides, without setting up a walk of
/// the ring buffer.
fn any_queued(queue: &VecDeque<u64>, f: impl Fn(&u64) -> bool) -> bool {
    queue.front().is_some_and(&f) || (queue.len() > 1 && queue.iter().skip(1).any(f))
}
