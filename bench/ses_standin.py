"""A local stand-in for Amazon SES, for benchmarks: answers like SES after a fixed delay.

    .venv/bin/python bench/ses_standin.py --port 0 --delay 0.05    # prints "READY <port>", serves until stdin closes

It answers, after ``--delay`` seconds (default 50 ms, about what SES takes):

* SES v2 ``SendEmail``  (POST /v2/email/outbound-emails) -> 200 ``{"MessageId": "..."}``
* SES v2 ``GetAccount`` (GET /v2/email/account; also GET /v1/email/account) -> ``SendQuota`` with
  ``Max24HourSend``, ``MaxSendRate`` (``--max-send-rate``, default 1000) and ``SentLast24Hours``
* SES v1 ``GetSendQuota`` (POST / with Action=GetSendQuota), the fallback ``SesTransport.max_rate`` uses
* GET /_standin/stats -> what it served: requests, bytes, peak concurrency, the time of every SendEmail

It checks nothing (signatures, addresses): it is there to see how fast the *sender* goes. It runs as a
process of its own so it does not share the sender's GIL. ``--impl asyncio`` (default) is an asyncio
server; ``--impl threading`` is a ThreadingHTTPServer with HTTP/1.1 keep-alive and one daemon thread per
connection, which cannot keep up: with 182 KB requests and 50 ms answers it serves ~330 req/s on 32
connections (ideal 640) and ~490 on 48 (ideal 960), where asyncio serves ~580 and ~860 (bench_send.py
part 4 measures both). ``StandIn`` below starts and stops it from Python.

It stops when its standard input closes (so it never outlives the benchmark that started it),
on SIGTERM, or on SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SEND_PATH = "/v2/email/outbound-emails"
ACCOUNT_PATHS = ("/v2/email/account", "/v1/email/account")
STATS_PATH = "/_standin/stats"


class Stats:
    """What the stand-in served; shared by all connections (threads or coroutines)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.requests = 0
        self.sends = 0
        self.body_bytes = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.connections = 0
        self.send_times: list[float] = []  # monotonic seconds since start, one per SendEmail answered
        self.ids = itertools.count(1)

    def begin(self, body_bytes: int) -> None:
        with self.lock:
            self.requests += 1
            self.body_bytes += body_bytes
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def end(self, send: bool) -> str:
        with self.lock:
            self.in_flight -= 1
            if send:
                self.sends += 1
                self.send_times.append(time.monotonic() - self.started)
            return f"standin-{next(self.ids):010d}-{os.getpid()}"

    def snapshot(self, reset: bool) -> dict[str, Any]:
        with self.lock:
            data = {
                "requests": self.requests,
                "sends": self.sends,
                "body_bytes": self.body_bytes,
                "peak_in_flight": self.peak_in_flight,
                "connections": self.connections,
                "send_times": self.send_times,
            }
            if reset:
                self.requests = self.sends = self.body_bytes = self.peak_in_flight = self.connections = 0
                self.send_times = []
                self.started = time.monotonic()
            return data


def route(
    method: str, target: str, body: bytes, max_send_rate: float, stats: Stats
) -> tuple[str, int, str, bytes, float]:
    """(kind, status, content type, body, delay factor) for one request. Kind is 'send', 'other' or 'stats'."""
    url = urlsplit(target)
    path = url.path
    if method == "POST" and path == SEND_PATH:
        return "send", 200, "application/json", b"", 1.0  # the body is filled in with the id afterwards
    if method == "GET" and path in ACCOUNT_PATHS:
        quota = {
            "Max24HourSend": 10_000_000.0,
            "MaxSendRate": max_send_rate,
            "SentLast24Hours": float(stats.sends),
        }
        answer = {
            "SendQuota": quota,
            "SendingEnabled": True,
            "ProductionAccessEnabled": True,
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": "HEALTHY",
        }
        return "other", 200, "application/json", json.dumps(answer).encode(), 1.0
    if (
        method == "POST"
        and path == "/"
        and parse_qs(body.decode("ascii", "replace")).get("Action") == ["GetSendQuota"]
    ):
        xml = (
            '<GetSendQuotaResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><GetSendQuotaResult>'
            f"<Max24HourSend>10000000.0</Max24HourSend><MaxSendRate>{max_send_rate}</MaxSendRate>"
            f"<SentLast24Hours>{float(stats.sends)}</SentLast24Hours></GetSendQuotaResult>"
            "<ResponseMetadata><RequestId>standin</RequestId></ResponseMetadata></GetSendQuotaResponse>"
        )
        return "other", 200, "text/xml", xml.encode(), 1.0
    if method == "GET" and path == STATS_PATH:
        reset = parse_qs(url.query).get("reset") == ["1"]
        return "stats", 200, "application/json", json.dumps(stats.snapshot(reset)).encode(), 0.0
    error = {"message": f"the stand-in does not know {method} {path}"}
    return "other", 404, "application/json", json.dumps(error).encode(), 0.0


