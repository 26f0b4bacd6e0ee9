//! Server role: a listener whose connections serve each bidirectional stream with the
//! protocol their ALPN names (perf or hq-interop), written directly on MsQuic's callbacks
//! (no async bridge, so the end-to-end benchmark measures MsQuic, not an adapter), until
//! SIGINT/SIGTERM.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use msquic::{
    Addr, Api, BufferRef, Connection, ConnectionEvent, ConnectionRef, Listener, ListenerEvent,
    Status, StreamEvent, StreamOpenFlags, StreamRef, StreamShutdownFlags,
};
use quench_tests::hq::{self, MAX_REQUEST, REQUEST_REJECTED};
use quench_tests::serve;

use crate::config;
use crate::send::{self, Fill};
use crate::versions::{self, VERSION_1, VERSION_2};
use crate::MsquicServerArgs;
use quench_tests::tls::CertFiles;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Perf,
    HqInterop,
    /// DATAGRAM frames (RFC 9221) sent back as they came; no streams.
    Echo,
}

type StreamHandler = Box<dyn FnMut(StreamRef, StreamEvent) -> Result<(), Status>>;

/// What the server saw, printed when it stops.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    resumed: AtomicU64,
    version_1: AtomicU64,
    version_2: AtomicU64,
}

pub fn run(args: MsquicServerArgs) -> Result<()> {
    let MsquicServerArgs {
        common: args,
        quic_version,
        retry,
        early_data,
    } = args;
    let cert = CertFiles::from_args(&args, "msquic-peer-")?;
    let reg = config::registration()?;
    versions::apply_globally(&quic_version)?;
    if retry {
        // MsQuic sends Retry once handshakes in progress hold this share of memory: 0%
        // means always.
        let percent: u16 = 0;
        // SAFETY: the parameter is a u16, read during the call.
        unsafe {
            Api::set_param(
                std::ptr::null_mut(),
                msquic::ffi::QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT,
                2,
                &percent as *const u16 as *const c_void,
            )
        }
        .map_err(|e| anyhow!("turning Retry on: {e}"))?;
    }
    let configuration = Arc::new(config::server_configuration(
        &reg,
        &args.alpn,
        &cert,
        &quic_version,
        early_data,
    )?);
    let root: Arc<Option<PathBuf>> = Arc::new(args.root.clone());
    let counters = Arc::new(Counters::default());
    let seen = counters.clone();

    let listener = Listener::open(&reg, move |_, event| {
        if let ListenerEvent::NewConnection { info, connection } = event {
            let protocol = match info.negotiated_alpn {
                b"perf" => Protocol::Perf,
                b"hq-interop" => Protocol::HqInterop,
                b"echo" => Protocol::Echo,
                // The listener only offers those three.
                _ => return Err(Status::new(msquic::StatusCode::QUIC_STATUS_INVALID_STATE)),
            };
            connection.set_callback_handler(connection_handler(
                protocol,
                root.clone(),
                seen.clone(),
            ));
            connection.set_configuration(&configuration)?;
        }
        Ok(())
    })
    .map_err(|e| anyhow!("opening the listener: {e}"))?;
    let alpns: Vec<BufferRef> = args
        .alpn
        .iter()
        .map(|a| BufferRef::from(a.as_str()))
        .collect();
    listener
        .start(&alpns, Some(&Addr::from(args.listen)))
        .map_err(|e| anyhow!("listening on {}: {e}", args.listen))?;
    let local = listener
        .get_local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(args.listen);
    serve::announce(local)?;

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?
        .block_on(serve::shutdown_signal())?;
    listener.stop();
    // Closes every connection; each one's handle is closed by its own SHUTDOWN_COMPLETE,
    // and dropping the registration waits for that.
    reg.shutdown();
    drop(listener);
    let retries = Api::get_perf()
        .map(|p| p.send_stateless_retry)
        .unwrap_or(-1);
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let stats = serde_json::json!({
        "connections": count(&counters.connections),
        "resumed": count(&counters.resumed),
        "retries": retries,
        "versions": {
            format!("{VERSION_1:#x}"): count(&counters.version_1),
            format!("{VERSION_2:#x}"): count(&counters.version_2),
        },
    });
    eprintln!("msquic-peer server: stats {stats}");
    Ok(())
}

