//! Client role: open `--conns` connections and run `--streams` perf streams (or the
//! hq-interop GETs) on each at once, then print one JSON report line. `--down`/`--up` are
//! totals split over all streams of all connections, as for every peer
//! (`quench_tests::share`). MsQuic's callbacks report to this thread over a channel.

use std::ffi::c_void;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use msquic::{
    Addr, Api, Connection, ConnectionEvent, ConnectionRef, ConnectionShutdownFlags, SendFlags,
    Status, Stream, StreamEvent, StreamOpenFlags, StreamRef, StreamStartFlags,
};
use quench_tests::args::ClientArgs;
use quench_tests::report::Report;
use quench_tests::{datagram, hq, share};

use crate::config;
use crate::echo::{echo_datagrams, EchoState};
use crate::send::{self, Fill};
use crate::versions::{self, VERSION_1};
use crate::MsquicClientArgs;

/// The whole run's limit, beyond which the client gives up rather than hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for the connections to close after the transfer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// MsQuic's private `QUIC_PARAM_CONN_FORCE_KEY_UPDATE` (msquicp.h): starts a key update.
const PARAM_CONN_FORCE_KEY_UPDATE: u32 = 0x8500_0000;

/// What one stream is for; its index orders hq bodies in the report.
enum Job {
    Perf { down: u64, up: u64 },
    Get { path: String },
}

pub(crate) enum Outcome {
    Perf { down: u64, up: u64 },
    Body(Vec<u8>),
}

pub(crate) enum Msg {
    Connected {
        took: Duration,
        resumed: bool,
    },
    /// A session ticket the server sent (NewSessionTicket).
    Ticket(Vec<u8>),
    /// `echo`: a DATAGRAM frame came back on connection `conn`: its number and length.
    Echo {
        conn: usize,
        echo: Result<(u32, usize), String>,
    },
    Done {
        index: usize,
        outcome: Result<Outcome, String>,
    },
    Closed {
        error: Option<String>,
    },
}

