//! The UDP side of the event loop both roles share: wait for datagrams with a timeout (the
//! earliest of quiche's timers), take what else is queued without waiting, and send what a
//! connection has ready in bounded bursts so ACKs keep flowing both ways.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65535;
/// Datagrams taken per wakeup before the connections get to run again.
const RECV_BATCH: usize = 256;
/// Datagrams one connection may send per round before the socket is read again.
const SEND_BURST: usize = 64;

pub struct Net {
    socket: UdpSocket,
    local: SocketAddr,
    /// The socket's mode now: blocking (with a read timeout) to wait, non-blocking to drain.
    nonblocking: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Net {
    pub fn bind(addr: SocketAddr) -> Result<Net> {
        let socket = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
        let local = socket.local_addr()?;
        Ok(Net {
            socket,
            local,
            nonblocking: false,
            buf: vec![0; MAX_DATAGRAM],
            out: vec![0; MAX_DATAGRAM],
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    fn set_nonblocking(&mut self, nonblocking: bool) -> Result<()> {
        if self.nonblocking != nonblocking {
            self.socket.set_nonblocking(nonblocking)?;
            self.nonblocking = nonblocking;
        }
        Ok(())
    }

    /// Waits up to `wait` for a datagram (not at all when zero), then takes those already
    /// queued, up to [`RECV_BATCH`]; `on_datagram` gets each with its sender. Returns how
    /// many there were (0: `wait` passed).
    pub fn recv(
        &mut self,
        wait: Duration,
        mut on_datagram: impl FnMut(&mut [u8], SocketAddr),
    ) -> Result<usize> {
        let mut got = 0;
        if !wait.is_zero() {
            self.set_nonblocking(false)?;
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    on_datagram(&mut self.buf[..len], from);
                    got += 1;
                }
                Err(e) if quiet(&e) => return Ok(0),
                Err(e) => return Err(e).context("receiving"),
            }
        }
        self.set_nonblocking(true)?;
        while got < RECV_BATCH {
            match self.socket.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    on_datagram(&mut self.buf[..len], from);
                    got += 1;
                }
                Err(e) if quiet(&e) => break,
                Err(e) => return Err(e).context("receiving"),
            }
        }
        Ok(got)
    }

    /// Sends one datagram, waiting for room in the socket's buffer if it is full.
    pub fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> Result<()> {
        send(&self.socket, &mut self.nonblocking, datagram, to)
    }

    /// Sends what `conn` has ready, up to [`SEND_BURST`] datagrams; true if it had more.
    /// quiche's pacing times (`SendInfo::at`) are not waited for: loopback needs none.
    pub fn flush(&mut self, conn: &mut quiche::Connection) -> Result<bool> {
        for _ in 0..SEND_BURST {
            let (len, info) = match conn.send(&mut self.out) {
                Ok(sent) => sent,
                Err(quiche::Error::Done) => return Ok(false),
                Err(e) => return Err(e).context("quiche send"),
            };
            send(
                &self.socket,
                &mut self.nonblocking,
                &self.out[..len],
                info.to,
            )?;
        }
        Ok(true)
    }
}

fn send(socket: &UdpSocket, nonblocking: &mut bool, datagram: &[u8], to: SocketAddr) -> Result<()> {
    loop {
        match socket.send_to(datagram, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The socket buffer is full: wait for room rather than drop the datagram.
            Err(e) if e.kind() == ErrorKind::WouldBlock && *nonblocking => {
                socket.set_nonblocking(false)?;
                *nonblocking = false;
            }
            // An ICMP error from an earlier datagram (the peer went away): the connection's
            // own timers deal with that.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("sending to {to}")),
        }
    }
}

/// Errors that only mean "nothing to read now".
fn quiet(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock
            | ErrorKind::TimedOut
            | ErrorKind::Interrupted
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
    )
}