fn connection_handler(
    protocol: Protocol,
    root: Arc<Option<PathBuf>>,
    counters: Arc<Counters>,
) -> impl FnMut(ConnectionRef, ConnectionEvent) -> Result<(), Status> + 'static {
    move |conn, event| {
        match event {
            ConnectionEvent::Connected {
                session_resumed, ..
            } => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                counters
                    .resumed
                    .fetch_add(u64::from(session_resumed), Ordering::Relaxed);
                match versions::of_connection(&conn) {
                    Some(VERSION_1) => counters.version_1.fetch_add(1, Ordering::Relaxed),
                    Some(VERSION_2) => counters.version_2.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                // MsQuic servers issue session tickets only when asked (resumption is on
                // in `config::server_configuration`): one per connection, as other
                // servers do.
                send_session_ticket(&conn);
            }
            ConnectionEvent::PeerStreamStarted { stream, flags } => {
                // A handler must be set before returning, whatever becomes of the stream.
                let handler: Option<StreamHandler> = match protocol {
                    _ if flags.contains(StreamOpenFlags::UNIDIRECTIONAL) => None,
                    Protocol::Perf => Some(Box::new(perf_stream())),
                    Protocol::HqInterop => Some(Box::new(hq_stream(root.clone()))),
                    // `echo` here is DATAGRAM frames only.
                    Protocol::Echo => None,
                };
                match handler {
                    Some(handler) => stream.set_callback_handler(handler),
                    None => {
                        stream.set_callback_handler(refused_stream());
                        abort(&stream, REQUEST_REJECTED);
                    }
                }
            }
            ConnectionEvent::DatagramReceived { buffer, .. } if protocol == Protocol::Echo => {
                if let Err(e) = send::send_datagram(&conn, buffer.as_bytes().to_vec()) {
                    eprintln!("msquic-peer server: echoing a datagram: {e}");
                }
            }
            ConnectionEvent::DatagramSendStateChanged {
                client_context,
                state,
            } if send::datagram_done(&state) => {
                send::complete(client_context);
            }
            ConnectionEvent::ShutdownComplete { .. } => {
                // SAFETY: an accepted connection's handle is ours to close, and
                // SHUTDOWN_COMPLETE is its last event; this callback's state is freed with
                // it and not touched after.
                drop(unsafe { Connection::from_raw(conn.as_raw()) });
            }
            _ => {}
        }
        Ok(())
    }
}

fn send_session_ticket(conn: &ConnectionRef) {
    let Some(send) = Api::get_ffi().ConnectionSendResumptionTicket else {
        return;
    };
    // SAFETY: `conn` is the live connection calling back; no resumption data is attached,
    // so the null buffer with length 0 is what the API expects.
    let status = unsafe {
        send(
            conn.as_raw(),
            msquic::ffi::QUIC_SEND_RESUMPTION_FLAGS_QUIC_SEND_RESUMPTION_FLAG_FINAL,
            0,
            std::ptr::null(),
        )
    };
    if let Err(e) = Status::ok_from_raw(status) {
        eprintln!("msquic-peer server: sending a session ticket: {e}");
    }
}

/// Abandons both directions of `stream` with `code` (RESET_STREAM and STOP_SENDING).
fn abort(stream: &StreamRef, code: u32) {
    let _ = stream.shutdown(StreamShutdownFlags::ABORT, u64::from(code));
}

/// What perf and hq-interop streams do alike: a SEND_COMPLETE frees the send and, for a
/// filler body, sends more; an abort by the peer aborts the rest; SHUTDOWN_COMPLETE closes.
fn common_stream_event(stream: &StreamRef, body: Option<&mut Fill>, event: StreamEvent) {
    match event {
        StreamEvent::SendComplete { client_context, .. } => {
            let pumped = match body {
                Some(fill) => fill.on_complete(stream, client_context),
                None => {
                    send::complete(client_context);
                    Ok(())
                }
            };
            if pumped.is_err() {
                abort(stream, REQUEST_REJECTED);
            }
        }
        StreamEvent::PeerSendAborted { .. } | StreamEvent::PeerReceiveAborted { .. } => {
            abort(stream, REQUEST_REJECTED)
        }
        StreamEvent::ShutdownComplete { .. } => crate::close_stream(stream),
        _ => {}
    }
}

