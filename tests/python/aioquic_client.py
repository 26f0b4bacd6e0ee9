#!/usr/bin/env python3
"""aioquic client for quench interop tests: an independent QUIC stack (aioquic 1.x).

Speaks `perf`, `hq-interop` and `echo` datagrams with the same flags and the same
one-line JSON report as `quench client` and `quinn-peer client`:

    aioquic_client.py --connect HOST:PORT [--alpn perf|hq-interop|echo] [--down N] [--up N]
                      [--streams N] [--conns N] [--get PATH]... [--ca PEM | --insecure]
                      [--key-update-after BYTES] [--server-name NAME] [--datagrams N]

--alpn echo --datagrams N sends N numbered DATAGRAM frames (RFC 9221) on each connection
and checks every echo byte for byte; the report adds datagrams_sent / datagrams_echoed.

--down/--up are totals for the run, split evenly over all streams of all connections.
Exit status 0 on success; any failure prints a message to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
import time
from dataclasses import dataclass, field

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

# Generous flow-control windows so a loopback transfer is CPU-bound, not credit-bound.
STREAM_WINDOW = 16 << 20
CONN_WINDOW = 24 << 20
# Upload back-pressure: never hold more than this much unacknowledged data per stream.
UPLOAD_CHUNK = 256 << 10
UPLOAD_IN_FLIGHT = 4 << 20
IDLE_TIMEOUT_S = 15.0
FILL = bytes(UPLOAD_CHUNK)


class PeerError(Exception):
    """The server or the connection misbehaved."""


@dataclass
class Stream:
    """One request's receive side."""

    keep_body: bool
    done: asyncio.Future
    received: int = 0
    body: bytearray = field(default_factory=bytearray)


