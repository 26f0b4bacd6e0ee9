#!/usr/bin/env python3
"""aioquic server for quench interop tests: an independent QUIC stack (aioquic 1.x).

Serves the same protocols as `quench serve` and `quinn-peer server`, so `quench client`
can be tested against a peer it shares no code with:

    aioquic_server.py --listen HOST:PORT --cert PEM --key PEM [--root DIR] [--retry]
                      [--quic-versions 1,2] [--max-datagram-size N]

  perf        the client opens bidirectional streams and sends an 8-byte big-endian count,
              then any upload and FIN; the server discards the upload and answers with
              exactly that many zero bytes, then FIN (a request that ends before the
              8 bytes gets an empty answer, as with quench).
  hq-interop  HTTP/0.9: `GET /path\\r\\n` and FIN; the answer is the file at --root/path,
              then FIN. A missing file (or a path out of --root) resets the stream.
  echo        every DATAGRAM frame (RFC 9221) is sent back as it came.

Prints `aioquic_server: listening on HOST:PORT` (the real port) on stdout when ready. On
stderr, one line per connection when its handshake completes and one when it is over:

    aioquic_server: closed {"peer": ..., "version": "0x00000001", "alpn": "perf",
        "retry": false, "peer_key_updates": 0, "streams": 2, "bytes_in": N, "bytes_out": N,
        "reason": ...}

`streams` counts answers completed (FIN written), `bytes_in` the bytes read on request
streams (perf: after the 8-byte count; hq: the request lines), `bytes_out` the response
bytes written, `retry` whether the client proved its address with a Retry token and
`peer_key_updates` how many key updates the peer initiated. Connections still open on
SIGTERM/SIGINT are reported too, then the server closes them and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import BinaryIO

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import crypto
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import Epoch

ALPNS = ["perf", "hq-interop", "echo"]
VERSIONS = {1: QuicProtocolVersion.VERSION_1, 2: QuicProtocolVersion.VERSION_2}
# Generous flow-control windows (aioquic doubles them as they fill) so a loopback transfer
# is CPU-bound, not credit-bound.
STREAM_WINDOW = 16 << 20
CONN_WINDOW = 24 << 20
IDLE_TIMEOUT_S = 30.0
# Response back-pressure: aioquic buffers whatever is written; keep at most this much
# unacknowledged per stream and top it up as ACKs arrive.
CHUNK = 256 << 10
IN_FLIGHT = 4 << 20
ZEROS = memoryview(bytes(CHUNK))
# hq-interop: longest request line read before giving up on it.
MAX_REQUEST = 4096
# Stream reset code for an hq-interop request that cannot be answered (HTTP/0.9 has none).
HQ_NOT_FOUND = 0x1

# Count key updates the peer initiated. aioquic has no public hook; it is pinned to 1.x,
# whose CryptoPair switches both directions in `_update_key(trigger)`.
_update_key = crypto.CryptoPair._update_key


def _counting_update_key(self: crypto.CryptoPair, trigger: str) -> None:
    if trigger == "remote_update":
        self.peer_key_updates = getattr(self, "peer_key_updates", 0) + 1
    _update_key(self, trigger)


crypto.CryptoPair._update_key = _counting_update_key


def log(message: str) -> None:
    print(f"aioquic_server: {message}", file=sys.stderr, flush=True)


def format_addr(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Request:
    """A request stream's receive side."""

    head: bytearray
    answered: bool = False
    finished: bool = False


@dataclass
class Response:
    """A response still being written: `left` more bytes of zeros or of `file`."""

    stream_id: int
    left: int
    file: BinaryIO | None = None