fn refused_stream() -> impl FnMut(StreamRef, StreamEvent) -> Result<(), Status> + 'static {
    |stream, event| {
        match event {
            StreamEvent::SendComplete { client_context, .. } => {
                send::complete(client_context);
            }
            StreamEvent::ShutdownComplete { .. } => crate::close_stream(&stream),
            _ => {}
        }
        Ok(())
    }
}

/// perf: an 8-byte big-endian count, then any upload (discarded) and FIN; the answer is
/// that many bytes and FIN, sent while the upload still arrives.
fn perf_stream() -> impl FnMut(StreamRef, StreamEvent) -> Result<(), Status> + 'static {
    let mut header = [0u8; 8];
    let mut have = 0;
    let mut body: Option<Fill> = None;
    move |stream, event| {
        match event {
            StreamEvent::Receive { buffers, .. } if body.is_none() => {
                for bytes in buffers.iter().map(BufferRef::as_bytes) {
                    let take = (header.len() - have).min(bytes.len());
                    header[have..have + take].copy_from_slice(&bytes[..take]);
                    have += take;
                }
                if have == header.len() {
                    let mut fill = Fill::new(u64::from_be_bytes(header));
                    if fill.pump(&stream).is_err() {
                        abort(&stream, REQUEST_REJECTED);
                    }
                    body = Some(fill);
                }
            }
            // FIN before the whole count: not a perf request.
            StreamEvent::PeerSendShutdown if body.is_none() => abort(&stream, REQUEST_REJECTED),
            other => common_stream_event(&stream, body.as_mut(), other),
        }
        Ok(())
    }
}

/// hq-interop: `GET /path\r\n` and FIN; the answer is the file under `--root`, or for `/N`
/// naming no file N bytes, and FIN; anything else resets the stream.
fn hq_stream(
    root: Arc<Option<PathBuf>>,
) -> impl FnMut(StreamRef, StreamEvent) -> Result<(), Status> + 'static {
    let mut request = Vec::new();
    let mut body: Option<Fill> = None;
    move |stream, event| {
        match event {
            StreamEvent::Receive { buffers, .. } => {
                for bytes in buffers.iter().map(BufferRef::as_bytes) {
                    request.extend_from_slice(bytes);
                }
                if request.len() > MAX_REQUEST {
                    abort(&stream, REQUEST_REJECTED);
                }
            }
            StreamEvent::PeerSendShutdown => match respond(&request, root.as_ref().as_deref()) {
                Ok(Response::File(bytes)) => {
                    if send::send_owned(&stream, bytes, msquic::SendFlags::FIN).is_err() {
                        abort(&stream, REQUEST_REJECTED);
                    }
                }
                Ok(Response::Generated(len)) => {
                    let mut fill = Fill::new(len);
                    if fill.pump(&stream).is_err() {
                        abort(&stream, REQUEST_REJECTED);
                    }
                    body = Some(fill);
                }
                Err(e) => {
                    eprintln!("msquic-peer server: stream: {e:#}");
                    abort(&stream, REQUEST_REJECTED);
                }
            },
            other => common_stream_event(&stream, body.as_mut(), other),
        }
        Ok(())
    }
}

enum Response {
    File(Vec<u8>),
    Generated(u64),
}

/// The shared hq-interop rules (`quench_tests::hq`) applied to a whole request.
fn respond(request: &[u8], root: Option<&std::path::Path>) -> Result<Response> {
    let path = hq::parse_request(request)?;
    if let Some(file) = root.and_then(|root| hq::resolve(root, path)) {
        if file.is_file() {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            return Ok(Response::File(bytes));
        }
    }
    match path[1..].parse::<u64>() {
        Ok(len) => Ok(Response::Generated(len)),
        Err(_) => Err(anyhow!("no such file: {path}")),
    }
}