/// How long the warm-up connection of `--resume` waits for a session ticket.
const TICKET_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: MsquicClientArgs) -> Result<()> {
    let MsquicClientArgs {
        common: args,
        quic_version: offered,
        resume,
        early_data,
    } = args;
    let resume = resume || early_data;
    let server: SocketAddr = args
        .connect
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.connect))?
        .next()
        .ok_or_else(|| anyhow!("{} resolves to no address", args.connect))?;
    let reg = config::registration()?;
    let configuration = config::client_configuration(&reg, &args.alpn, args.verify()?, &offered)?;
    let ticket = if resume {
        Some(warm_up(&reg, &configuration, server, &args.server_name)?)
    } else {
        None
    };

    let jobs = plan(&args);
    let pending_total: usize = jobs.iter().map(Vec::len).sum();

    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut conns = Vec::with_capacity(jobs.len());
    let mut echo_states: Vec<Arc<EchoState>> = Vec::new();
    for jobs in jobs {
        let trigger = args
            .key_update_after
            .map(KeyUpdateTrigger::new)
            .map(Arc::new);
        let echo = (args.alpn == "echo").then(|| {
            Arc::new(EchoState {
                conn: echo_states.len(),
                count: args.datagrams,
                limit: AtomicU64::new(0),
            })
        });
        echo_states.extend(echo.clone());
        // Early data: the streams open right after the start, not once connected.
        let (early_jobs, jobs) = if early_data {
            (jobs, Vec::new())
        } else {
            (Vec::new(), jobs)
        };
        let handler = connection_handler(jobs, tx.clone(), trigger.clone(), echo);
        let conn =
            Connection::open(&reg, handler).map_err(|e| anyhow!("opening a connection: {e}"))?;
        if let Some(ticket) = &ticket {
            // SAFETY: the ticket bytes are valid for the call, which copies them.
            unsafe {
                Api::set_param(
                    conn.as_raw(),
                    msquic::ffi::QUIC_PARAM_CONN_RESUMPTION_TICKET,
                    ticket.len() as u32,
                    ticket.as_ptr() as *const c_void,
                )
            }
            .map_err(|e| anyhow!("setting the session ticket: {e}"))?;
        }
        // Early data: each stream starts with its request, queued with ALLOW_0_RTT before
        // the connection starts, so the request leaves in 0-RTT with the first flight.
        for (index, job) in early_jobs {
            if let Err(e) = open_stream(&conn, index, job, tx.clone(), trigger.clone(), true) {
                let outcome = Err(format!("opening the stream: {e}"));
                let _ = tx.send(Msg::Done { index, outcome });
            }
        }
        start_connection(&conn, &configuration, server, &args.server_name)?;
        conns.push(conn);
    }

    let deadline = start + RUN_TIMEOUT;
    let mut pending = pending_total;
    let mut handshakes = Vec::new();
    let mut resumed = 0;
    let mut outcomes: Vec<Option<Outcome>> = (0..pending_total).map(|_| None).collect();
    // `echo` opens no streams: it waits for every handshake, then sends its datagrams.
    let connections = conns.len();
    while pending > 0 || (!echo_states.is_empty() && handshakes.len() < connections) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Connected { took, resumed: r }) => {
                handshakes.push(took);
                resumed += u64::from(r);
            }
            Ok(Msg::Ticket(_)) | Ok(Msg::Echo { .. }) => {}
            Ok(Msg::Done { index, outcome }) => {
                outcomes[index] = Some(outcome.map_err(|e| anyhow!("stream {index}: {e}"))?);
                pending -= 1;
            }
            Ok(Msg::Closed { error }) => {
                bail!(
                    "connection closed with {pending} streams unfinished: {}",
                    error.unwrap_or_else(|| "no error given".to_string())
                );
            }
            Err(RecvTimeoutError::Timeout) => bail!("timed out with {pending} streams unfinished"),
            Err(RecvTimeoutError::Disconnected) => unreachable!("this thread holds a sender"),
        }
    }
    let echoed = if echo_states.is_empty() {
        None
    } else {
        Some(echo_datagrams(&conns, &echo_states, &rx)?)
    };
    let seconds = start.elapsed().as_secs_f64();

    let mut report = match echoed {
        Some(report) => report,
        None => streams_report(&args.alpn, outcomes),
    };
    report.seconds = seconds;
    report.handshake_ms = handshakes.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3
        / handshakes.len().max(1) as f64;
    if resume {
        report.resumed = Some(resumed);
    }
    let first_flight = offered.first().copied().unwrap_or(VERSION_1);
    let ended_in: Vec<Option<u32>> = conns.iter().map(versions::of_connection).collect();
    report.version_switches = Some(
        ended_in
            .iter()
            .filter(|v| **v != Some(first_flight))
            .count() as u64,
    );
    report.quic_version = ended_in[0].filter(|v| ended_in.iter().all(|w| *w == Some(*v)));
    for conn in &conns {
        let stats = conn
            .get_stats_v2()
            .map_err(|e| anyhow!("connection statistics: {e}"))?;
        report.key_updates += u64::from(stats.KeyUpdateCount);
        // MsQuic's path MTU counts the IP and UDP headers; the report wants the UDP payload.
        let headers = if server.is_ipv4() { 28 } else { 48 };
        let payload = u64::from(stats.SendPathMtu).saturating_sub(headers);
        report.max_datagram_size = Some(report.max_datagram_size.unwrap_or(0).max(payload));
    }

    for conn in &conns {
        conn.shutdown(ConnectionShutdownFlags::NONE, 0);
    }
    let close_deadline = Instant::now() + CLOSE_TIMEOUT;
    let mut open = conns.len();
    while open > 0 {
        match rx.recv_timeout(close_deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Closed { .. }) => open -= 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(conns);
    println!("{}", report.to_json_line());
    Ok(())
}

/// The streams each connection runs: perf shares of `--down`/`--up`, a connection's streams
/// in a row, or the hq-interop GETs round-robin; `echo` opens none.
fn plan(args: &ClientArgs) -> Vec<Vec<(usize, Job)>> {
    let mut jobs: Vec<Vec<(usize, Job)>> = (0..args.conns).map(|_| Vec::new()).collect();
    let total_streams = args.conns * args.streams;
    if args.alpn == "perf" {
        for index in 0..total_streams {
            let down = share(args.down, total_streams, index);
            let up = share(args.up, total_streams, index);
            jobs[(index / args.streams) as usize].push((index as usize, Job::Perf { down, up }));
        }
    } else if args.alpn == "hq-interop" {
        for (index, path) in hq::paths(&args.get, args.down, total_streams)
            .into_iter()
            .enumerate()
        {
            jobs[index % args.conns as usize].push((index, Job::Get { path }));
        }
    }
    jobs
}