# ---------------------------------------------------------------- threading implementation


def serve_threading(
    host: str, port: int, delay: float, max_send_rate: float, stats: Stats
) -> tuple[int, Any]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: botocore's urllib3 pool reuses connections

        def setup(self) -> None:
            super().setup()
            with stats.lock:
                stats.connections += 1

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            kind, status, content_type, payload, factor = route(
                self.command, self.path, body, max_send_rate, stats
            )
            if kind == "stats":
                self._answer(status, content_type, payload)
                return
            stats.begin(len(body))
            try:
                if factor:
                    time.sleep(delay * factor)
            finally:
                message_id = stats.end(kind == "send")
            if kind == "send":
                payload = json.dumps({"MessageId": message_id}).encode()
            self._answer(status, content_type, payload)

        def _answer(self, status: int, content_type: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-amzn-RequestId", "standin")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512  # the default backlog of 5 drops SYNs when 48 connections open at once

    server = Server((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server.server_address[1], server.shutdown


# ---------------------------------------------------------------- asyncio implementation


def serve_asyncio(host: str, port: int, delay: float, max_send_rate: float, stats: Stats) -> tuple[int, Any]:
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with stats.lock:
            stats.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                kind, status, content_type, payload, factor = route(
                    method, target, body, max_send_rate, stats
                )
                if kind != "stats":
                    stats.begin(len(body))
                    try:
                        if factor:
                            await asyncio.sleep(delay * factor)
                    finally:
                        message_id = stats.end(kind == "send")
                    if kind == "send":
                        payload = json.dumps({"MessageId": message_id}).encode()
                reason = {200: "OK", 404: "Not Found"}.get(status, "")
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
                    f"x-amzn-RequestId: standin\r\n\r\n".encode("latin-1")
                    + payload
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(connection, host, port, backlog=512, limit=1 << 20)
        ready["port"] = server.sockets[0].getsockname()[1]
        ready["server"] = server
        started.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait()

    def stop() -> None:
        loop.call_soon_threadsafe(ready["server"].close)

    return ready["port"], stop


# ---------------------------------------------------------------- running it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed as READY <port>)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before each answer (default 0.05)")
    parser.add_argument("--max-send-rate", type=float, default=1000.0, help="MaxSendRate GetAccount reports")
    parser.add_argument("--impl", choices=("asyncio", "threading"), default="asyncio")
    args = parser.parse_args(argv)
    stats = Stats()
    serve = serve_threading if args.impl == "threading" else serve_asyncio
    port, stop = serve(args.host, args.port, args.delay, args.max_send_rate, stats)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {port}", flush=True)
    while not done.wait(0.5):
        pass
    stop()
    return 0


class StandIn:
    """Start the stand-in as a child process; ``with StandIn() as s: s.url``."""

    def __init__(self, delay: float = 0.05, max_send_rate: float = 1000.0, impl: str = "asyncio") -> None:
        self.delay, self.max_send_rate, self.impl = delay, max_send_rate, impl
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StandIn:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--port",
            "0",
            "--delay",
            str(self.delay),
            "--max-send-rate",
            str(self.max_send_rate),
            "--impl",
            self.impl,
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.__exit__()
            raise RuntimeError(f"the SES stand-in did not start (said {line!r})")
        self.port = int(line[1])
        return self

    def stats(self, reset: bool = False) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(
            f"{self.url}{STATS_PATH}{'?reset=1' if reset else ''}", timeout=10
        ) as answer:
            return json.load(answer)

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.stdin:
                process.stdin.close()  # the stand-in stops when its stdin closes
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        finally:
            if process.stdout:
                process.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
