//! The floor for a QUIC server handshake: rustls alone in QUIC mode (handshake messages
//! only, no packets), the same configuration, certificate, suite and group the QUIC stacks
//! use. The server's calls are timed; the client's are not.

use std::time::Instant;

use rustls::quic::{ClientConnection, ServerConnection, Version};

use crate::tls::TlsSetup;
use crate::{server_span, Stopwatch};

/// Transport parameters of about the size quench sends (rustls does not parse them).
const PARAMS_LEN: usize = 80;

/// One handshake, tickets included (full, or resumed with `TlsSetup::resuming` once a
/// ticket is in); returns the handshake bytes both ways and whether it resumed.
pub fn handshake(tls: &TlsSetup, sw: &mut Stopwatch) -> (usize, bool) {
    let mut client = ClientConnection::new(
        tls.client.clone(),
        Version::V1,
        TlsSetup::server_name(),
        vec![0; PARAMS_LEN],
    )
    .expect("rustls client");
    let t0 = Instant::now();
    let mut server =
        server_span(|| ServerConnection::new(tls.server.clone(), Version::V1, vec![0; PARAMS_LEN]))
            .expect("rustls server");
    sw.stop(t0);
    let mut buf = Vec::with_capacity(4096);
    let mut moved = 0;
    for _ in 0..32 {
        let mut progress = false;
        // Client flight: each epoch's bytes are fed separately, as QUIC would.
        loop {
            buf.clear();
            let change = client.write_hs(&mut buf);
            if !buf.is_empty() {
                progress = true;
                moved += buf.len();
                let t0 = Instant::now();
                server_span(|| server.read_hs(&buf)).expect("server reads client flight");
                sw.stop(t0);
            }
            if change.is_none() && buf.is_empty() {
                break;
            }
        }
        loop {
            buf.clear();
            let t0 = Instant::now();
            let change = server_span(|| server.write_hs(&mut buf));
            sw.stop(t0);
            if !buf.is_empty() {
                progress = true;
                moved += buf.len();
                client.read_hs(&buf).expect("client reads server flight");
            }
            if change.is_none() && buf.is_empty() {
                break;
            }
        }
        if !progress && !client.is_handshaking() && !server.is_handshaking() {
            let resumed = server.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            return (moved, resumed);
        }
    }
    panic!("rustls handshake did not finish");
}
