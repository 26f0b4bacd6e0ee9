#!/usr/bin/env python3
"""aioquic HTTP/3 client and server for quench interop tests (aioquic 1.x, its own H3 layer
`aioquic.h3.connection.H3Connection` with QPACK from pylsqpack: nothing shared with quench).

    aioquic_h3.py client --connect HOST:PORT [--get PATH]... [--post PATH=BYTES]...
                         [--ca PEM | --insecure] [--server-name NAME] [--any-status]
    aioquic_h3.py server --listen HOST:PORT --cert PEM --key PEM --root DIR

client  sends every request at once, each on its own stream, on one connection; checks that
        each response's body length matches its content-length, then prints one JSON line like the other clients (`bytes_down`, `streams`,
        `sha256` of the bodies concatenated in --get order, ...) plus `responses`, a list
        of {"path", "status", "content_length", "bytes"} in --get order. Exits 1 on any
        failure, a non-200 status included unless --any-status. Each --post sends BYTES
        random bytes as a POST body (on its own stream, with the GETs); `uploads` lists
        {"path", "status", "bytes", "sha256", "response"} for them in order, `response`
        being the response body as text, and `bytes_up` their total.
server  answers GET and HEAD with the file at --root/PATH (status 200, content-length, the
        body as DATA frames of up to 1 MiB; the query is ignored), a missing file or a path
        outside --root with 404, any other method with 405. Prints `aioquic_h3: listening on
        HOST:PORT` on stdout when ready, logs `aioquic_h3: request {"method", "path",
        "status", "bytes"}` on stderr per request, and exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset

STREAM_WINDOW = 16 << 20
CONN_WINDOW = 24 << 20
IDLE_TIMEOUT_S = 15.0
DATA_FRAME = 1 << 20


def log(message: str) -> None:
    print(f"aioquic_h3: {message}", file=sys.stderr, flush=True)


def split_addr(p: argparse.ArgumentParser, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        p.error(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class PeerError(Exception):
    """The server or the connection misbehaved."""


# ---- client ------------------------------------------------------------------------------------


class Response:
    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()


class Client(QuicConnectionProtocol):
    """GETs only: aioquic 1.7's H3Connection checks every response's DATA against its
    content-length, so it cannot take a HEAD response that has one (RFC 9114 §4.1.2 allows it).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._responses: dict[int, Response] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            self._fail(event.stream_id, f"stream reset by peer: error {event.error_code:#x}")
        elif isinstance(event, ConnectionTerminated):
            reason = f"connection closed: error {event.error_code:#x} {event.reason_phrase!r}"
            for stream_id in list(self._responses):
                self._fail(stream_id, reason)
        for h3_event in self._http.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        response = self._responses.get(getattr(event, "stream_id", -1))
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            # A second HEADERS would be trailers: keep the response's own fields.
            if not response.headers:
                response.headers = dict(event.headers)
        elif isinstance(event, DataReceived):
            response.body += event.data
        if getattr(event, "stream_ended", False) and not response.done.done():
            response.done.set_result(None)

    def _fail(self, stream_id: int, reason: str) -> None:
        response = self._responses.get(stream_id)
        if response is not None and not response.done.done():
            response.done.set_exception(PeerError(reason))

    async def request(
        self, method: str, authority: str, path: str, body: bytes | None = None
    ) -> Response:
        stream_id = self._quic.get_next_available_stream_id()
        response = Response(self._loop.create_future())
        self._responses[stream_id] = response
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"aioquic_h3.py"),
        ]
        if body is not None:
            fields.append((b"content-length", str(len(body)).encode()))
        self._http.send_headers(stream_id, fields, end_stream=body is None)
        if body is not None:
            # aioquic queues it all and sends as flow control allows.
            self._http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        await response.done
        return response


async def run_client(args: argparse.Namespace) -> dict:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=args.server_name,
        idle_timeout=IDLE_TIMEOUT_S,
        max_data=CONN_WINDOW,
        max_stream_data=STREAM_WINDOW,
    )
    if args.insecure:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_verify_locations(cafile=args.ca)
    start = time.monotonic()
    async with connect(args.host, args.port, configuration=config, create_protocol=Client) as c:
        handshake = time.monotonic() - start
        authority = f"{args.server_name}:{args.port}"
        posts = [(path, os.urandom(size)) for path, size in args.post]
        everything = await asyncio.gather(
            *(c.request("GET", authority, path) for path in args.get),
            *(c.request("POST", authority, path, body) for path, body in posts),
        )
        responses, post_responses = everything[: len(args.get)], everything[len(args.get) :]
    seconds = time.monotonic() - start

    digest = hashlib.sha256()
    report_responses = []
    failures = []
    for path, r in zip(args.get, responses):
        status = int(r.headers.get(b":status", b"0"))
        length = r.headers.get(b"content-length")
        length = int(length) if length is not None else None
        report_responses.append(
            {"path": path, "status": status, "content_length": length, "bytes": len(r.body)}
        )
        digest.update(r.body)
        if status != 200 and not args.any_status:
            failures.append(f"GET {path}: status {status}")
        if length is not None and len(r.body) != length:
            failures.append(f"GET {path}: {len(r.body)} body bytes, content-length {length}")
    uploads = []
    for (path, body), r in zip(posts, post_responses):
        status = int(r.headers.get(b":status", b"0"))
        uploads.append(
            {
                "path": path,
                "status": status,
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "response": r.body.decode("utf-8", "replace"),
            }
        )
        if status != 200 and not args.any_status:
            failures.append(f"POST {path}: status {status}")
    if failures:
        raise PeerError("; ".join(failures))
    bytes_down = sum(len(r.body) for r in responses)
    return {
        "handshake_ms": handshake * 1e3,
        "bytes_down": bytes_down,
        "bytes_up": sum(len(body) for _, body in posts),
        "uploads": uploads,
        "seconds": seconds,
        "throughput_mbps": bytes_down * 8 / seconds / 1e6 if seconds > 0 else 0.0,
        "streams": len(responses),
        "sha256": digest.hexdigest(),
        "key_updates": 0,
        "responses": report_responses,
    }