class Connection(QuicConnectionProtocol):
    """Serves perf and hq-interop requests on one connection."""

    def __init__(self, *args, root: str, registry: set, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._root = os.path.realpath(root)
        self._registry = registry
        self._requests: dict[int, Request] = {}
        self._responses: dict[int, Response] = {}
        self._peer: str | None = None
        self._reported = False
        self.streams = 0
        self.bytes_in = 0
        self.bytes_out = 0
        registry.add(self)

    # Transport --------------------------------------------------------------------------------

    def datagram_received(self, data, addr) -> None:
        if self._peer is None:
            self._peer = format_addr(addr)
        super().datagram_received(data, addr)
        close = self._quic._close_event
        if close is not None:
            # Closed by the peer (or by us): report now rather than after draining, which
            # aioquic ends with ConnectionTerminated only 3 PTO later.
            self.report(f"error {close.error_code:#x} {close.reason_phrase!r}")
            return
        # ACKs may have freed room under IN_FLIGHT: top the responses up.
        if self._responses:
            self._pump()
            self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            log(
                f"connection from {self._peer}: QUIC version {self._quic._version:#010x}, "
                f"ALPN {event.alpn_protocol}"
            )
        elif isinstance(event, DatagramFrameReceived):
            # echo: every DATAGRAM frame (RFC 9221) goes back as it came.
            self._quic.send_datagram_frame(event.data)
            self.transmit()
        elif isinstance(event, StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, (StreamReset, StopSendingReceived)):
            # A reset request side needs no answer; a stopped response is reset by aioquic.
            self._drop(event.stream_id, stop_sending=isinstance(event, StopSendingReceived))
        elif isinstance(event, ConnectionTerminated):
            self.report(f"error {event.error_code:#x} {event.reason_phrase!r}")

    # Requests ---------------------------------------------------------------------------------

    def _alpn(self) -> str | None:
        # Known once the ClientHello is processed, possibly before HandshakeCompleted is
        # delivered (1-RTT data can overtake the client's Finished).
        return self._quic.tls.alpn_negotiated

    def _on_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        # Requests arrive on client-initiated bidirectional streams only.
        if stream_id % 4 != 0:
            return
        request = self._requests.get(stream_id)
        if request is None:
            request = self._requests[stream_id] = Request(head=bytearray())
        alpn = self._alpn()
        if alpn == "perf":
            need = 8 - len(request.head)
            request.head += data[:need]
            self.bytes_in += max(0, len(data) - need)
            if not request.answered and (len(request.head) == 8 or fin):
                want = int.from_bytes(request.head, "big") if len(request.head) == 8 else 0
                self._answer(stream_id, request, want)
        elif alpn == "hq-interop":
            self.bytes_in += len(data)
            if not request.answered:
                request.head += data
                line, sep, _ = bytes(request.head).partition(b"\n")
                if sep or fin or len(request.head) > MAX_REQUEST:
                    self._get(stream_id, request, line.rstrip(b"\r"))
        if fin:
            request.finished = True
            self._forget(stream_id)
        self._pump()
        self.transmit()

    def _answer(self, stream_id: int, request: Request, size: int, file=None) -> None:
        request.answered = True
        self._responses[stream_id] = Response(stream_id=stream_id, left=size, file=file)

    def _get(self, stream_id: int, request: Request, line: bytes) -> None:
        method, _, path = line.decode("latin-1").partition(" ")
        target = os.path.realpath(os.path.join(self._root, path.strip().lstrip("/")))
        inside = target.startswith(self._root + os.sep)
        if method != "GET" or not inside or not os.path.isfile(target):
            log(f"{self._peer}: stream {stream_id}: cannot answer {line!r}: resetting it")
            request.answered = True
            self._quic.reset_stream(stream_id, HQ_NOT_FOUND)
            return
        file = open(target, "rb")  # noqa: SIM115 - closed once the response is written
        self._answer(stream_id, request, os.fstat(file.fileno()).st_size, file)

    def _drop(self, stream_id: int, stop_sending: bool) -> None:
        request = self._requests.get(stream_id)
        if request is not None and not stop_sending:
            request.finished = True
            if not request.answered:
                # Abandoned before it was complete: abandon our side too.
                request.answered = True
                self._quic.reset_stream(stream_id, HQ_NOT_FOUND)
        if stop_sending:
            response = self._responses.pop(stream_id, None)
            if response is not None and response.file is not None:
                response.file.close()
            if request is not None:
                request.answered = True
        self._forget(stream_id)
        self.transmit()

    def _forget(self, stream_id: int) -> None:
        request = self._requests.get(stream_id)
        if request is not None and request.finished and request.answered:
            if stream_id not in self._responses:
                del self._requests[stream_id]

    # Responses --------------------------------------------------------------------------------

    def _unacked(self, stream_id: int) -> int:
        # No public send-buffer level in aioquic 1.x: its sender keeps the offsets
        # [acknowledged start, written stop).
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        return stream.sender._buffer_stop - stream.sender._buffer_start

    def _pump(self) -> None:
        for stream_id, response in list(self._responses.items()):
            while True:
                if response.left > 0 and self._unacked(stream_id) >= IN_FLIGHT:
                    break
                n = min(response.left, CHUNK)
                if response.file is not None:
                    data = response.file.read(n) if n else b""
                    if len(data) != n:
                        raise OSError(f"stream {stream_id}: file shrank while being sent")
                else:
                    data = ZEROS[:n]
                response.left -= n
                self.bytes_out += n
                self._quic.send_stream_data(stream_id, data, end_stream=response.left == 0)
                if response.left == 0:
                    if response.file is not None:
                        response.file.close()
                    del self._responses[stream_id]
                    self.streams += 1
                    self._forget(stream_id)
                    break

    # Reporting --------------------------------------------------------------------------------

    def report(self, reason: str) -> None:
        """Logs the connection's summary line, once."""
        if self._reported:
            return
        self._reported = True
        self._registry.discard(self)
        one_rtt = self._quic._cryptos.get(Epoch.ONE_RTT)
        summary = {
            "peer": self._peer,
            "version": f"{self._quic._version:#010x}",
            "alpn": self._alpn(),
            "retry": self._quic._retry_source_connection_id is not None,
            "resumed": self._quic.tls.session_resumed,
            "early_data": self._quic.tls.early_data_accepted,
            "peer_key_updates": getattr(one_rtt, "peer_key_updates", 0),
            "streams": self.streams,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "reason": reason,
        }
        log(f"closed {json.dumps(summary)}")
        for response in self._responses.values():
            if response.file is not None:
                response.file.close()
        self._responses.clear()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--listen", required=True, help="HOST:PORT ([v6]:PORT for IPv6); port 0 picks one"
    )
    p.add_argument("--cert", required=True, help="certificate chain (PEM), leaf first")
    p.add_argument("--key", required=True, help="private key (PEM)")
    p.add_argument("--root", default=".", help="hq-interop document root")
    p.add_argument(
        "--retry",
        action="store_true",
        help="send a Retry to every new client and accept it only with a valid token",
    )
    p.add_argument(
        "--quic-versions",
        default="1,2",
        help="comma-separated versions to accept (1: RFC 9000, 2: RFC 9369); others get "
        "Version Negotiation",
    )
    p.add_argument(
        "--max-datagram-size",
        type=int,
        default=1452,
        help="largest UDP payload to send (aioquic does no path MTU discovery)",
    )
    args = p.parse_args(argv)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--listen must be HOST:PORT")
    args.host, args.port = host.strip("[]"), int(port)
    try:
        args.versions = [VERSIONS[int(v)] for v in args.quic_versions.split(",")]
    except (KeyError, ValueError):
        p.error("--quic-versions takes a comma-separated list of 1 and 2")
    if not os.path.isdir(args.root):
        p.error(f"--root {args.root!r} is not a directory")
    return args