/// The report of a perf or hq-interop run from its streams' outcomes, in stream order.
fn streams_report(alpn: &str, outcomes: Vec<Option<Outcome>>) -> Report {
    let outcomes = outcomes.into_iter().flatten();
    if alpn == "perf" {
        let mut report = Report::default();
        for outcome in outcomes {
            if let Outcome::Perf { down, up } = outcome {
                report.bytes_down += down;
                report.bytes_up += up;
                report.streams += 1;
            }
        }
        return report;
    }
    let bodies: Vec<Vec<u8>> = outcomes
        .filter_map(|o| match o {
            Outcome::Body(body) => Some(body),
            Outcome::Perf { .. } => None,
        })
        .collect();
    hq::report(&bodies)
}

/// Points `conn` at `server` and starts its handshake.
fn start_connection(
    conn: &Connection,
    configuration: &msquic::Configuration,
    server: SocketAddr,
    server_name: &str,
) -> Result<()> {
    let addr = Addr::from(server);
    // SAFETY: `addr` is a valid QUIC_ADDR (the binding's `Addr` is its layout) that MsQuic
    // copies during the call. Setting it before `start` makes MsQuic connect there and use
    // `--server-name` only for SNI and certificate validation.
    unsafe {
        Api::set_param(
            conn.as_raw(),
            msquic::ffi::QUIC_PARAM_CONN_REMOTE_ADDRESS,
            std::mem::size_of::<Addr>() as u32,
            &addr as *const Addr as *const c_void,
        )
    }
    .map_err(|e| anyhow!("setting the server address: {e}"))?;
    conn.start(configuration, server_name, server.port())
        .map_err(|e| anyhow!("starting a connection to {server}: {e}"))
}

/// `--resume`: one connection that only waits for the server's session ticket, then closes.
fn warm_up(
    reg: &msquic::Registration,
    configuration: &msquic::Configuration,
    server: SocketAddr,
    server_name: &str,
) -> Result<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let conn = Connection::open(reg, connection_handler(Vec::new(), tx, None, None))
        .map_err(|e| anyhow!("opening the warm-up connection: {e}"))?;
    start_connection(&conn, configuration, server, server_name)?;
    let deadline = Instant::now() + TICKET_TIMEOUT;
    let ticket = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Ticket(ticket)) => break ticket,
            Ok(Msg::Closed { error }) => bail!(
                "the warm-up connection closed without a session ticket: {}",
                error.unwrap_or_else(|| "no error given".to_string())
            ),
            Ok(_) => {}
            Err(_) => bail!("no session ticket within {TICKET_TIMEOUT:?}"),
        }
    };
    conn.shutdown(ConnectionShutdownFlags::NONE, 0);
    let _ = rx.recv_timeout(CLOSE_TIMEOUT);
    Ok(ticket)
}

/// `--key-update-after`: once a connection has received that many stream bytes, it starts
/// one key update (RFC 9001 §6).
struct KeyUpdateTrigger {
    after: u64,
    received: AtomicU64,
    fired: AtomicBool,
    /// The connection's raw handle, set when it is connected.
    conn: AtomicU64,
}

impl KeyUpdateTrigger {
    fn new(after: u64) -> KeyUpdateTrigger {
        KeyUpdateTrigger {
            after,
            received: AtomicU64::new(0),
            fired: AtomicBool::new(false),
            conn: AtomicU64::new(0),
        }
    }

    fn on_received(&self, n: u64) {
        let total = self.received.fetch_add(n, Ordering::Relaxed) + n;
        let conn = self.conn.load(Ordering::Relaxed);
        if total >= self.after && conn != 0 && !self.fired.swap(true, Ordering::Relaxed) {
            // SAFETY: `conn` is the live handle of the connection whose stream is calling
            // back (MsQuic closes a connection only after all its streams' last events);
            // this parameter takes no payload.
            let result = unsafe {
                Api::set_param(
                    conn as msquic::ffi::HQUIC,
                    PARAM_CONN_FORCE_KEY_UPDATE,
                    0,
                    std::ptr::null(),
                )
            };
            if let Err(e) = result {
                eprintln!("msquic-peer client: forcing a key update: {e}");
            }
        }
    }
}