# ---- server ------------------------------------------------------------------------------------


class ServerConnection(QuicConnectionProtocol):
    def __init__(self, *args, root: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._root = os.path.realpath(root)
        self._http: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if self._http is None:
            self._http = H3Connection(self._quic)
        for h3_event in self._http.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._answer(h3_event.stream_id, dict(h3_event.headers))

    def _answer(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        assert self._http is not None
        method = headers.get(b":method", b"").decode("latin-1")
        path = headers.get(b":path", b"").decode("latin-1").split("?", 1)[0]
        target = os.path.realpath(os.path.join(self._root, path.lstrip("/")))
        body = b""
        if method not in ("GET", "HEAD"):
            status, fields = 405, [(b"allow", b"GET, HEAD")]
        elif not target.startswith(self._root + os.sep) or not os.path.isfile(target):
            status, fields = 404, []
        else:
            with open(target, "rb") as f:
                body = f.read()
            status, fields = 200, []
        self._http.send_headers(
            stream_id,
            [(b":status", str(status).encode()), (b"content-length", str(len(body)).encode())]
            + fields,
            end_stream=method == "HEAD" or not body,
        )
        if method != "HEAD" and body:
            for off in range(0, len(body), DATA_FRAME):
                chunk = body[off : off + DATA_FRAME]
                self._http.send_data(stream_id, chunk, end_stream=off + len(chunk) == len(body))
        sent = 0 if method == "HEAD" else len(body)
        log(
            "request "
            + json.dumps({"method": method, "path": path, "status": status, "bytes": sent})
        )
        self.transmit()


async def run_server(args: argparse.Namespace) -> None:
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        idle_timeout=IDLE_TIMEOUT_S,
        max_data=CONN_WINDOW,
        max_stream_data=STREAM_WINDOW,
    )
    config.load_cert_chain(args.cert, args.key)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await serve(
        args.host,
        args.port,
        configuration=config,
        create_protocol=lambda *a, **kw: ServerConnection(*a, root=args.root, **kw),
    )
    host, port = server._transport.get_extra_info("sockname")[:2]
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"aioquic_h3: listening on {addr}", flush=True)
    await stop.wait()
    server.close()
    await asyncio.sleep(0)


def post_arg(value: str) -> tuple[str, int]:
    path, sep, size = value.rpartition("=")
    if not sep or not path.startswith("/") or not size.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not PATH=BYTES")
    return path, int(size)


# ---- main --------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = p.add_subparsers(dest="role", required=True)
    c = roles.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--get", action="append", default=[])
    c.add_argument(
        "--post", action="append", default=[], type=post_arg, metavar="PATH=BYTES"
    )
    verify = c.add_mutually_exclusive_group(required=True)
    verify.add_argument("--ca")
    verify.add_argument("--insecure", action="store_true")
    c.add_argument("--server-name", default="localhost")
    c.add_argument("--any-status", action="store_true", help="do not fail on non-200")
    c.add_argument("--timeout", type=float, default=60.0)
    s = roles.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--root", required=True)
    args = p.parse_args(argv)

    if args.role == "client":
        if not args.get and not args.post:
            c.error("nothing to request: give --get or --post")
        args.host, args.port = split_addr(c, args.connect)
        try:
            report = asyncio.run(asyncio.wait_for(run_client(args), timeout=args.timeout))
        except asyncio.TimeoutError:
            log(f"error: timed out after {args.timeout:.0f} s")
            return 1
        except Exception as e:  # noqa: BLE001 - any failure must exit non-zero, with a reason
            log(f"error: {type(e).__name__}: {e}")
            return 1
        print(json.dumps(report), flush=True)
        return 0

    args.host, args.port = split_addr(s, args.listen)
    if not os.path.isdir(args.root):
        s.error(f"--root {args.root!r} is not a directory")
    try:
        asyncio.run(run_server(args))
    except Exception as e:  # noqa: BLE001
        log(f"error: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