class Client(QuicConnectionProtocol):
    """Tracks per-stream completion, counts received bytes, forces one key update."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._streams: dict[int, Stream] = {}
        self._progress = asyncio.Event()
        self.key_update_after: int | None = None
        self.key_updates = 0
        self.received = 0
        self.terminated: str | None = None
        self.echoes: set[int] = set()
        self.echo_bytes = 0
        self.datagram_error: str | None = None

    # Events ---------------------------------------------------------------------------------

    def datagram_received(self, data, addr) -> None:
        super().datagram_received(data, addr)
        # ACKs may have freed upload buffer space: wake writers waiting on back-pressure.
        self._progress.set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            data = event.data
            i = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
            if i < 0 or data != echo_datagram(i) or i in self.echoes:
                self.datagram_error = f"an echo of {len(data)} bytes that was not sent, or twice"
            else:
                self.echoes.add(i)
                self.echo_bytes += len(data)
            self._progress.set()
        elif isinstance(event, StreamDataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                return
            n = len(event.data)
            stream.received += n
            if stream.keep_body:
                stream.body += event.data
            self.received += n
            if (
                self.key_update_after is not None
                and self.key_updates == 0
                and self.received >= self.key_update_after
            ):
                self.key_updates += 1
                self.request_key_update()
            if event.end_stream and not stream.done.done():
                stream.done.set_result(None)
        elif isinstance(event, StreamReset):
            self._fail_stream(event.stream_id, f"stream reset by peer: error {event.error_code}")
        elif isinstance(event, StopSendingReceived):
            self._fail_stream(event.stream_id, f"peer sent STOP_SENDING: error {event.error_code}")
        elif isinstance(event, ConnectionTerminated):
            self.terminated = (
                f"connection closed by peer: error {event.error_code:#x} {event.reason_phrase!r}"
            )
            for stream_id in list(self._streams):
                self._fail_stream(stream_id, self.terminated)
            self._progress.set()

    def _fail_stream(self, stream_id: int, reason: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.done.done():
            stream.done.set_exception(PeerError(reason))

    # Requests -------------------------------------------------------------------------------

    def _open(self, keep_body: bool) -> tuple[int, Stream]:
        stream_id = self._quic.get_next_available_stream_id()
        stream = Stream(keep_body=keep_body, done=self._loop.create_future())
        self._streams[stream_id] = stream
        return stream_id, stream

    def _unacked(self, stream_id: int) -> int:
        # aioquic exposes no public send-buffer level; it is pinned to 1.x, whose sender keeps
        # [acknowledged start, written stop) offsets.
        sender = self._quic._streams[stream_id].sender
        return sender._buffer_stop - sender._buffer_start

    def _upload_acked(self, stream_id: int) -> bool:
        stream = self._quic._streams.get(stream_id)
        # A stream is discarded from the table once both directions are finished.
        return stream is None or stream.sender.is_finished

    async def _wait_progress(self) -> None:
        if self.terminated:
            raise PeerError(self.terminated)
        self._progress.clear()
        try:
            await asyncio.wait_for(self._progress.wait(), timeout=IDLE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise PeerError("no progress for %.0f s" % IDLE_TIMEOUT_S) from None

    async def perf(self, down: int, up: int) -> tuple[int, int]:
        stream_id, stream = self._open(keep_body=False)
        self._quic.send_stream_data(stream_id, down.to_bytes(8, "big"), end_stream=up == 0)
        self.transmit()
        left = up
        while left > 0:
            if self._unacked(stream_id) >= UPLOAD_IN_FLIGHT:
                await self._wait_progress()
                continue
            n = min(left, UPLOAD_CHUNK)
            left -= n
            self._quic.send_stream_data(stream_id, FILL[:n], end_stream=left == 0)
            self.transmit()
        await stream.done
        # Count the upload only once the server has acknowledged all of it.
        while not self._upload_acked(stream_id):
            await self._wait_progress()
        if stream.received != down:
            raise PeerError(f"perf: asked for {down} bytes, received {stream.received}")
        return stream.received, up

    async def datagrams(self, count: int) -> tuple[int, int, int]:
        """Sends `count` numbered datagrams, at most 32 awaiting their echo; waits until all
        came back or none came for 2 s. Returns (echoed, bytes echoed, bytes sent)."""
        sent = 0
        for i in range(count):
            while i - len(self.echoes) > 32:
                if not await self._wait_echo():
                    break
            d = echo_datagram(i)
            self._quic.send_datagram_frame(d)
            sent += len(d)
            self.transmit()
        while len(self.echoes) < count and await self._wait_echo():
            pass
        if self.datagram_error:
            raise PeerError(self.datagram_error)
        return len(self.echoes), self.echo_bytes, sent

    async def _wait_echo(self) -> bool:
        """Waits up to 2 s for progress; False if none came (the rest count as lost)."""
        if self.terminated:
            raise PeerError(self.terminated)
        self._progress.clear()
        before = len(self.echoes)
        try:
            await asyncio.wait_for(self._progress.wait(), timeout=2.0)
        except asyncio.TimeoutError:
            return len(self.echoes) > before
        return True

    async def get(self, path: str) -> bytes:
        stream_id, stream = self._open(keep_body=True)
        self._quic.send_stream_data(stream_id, f"GET {path}\r\n".encode(), end_stream=True)
        self.transmit()
        await stream.done
        return bytes(stream.body)


def echo_datagram(i: int) -> bytes:
    """Datagram i of an echo run, as quench and quinn-peer make it: 5 to 1,100 bytes, its
    number (big-endian) in the first four, then a pattern of it."""
    length = 5 + (i * 37) % 1096
    body = bytes((i * 31 + j * 7) & 0xFF for j in range(length - 4))
    return i.to_bytes(4, "big") + body


def share(total: int, parts: int, index: int) -> int:
    """The index-th of `parts` near-equal shares of `total`."""
    return total // parts + (1 if index < total % parts else 0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="HOST:PORT ([v6]:PORT for IPv6)")
    p.add_argument("--alpn", default="perf", choices=["perf", "hq-interop", "echo"])
    p.add_argument("--datagrams", type=int, default=0, help="echo: datagrams per connection")
    p.add_argument("--down", type=int, default=0)
    p.add_argument("--up", type=int, default=0)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--get", action="append", default=[])
    verify = p.add_mutually_exclusive_group(required=True)
    verify.add_argument("--ca")
    verify.add_argument("--insecure", action="store_true")
    p.add_argument("--key-update-after", type=int)
    p.add_argument("--server-name", default="localhost")
    p.add_argument(
        "--quic-version",
        type=int,
        choices=[1, 2],
        default=1,
        help="version of the first Initial (2: RFC 9369); the one in use is printed to stderr",
    )
    p.add_argument(
        "--offer-versions",
        help="comma-separated versions (1, 2) for version_information's Available Versions, "
        "most preferred first: the server may move the connection to one (RFC 9368 §2.3)",
    )
    p.add_argument(
        "--quantum-readiness",
        action="store_true",
        help="pad the transport parameters by 1200 bytes so the ClientHello spans two Initials",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument(
        "--token-warm-up",
        action="store_true",
        help="first open one connection and wait for the server's NEW_TOKEN token (RFC 9000"
        " §8.1.3) and TLS session ticket, then close it; the transfer's first connection"
        " presents that token and resumes that session (the report counts `resumed`)",
    )
    p.add_argument(
        "--early-data",
        action="store_true",
        help="0-RTT (RFC 9001 §4.6): a warm-up connection makes one small perf request and"
        " waits for a session ticket per transfer connection; each of those then sends its"
        " requests as early data (the report counts `early_data` the server accepted)",
    )
    p.add_argument(
        "--early-data-replay",
        action="store_true",
        help="with --early-data, every transfer connection presents the same ticket, as an"
        " attacker replaying a client's first flight would: a server that keeps tickets"
        " single-use accepts its early data once",
    )
    args = p.parse_args(argv)
    if args.early_data and args.alpn != "perf":
        p.error("--early-data makes perf requests (--alpn perf)")
    if args.streams < 1 or args.conns < 1:
        p.error("--streams and --conns must be at least 1")
    if args.down < 0 or args.up < 0:
        p.error("--down and --up must not be negative")
    host, sep, port = args.connect.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--connect must be HOST:PORT")
    args.host, args.port = host.strip("[]"), int(port)
    return args


def configuration(args: argparse.Namespace) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[args.alpn],
        server_name=args.server_name,
        idle_timeout=IDLE_TIMEOUT_S,
        max_data=CONN_WINDOW,
        max_stream_data=STREAM_WINDOW,
        max_datagram_frame_size=65536 if args.alpn == "echo" else None,
    )
    if args.quic_version == 2:
        config.original_version = QuicProtocolVersion.VERSION_2
    if args.offer_versions:
        by_number = {"1": QuicProtocolVersion.VERSION_1, "2": QuicProtocolVersion.VERSION_2}
        config.supported_versions = [by_number[v] for v in args.offer_versions.split(",")]
        if args.quic_version == 1:
            config.original_version = QuicProtocolVersion.VERSION_1
    config.quantum_readiness_test = args.quantum_readiness
    if args.insecure:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_verify_locations(cafile=args.ca)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog:
        config.secrets_log_file = open(keylog, "a")  # noqa: SIM115 - lives for the process
    return config


async def run_connection(args: argparse.Namespace, conn_index: int, gets: list[tuple[int, str]]):
    """Runs one connection's share of the work; returns (handshake_s, results, key_updates)."""
    begun = time.monotonic()
    config = configuration(args)
    if conn_index == 0 and args.token:
        config.token = args.token  # used once: later connections go without
    if conn_index == 0 and args.session_ticket:
        config.session_ticket = args.session_ticket
    if args.early_tickets:
        # A ticket each: the server takes a session out when it is resumed (single use).
        config.session_ticket = args.early_tickets[0 if args.early_data_replay else conn_index]
    early = bool(args.early_tickets)
    async with connect(
        args.host,
        args.port,
        configuration=config,
        create_protocol=Client,
        # With early data, nothing is sent until the first requests are queued: the Initial
        # and the 0-RTT packets carrying them leave together.
        wait_connected=not early,
    ) as client:
        handshake = time.monotonic() - begun
        print(f"connection {conn_index}: QUIC version {client._quic._version:#010x}", file=sys.stderr)
        client.key_update_after = args.key_update_after
        total_streams = args.conns * args.streams
        if args.alpn == "perf":
            jobs = []
            for s in range(args.streams):
                index = conn_index * args.streams + s
                down = share(args.down, total_streams, index)
                up = share(args.up, total_streams, index)
                jobs.append(client.perf(down, up))
            results = await asyncio.gather(*jobs)
        elif args.alpn == "echo":
            results = [await client.datagrams(args.datagrams)]
        else:
            bodies = await asyncio.gather(*(client.get(path) for _, path in gets))
            results = list(zip((i for i, _ in gets), bodies))
        resumed = client._quic.tls.session_resumed
        if early:
            print(
                f"connection {conn_index}: early data accepted "
                f"{client._quic.tls.early_data_accepted}",
                file=sys.stderr,
            )
            resumed = (resumed, client._quic.tls.early_data_accepted)
        return handshake, results, client.key_updates, resumed