fn connection_handler(
    jobs: Vec<(usize, Job)>,
    tx: Sender<Msg>,
    trigger: Option<Arc<KeyUpdateTrigger>>,
    echo: Option<Arc<EchoState>>,
) -> impl FnMut(ConnectionRef, ConnectionEvent) -> Result<(), Status> + 'static {
    let started = Instant::now();
    let mut jobs = Some(jobs);
    let mut error: Option<String> = None;
    move |conn, event| {
        match event {
            ConnectionEvent::Connected {
                session_resumed, ..
            } => {
                let _ = tx.send(Msg::Connected {
                    took: started.elapsed(),
                    resumed: session_resumed,
                });
                if let Some(trigger) = &trigger {
                    // SAFETY: only the handle's value is read, to pass back to MsQuic.
                    let raw = unsafe { conn.as_raw() };
                    trigger.conn.store(raw as u64, Ordering::Relaxed);
                }
                for (index, job) in jobs.take().unwrap_or_default() {
                    if let Err(e) =
                        open_stream(&conn, index, job, tx.clone(), trigger.clone(), false)
                    {
                        let outcome = Err(format!("opening the stream: {e}"));
                        let _ = tx.send(Msg::Done { index, outcome });
                    }
                }
            }
            ConnectionEvent::DatagramStateChanged {
                send_enabled,
                max_send_length,
            } => {
                if let Some(echo) = &echo {
                    let limit = if send_enabled {
                        u64::from(max_send_length)
                    } else {
                        0
                    };
                    echo.limit.store(limit, Ordering::Relaxed);
                }
            }
            ConnectionEvent::DatagramReceived { buffer, .. } => {
                if let Some(echo) = &echo {
                    let bytes = buffer.as_bytes();
                    let checked = datagram::check_echo(bytes, echo.count)
                        .map(|i| (i, bytes.len()))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Echo {
                        conn: echo.conn,
                        echo: checked,
                    });
                }
            }
            ConnectionEvent::DatagramSendStateChanged {
                client_context,
                state,
            } if send::datagram_done(&state) => {
                send::complete(client_context);
            }
            ConnectionEvent::ResumptionTicketReceived { resumption_ticket } => {
                let _ = tx.send(Msg::Ticket(resumption_ticket.to_vec()));
            }
            ConnectionEvent::ShutdownInitiatedByTransport { status, error_code } => {
                error.get_or_insert(format!(
                    "closed by the transport: {status} (code {error_code:#x})"
                ));
            }
            ConnectionEvent::ShutdownInitiatedByPeer { error_code } => {
                error.get_or_insert(format!("closed by the peer with code {error_code:#x}"));
            }
            ConnectionEvent::ShutdownComplete {
                handshake_completed,
                ..
            } => {
                let mut error = error.take();
                if !handshake_completed {
                    let why = error.unwrap_or_else(|| "no reason given".to_string());
                    error = Some(format!("handshake failed: {why}"));
                }
                // The handle is closed by `run`, which owns it.
                let _ = tx.send(Msg::Closed { error });
            }
            _ => {}
        }
        Ok(())
    }
}

/// `early`: the stream starts with its request, sent with `ALLOW_0_RTT` (before the
/// connection starts); otherwise the request goes once the stream has started.
fn open_stream(
    conn: &Connection,
    index: usize,
    job: Job,
    tx: Sender<Msg>,
    trigger: Option<Arc<KeyUpdateTrigger>>,
    early: bool,
) -> Result<(), Status> {
    let (request, fin) = request_of(&job);
    let stream = Stream::open(
        conn,
        StreamOpenFlags::NONE,
        stream_handler(index, job, tx, trigger, !early),
    )?;
    if early {
        let mut flags = SendFlags::START | SendFlags::ALLOW_0_RTT;
        if fin {
            flags |= SendFlags::FIN;
        }
        send::send_owned(&stream, request, flags)?;
    } else {
        stream.start(StreamStartFlags::NONE)?;
    }
    // SAFETY: ownership passes to the stream's own handler, which closes the handle at
    // SHUTDOWN_COMPLETE (`close_stream`).
    let _ = unsafe { stream.into_raw() };
    Ok(())
}