async def run(args: argparse.Namespace) -> None:
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=ALPNS,
        idle_timeout=IDLE_TIMEOUT_S,
        max_data=CONN_WINDOW,
        max_stream_data=STREAM_WINDOW,
        max_datagram_size=args.max_datagram_size,
        max_datagram_frame_size=65536,
    )
    config.supported_versions = args.versions
    config.load_cert_chain(args.cert, args.key)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog:
        config.secrets_log_file = open(keylog, "a")  # noqa: SIM115 - lives for the process

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    live: set[Connection] = set()
    # Session tickets (RFC 8446 §4.6.1), so clients can resume: kept in memory, single use.
    tickets: dict = {}
    server = await serve(
        args.host,
        args.port,
        configuration=config,
        create_protocol=lambda *a, **kw: Connection(*a, root=args.root, registry=live, **kw),
        retry=args.retry,
        session_ticket_fetcher=lambda label: tickets.pop(label, None),
        session_ticket_handler=lambda ticket: tickets.__setitem__(ticket.ticket, ticket),
    )
    addr = format_addr(server._transport.get_extra_info("sockname"))
    print(f"aioquic_server: listening on {addr}", flush=True)

    await stop.wait()
    for connection in list(live):
        connection.report("open at shutdown")
    # Sends CONNECTION_CLOSE on every connection, then closes the socket.
    server.close()
    await asyncio.sleep(0)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except Exception as e:  # noqa: BLE001 - any failure must exit non-zero, with a reason
        log(f"error: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
