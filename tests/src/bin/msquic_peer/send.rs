//! Sending on an MsQuic stream. `StreamSend` takes the caller's buffers by reference and
//! hands them back in `SEND_COMPLETE`; here every send boxes its buffer descriptor (and the
//! bytes, when they are not static) as the send's context, which `complete` frees.

use std::ffi::c_void;

use msquic::{BufferRef, Connection, DatagramSendState, SendFlags, Status, Stream, StreamRef};

/// Filler for perf payloads: only the count matters.
static FILL: [u8; 64 * 1024] = [0; 64 * 1024];
/// Filler chunks queued on a stream at once: enough to keep MsQuic's send buffer full
/// without queueing a whole transfer.
const WINDOW: usize = 8;

/// One send's context: the descriptor MsQuic reads, and the bytes it points into.
struct SendContext {
    buffers: [BufferRef; 1],
    owned: Option<Vec<u8>>,
}

/// Queues `bytes` (kept alive until MsQuic is done with them) with `flags`.
pub fn send_owned(stream: &Stream, bytes: Vec<u8>, flags: SendFlags) -> Result<(), Status> {
    let buffers = [BufferRef::from(bytes.as_slice())];
    submit(
        stream,
        SendContext {
            buffers,
            owned: Some(bytes),
        },
        flags,
    )
}

/// Queues `bytes` as one DATAGRAM frame (RFC 9221); its context is freed by `complete` once
/// MsQuic reports a final state for it ([`datagram_done`]).
pub fn send_datagram(conn: &Connection, bytes: Vec<u8>) -> Result<(), Status> {
    let context = Box::into_raw(Box::new(SendContext {
        buffers: [BufferRef::from(bytes.as_slice())],
        owned: Some(bytes),
    }));
    // SAFETY: as in `submit`: the box lives until MsQuic returns it with a final
    // DATAGRAM_SEND_STATE_CHANGED, or is freed here if the call fails.
    let result = unsafe {
        conn.datagram_send(
            &(*context).buffers,
            SendFlags::NONE,
            context as *const c_void,
        )
    };
    if result.is_err() {
        // SAFETY: the send was refused, so MsQuic holds no reference to the box.
        drop(unsafe { Box::from_raw(context) });
    }
    result
}

/// Whether MsQuic is done with a datagram in this state (msquic.h,
/// `QUIC_DATAGRAM_SEND_STATE_IS_FINAL`).
pub fn datagram_done(state: &DatagramSendState) -> bool {
    matches!(
        state,
        DatagramSendState::LostDiscarded
            | DatagramSendState::Acknowledged
            | DatagramSendState::AcknowledgedSpurious
            | DatagramSendState::Canceled
    )
}

/// Queues a static slice with `flags`.
fn send_static(stream: &Stream, bytes: &'static [u8], flags: SendFlags) -> Result<(), Status> {
    submit(
        stream,
        SendContext {
            buffers: [BufferRef::from(bytes)],
            owned: None,
        },
        flags,
    )
}

fn submit(stream: &Stream, context: SendContext, flags: SendFlags) -> Result<(), Status> {
    let context = Box::into_raw(Box::new(context));
    // SAFETY: `context` is a live heap allocation; the descriptor and the bytes it names
    // (static, or owned by the same box) stay valid until MsQuic returns the pointer in
    // SEND_COMPLETE, where `complete` frees it, or until the call fails, when it is freed
    // here and MsQuic kept no reference.
    let result = unsafe { stream.send(&(*context).buffers, flags, context as *const c_void) };
    if result.is_err() {
        // SAFETY: the send was refused, so MsQuic holds no reference to the box.
        drop(unsafe { Box::from_raw(context) });
    }
    result
}

/// SEND_COMPLETE: frees the send's context (null for a bare FIN, which has none); says
/// whether it was a filler chunk.
pub fn complete(client_context: *const c_void) -> bool {
    if client_context.is_null() {
        return false;
    }
    // SAFETY: every non-null context MsQuic returns came from `submit`'s `Box::into_raw`,
    // and MsQuic returns each exactly once.
    let context = unsafe { Box::from_raw(client_context as *mut SendContext) };
    context.owned.is_none()
}

/// A perf body of `remaining` filler bytes, sent in [`WINDOW`] chunks and FINed.
pub struct Fill {
    remaining: u64,
    in_flight: usize,
    fin_queued: bool,
}

impl Fill {
    pub fn new(len: u64) -> Fill {
        Fill {
            remaining: len,
            in_flight: 0,
            fin_queued: false,
        }
    }

    /// Queues chunks until the window is full; the last one carries FIN.
    pub fn pump(&mut self, stream: &StreamRef) -> Result<(), Status> {
        if self.fin_queued {
            return Ok(());
        }
        if self.remaining == 0 {
            self.fin_queued = true;
            // SAFETY: no buffers, so nothing to keep alive; the null context is skipped
            // by `complete`.
            return unsafe { stream.send(&[], SendFlags::FIN, std::ptr::null()) };
        }
        while self.in_flight < WINDOW && !self.fin_queued {
            let n = self.remaining.min(FILL.len() as u64);
            let last = n == self.remaining;
            let flags = if last {
                SendFlags::FIN
            } else {
                SendFlags::NONE
            };
            send_static(stream, &FILL[..n as usize], flags)?;
            self.remaining -= n;
            self.in_flight += 1;
            self.fin_queued = last;
        }
        Ok(())
    }

    /// SEND_COMPLETE of one of this body's chunks: frees it and refills the window.
    pub fn on_complete(
        &mut self,
        stream: &StreamRef,
        client_context: *const c_void,
    ) -> Result<(), Status> {
        if complete(client_context) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.pump(stream)
    }
}