/// One stream's whole life: on START_COMPLETE it sends its request (perf: the 8-byte count
/// and the upload; hq: the GET line), then counts or keeps what arrives, and reports once
/// the response's FIN is in and (perf) the peer has acknowledged the whole upload.
/// A job's request, and whether it ends the stream (hq: the GET line goes whole, with FIN).
fn request_of(job: &Job) -> (Vec<u8>, bool) {
    match job {
        Job::Perf { down, .. } => (down.to_be_bytes().to_vec(), false),
        Job::Get { path } => (format!("GET {path}\r\n").into_bytes(), true),
    }
}

/// `send_request`: the request is sent at START_COMPLETE (else it went with the start).
fn stream_handler(
    index: usize,
    job: Job,
    tx: Sender<Msg>,
    trigger: Option<Arc<KeyUpdateTrigger>>,
    send_request: bool,
) -> impl FnMut(StreamRef, StreamEvent) -> Result<(), Status> + 'static {
    let (want_down, up) = match &job {
        Job::Perf { down, up } => (Some(*down), *up),
        Job::Get { .. } => (None, 0),
    };
    let mut request = send_request.then(|| request_of(&job).0);
    // perf only: hq's request goes whole, with FIN, in one send.
    let mut upload = want_down.map(|_| Fill::new(up));
    let mut body = Vec::new();
    let mut received = 0u64;
    let mut fin = false;
    // hq: the GET line goes with FIN, and its acknowledgement does not gate the report.
    let mut acked = want_down.is_none();
    let mut reported = false;
    let report = move |outcome: Result<Outcome, String>, reported: &mut bool| {
        if !std::mem::replace(reported, true) {
            let _ = tx.send(Msg::Done { index, outcome });
        }
    };
    move |stream, event| {
        match event {
            StreamEvent::StartComplete { status, .. } => {
                let request = request.take();
                let sent = if !status.is_ok() {
                    Err(status)
                } else if let Some(upload) = &mut upload {
                    match request {
                        Some(r) => send::send_owned(&stream, r, SendFlags::NONE),
                        None => Ok(()),
                    }
                    .and_then(|()| upload.pump(&stream))
                } else {
                    match request {
                        Some(r) => send::send_owned(&stream, r, SendFlags::FIN),
                        None => Ok(()),
                    }
                };
                if let Err(e) = sent {
                    report(Err(format!("sending the request: {e}")), &mut reported);
                }
            }
            StreamEvent::Receive {
                buffers,
                total_buffer_length,
                ..
            } => {
                received += *total_buffer_length;
                if want_down.is_none() {
                    for buffer in buffers {
                        body.extend_from_slice(buffer.as_bytes());
                    }
                }
                if let Some(trigger) = &trigger {
                    trigger.on_received(*total_buffer_length);
                }
            }
            StreamEvent::SendComplete { client_context, .. } => match &mut upload {
                Some(upload) => {
                    if let Err(e) = upload.on_complete(&stream, client_context) {
                        report(Err(format!("sending the upload: {e}")), &mut reported);
                    }
                }
                None => {
                    send::complete(client_context);
                }
            },
            StreamEvent::PeerSendShutdown => fin = true,
            StreamEvent::SendShutdownComplete { graceful } => {
                if graceful {
                    acked = true;
                } else {
                    report(
                        Err("the upload was not acknowledged".to_string()),
                        &mut reported,
                    );
                }
            }
            StreamEvent::PeerSendAborted { error_code } => report(
                Err(format!(
                    "stream reset by the peer (RESET_STREAM code {error_code:#x})"
                )),
                &mut reported,
            ),
            StreamEvent::PeerReceiveAborted { error_code } => report(
                Err(format!(
                    "the peer stopped reading (STOP_SENDING code {error_code:#x})"
                )),
                &mut reported,
            ),
            StreamEvent::ShutdownComplete { .. } => {
                report(
                    Err("the stream ended before its transfer did".to_string()),
                    &mut reported,
                );
                crate::close_stream(&stream);
                return Ok(());
            }
            _ => {}
        }
        if fin && acked {
            let outcome = match want_down {
                Some(down) if received != down => {
                    Err(format!("perf: asked for {down} bytes, received {received}"))
                }
                Some(_) => Ok(Outcome::Perf { down: received, up }),
                None => Ok(Outcome::Body(std::mem::take(&mut body))),
            };
            report(outcome, &mut reported);
        }
        Ok(())
    }
}