async def wait_until(done, failure: str, seconds: float = 5) -> None:
    """Polls `done` until it holds; raises `failure` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{failure} from the server within {seconds:.0f} s")
        await asyncio.sleep(0.005)


async def warm_up_token(args: argparse.Namespace):
    """One connection, kept until the server's NEW_TOKEN token and a session ticket arrive;
    returns both."""
    tokens: list[bytes] = []
    tickets: list = []
    async with connect(
        args.host,
        args.port,
        configuration=configuration(args),
        create_protocol=Client,
        token_handler=tokens.append,
        session_ticket_handler=tickets.append,
    ):
        await wait_until(lambda: tokens and tickets, "no NEW_TOKEN or session ticket")
    print(f"NEW_TOKEN token received: {len(tokens[-1])} bytes", file=sys.stderr)
    return tokens[-1], tickets[-1]


async def warm_up_tickets(args: argparse.Namespace) -> list:
    """One connection with one small perf request, kept until the server has handed out a
    session ticket allowing early data for each transfer connection; returns them."""
    tickets: list = []
    async with connect(
        args.host,
        args.port,
        configuration=configuration(args),
        create_protocol=Client,
        session_ticket_handler=tickets.append,
    ) as client:
        await client.perf(1, 0)
        needed = 1 if args.early_data_replay else args.conns
        await wait_until(lambda: len(tickets) >= needed, f"fewer than {needed} session tickets")
    if any(t.max_early_data_size is None for t in tickets):
        print("session tickets without early data: 0-RTT will not be tried", file=sys.stderr)
    return tickets


async def run(args: argparse.Namespace) -> dict:
    gets: list[str] = args.get
    if args.alpn == "hq-interop" and not gets:
        total_streams = args.conns * args.streams
        gets = [f"/{share(args.down, total_streams, i)}" for i in range(total_streams)]
    per_conn = [[(i, p) for i, p in enumerate(gets) if i % args.conns == c] for c in range(args.conns)]

    args.token = b""
    args.session_ticket = None
    if args.token_warm_up:
        args.token, args.session_ticket = await warm_up_token(args)
    args.early_tickets = await warm_up_tickets(args) if args.early_data else []
    start = time.monotonic()
    outcomes = await asyncio.gather(
        *(run_connection(args, c, per_conn[c]) for c in range(args.conns))
    )
    seconds = time.monotonic() - start

    report = {
        "handshake_ms": sum(o[0] for o in outcomes) * 1e3 / len(outcomes),
        "bytes_down": 0,
        "bytes_up": 0,
        "seconds": seconds,
        "throughput_mbps": 0.0,
        "streams": 0,
        "sha256": None,
        "key_updates": sum(o[2] for o in outcomes),
    }
    if args.early_data:
        report["resumed"] = sum(1 for o in outcomes if o[3][0])
        report["early_data"] = sum(1 for o in outcomes if o[3][1])
    else:
        report["resumed"] = sum(1 for o in outcomes if o[3])
    if args.alpn == "echo":
        report["datagrams_sent"] = args.datagrams * args.conns
        report["datagrams_echoed"] = 0
        for _, results, _, _ in outcomes:
            for echoed, down, up in results:
                report["datagrams_echoed"] += echoed
                report["bytes_down"] += down
                report["bytes_up"] += up
    elif args.alpn == "perf":
        for _, results, _, _ in outcomes:
            for down, up in results:
                report["bytes_down"] += down
                report["bytes_up"] += up
                report["streams"] += 1
    else:
        bodies: list[bytes] = [b""] * len(gets)
        for _, results, _, _ in outcomes:
            for index, body in results:
                bodies[index] = body
        digest = hashlib.sha256()
        for body in bodies:
            digest.update(body)
            report["bytes_down"] += len(body)
        report["streams"] = len(bodies)
        report["sha256"] = digest.hexdigest()
    if seconds > 0:
        report["throughput_mbps"] = (report["bytes_down"] + report["bytes_up"]) * 8 / seconds / 1e6
    return report


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(asyncio.wait_for(run(args), timeout=args.timeout))
    except asyncio.TimeoutError:
        print(f"aioquic_client: error: timed out after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - any failure must exit non-zero, with a reason
        # aioquic raises a bare ConnectionError on handshake failure (it logs the TLS alert).
        print(f"aioquic_client: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
