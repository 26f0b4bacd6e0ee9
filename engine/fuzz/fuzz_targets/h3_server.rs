//! Arbitrary stream bytes against quench's HTTP/3 server over a real connection: a client
//! opens a request stream and/or a unidirectional stream, writes the input into them and
//! runs the pair for a while. The server may close the connection or reset streams with
//! any HTTP/3 code, but must never panic.
//!
//! Input: the first byte picks the streams (bit 0: a request stream, bit 1: a
//! unidirectional stream, bit 2: send a valid control stream first, bit 3: FIN the
//! streams); the second splits the rest between the two streams.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quench::app::h3::ALPN_H3;
use quench::app::{AppDispatcher, AppSlot, BuiltinApps};
use quench::conn::{Connection, Event, TransportConfig};
use quench::endpoint::{Endpoint, EndpointConfig, EventHandler};
use quench::io::mem::{pair, Impairments};
use quench::io::Datapath;
use quench::tls::certs::generate_self_signed;
use quench::tls::session::{client_config, server_config, ServerVerification};
use quench::wire::header::VERSION_1;
use quench::worker::transmit;

/// The client: on connect, writes the input's streams; reads and drops whatever comes.
struct Raw<'a> {
    flags: u8,
    request: &'a [u8],
    uni: &'a [u8],
}

impl EventHandler<()> for Raw<'_> {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, _: &mut (), ev: Event) {
        match ev {
            Event::Connected => {
                let fin = self.flags & 8 != 0;
                if self.flags & 4 != 0 {
                    if let Some(id) = conn.open_stream(false) {
                        // Stream type 0 (control), then an empty SETTINGS frame.
                        let _ = conn.write(id, &[0x00, 0x04, 0x00]);
                    }
                }
                if self.flags & 1 != 0 {
                    if let Some(id) = conn.open_stream(true) {
                        let _ = conn.write(id, self.request);
                        if fin {
                            let _ = conn.finish(id);
                        }
                    }
                }
                if self.flags & 2 != 0 {
                    if let Some(id) = conn.open_stream(false) {
                        let _ = conn.write(id, self.uni);
                        if fin {
                            let _ = conn.finish(id);
                        }
                    }
                }
            }
            Event::Stream(quench::conn::StreamEvent::Readable { id }) => {
                let mut buf = [0u8; 4096];
                while let Ok((n, fin)) = conn.read(id, &mut buf, now) {
                    if n == 0 || fin {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, split, rest @ ..] = data else {
        return;
    };
    let cut = (usize::from(*split) * rest.len() / 255).min(rest.len());
    let (request, uni) = rest.split_at(cut);
    let alpns = vec![ALPN_H3.to_vec()];
    // One certificate and TLS setup for the whole run: key generation would dominate.
    static TLS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> = OnceLock::new();
    let (stls, ctls) = TLS.get_or_init(|| {
        let alpns = vec![ALPN_H3.to_vec()];
        let cert = generate_self_signed(&["localhost".into()]).expect("certificate");
        let stls = server_config(cert, &alpns).expect("server TLS");
        let ctls = client_config(ServerVerification::Insecure, &alpns).expect("client TLS");
        (stls, ctls)
    });
    let (stls, ctls) = (stls.clone(), ctls.clone());
    let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let saddr: SocketAddr = "10.0.0.2:443".parse().unwrap();
    let (mut cdp, mut sdp) = pair(caddr, saddr, Impairments::none());
    let mut server: Endpoint<AppSlot> =
        Endpoint::new(EndpointConfig::new(TransportConfig::default(), Some(stls)));
    let mut client: Endpoint<()> =
        Endpoint::new(EndpointConfig::new(TransportConfig::default(), None));
    let mut now = Instant::now();
    client
        .connect(now, ctls, "localhost", saddr, VERSION_1)
        .expect("connect");
    let apps = BuiltinApps { alpns, root: None };
    let mut raw = Raw {
        flags: *flags,
        request,
        uni,
    };
    for _ in 0..400 {
        let mut disp = AppDispatcher { factory: &apps };
        let mut moved = cdp
            .recv_batch(&mut |m, b| {
                client.handle_datagram(now, m, b, &mut raw);
            })
            .unwrap();
        moved += sdp
            .recv_batch(&mut |m, b| {
                server.handle_datagram(now, m, b, &mut disp);
            })
            .unwrap();
        client.handle_timeouts(now, &mut raw);
        server.handle_timeouts(now, &mut disp);
        moved += transmit(&mut cdp, &mut client, now, 1).unwrap();
        moved += transmit(&mut sdp, &mut server, now, 1).unwrap();
        if moved == 0 {
            match [client.next_timeout(), server.next_timeout()]
                .into_iter()
                .flatten()
                .min()
            {
                Some(t) if t > now && t - now < Duration::from_secs(1) => now = t,
                _ => break,
            }
        } else {
            now += Duration::from_micros(50);
        }
    }
    assert!(server.connection_count() <= 1);
});
