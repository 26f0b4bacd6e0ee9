//! `echo`: every byte received on a bidirectional stream is sent back; FIN follows FIN.

use foldhash::HashMap;
use std::time::Instant;

use crate::app::Application;
use crate::conn::{Connection, StreamId};

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    fin: bool,
}

#[derive(Default)]
pub struct EchoServer {
    streams: HashMap<StreamId, Pending>,
}

impl EchoServer {
    fn flush(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(p) = self.streams.get_mut(&id) else {
            return;
        };
        while !p.buf.is_empty() {
            match conn.write(id, &p.buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    p.buf.drain(..n);
                }
            }
        }
        if p.fin {
            let _ = conn.finish(id);
            self.streams.remove(&id);
        }
    }
}

impl Application for EchoServer {
    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            return;
        }
        let p = self.streams.entry(id).or_default();
        // Read only as much as we can hold; back-pressure comes from not reading (flow control).
        let mut chunk = [0u8; 16 * 1024];
        while p.buf.len() < 256 * 1024 && !p.fin {
            match conn.read(id, &mut chunk, now) {
                Ok((n, fin)) => {
                    p.buf.extend_from_slice(&chunk[..n]);
                    p.fin = fin;
                    if n == 0 {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        self.flush(conn, id);
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        self.flush(conn, id);
        // Buffer space freed: read more.
        if self.streams.contains_key(&id) {
            self.on_readable(conn, id, now);
        }
    }
}
