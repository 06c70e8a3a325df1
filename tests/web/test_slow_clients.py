"""Slow clients against the service under a real uvicorn: raw sockets that connect and say nothing,
trickle their headers or their body, or sit on a kept-alive connection, are disconnected within the
[serve] timeouts while a normal client is served; past ``max_connections`` a request gets 503 at once."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from pipeline.errors import ConfigError
from tests.conftest import Newsletter
from tests.web.test_web import configure, running_site, wait_until

TIMEOUT = 1.0
# How much later than its deadline a drop may come on a loaded 2-core machine; far below "never".
SLACK = 5.0


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT + SLACK)


def seconds_until_closed(sock: socket.socket) -> tuple[float, bytes]:
    """Read until the server closes the connection: how long that took, and what it sent."""
    start, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        pytest.fail(f"still open after {time.monotonic() - start:.1f} s (received {received[:60]!r})")
    except ConnectionResetError:
        pass
    return time.monotonic() - start, received


@contextmanager
def trickling(sock: socket.socket, data: bytes) -> Iterator[threading.Event]:
    """Send ``data`` a byte every 50 ms (a slow client, not a wait) until done or disconnected; the
    event is set if it was still sending when the server hung up."""
    cut_off, finished = threading.Event(), threading.Event()

    def run() -> None:
        try:
            for byte in data:
                sock.sendall(bytes([byte]))
                if finished.wait(0.05):
                    return
        except OSError:
            cut_off.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield cut_off
    finally:
        finished.set()
        thread.join(5)


def test_slow_clients_are_disconnected_while_others_are_served(
    newsletter: Newsletter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    serve = {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT, "keep_alive_timeout": TIMEOUT}
    with running_site(newsletter, **serve) as site, ExitStack() as stack:
        idle = stack.enter_context(connect(site.url))
        slow_head = stack.enter_context(connect(site.url))
        slow_body = stack.enter_context(connect(site.url))
        kept_alive = stack.enter_context(connect(site.url))
        head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"x" * 1000 + b"\r\n\r\n"
        head_cut = stack.enter_context(trickling(slow_head, head))
        form = b"email=slow%40example.org&name=" + b"s" * 1000
        slow_body.sendall(
            b"POST /subscribe HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form)
        )
        body_cut = stack.enter_context(trickling(slow_body, form))
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")

        # Meanwhile everyone else is served, and promptly.
        for _ in range(5):
            assert site.client.get(f"{site.url}/").status_code == 200

        for name, sock in (("idle", idle), ("slow headers", slow_head), ("slow body", slow_body)):
            waited, received = seconds_until_closed(sock)
            assert received == b"", f"{name}: {received[:80]!r}"
            assert waited < TIMEOUT + SLACK, name
        waited, received = seconds_until_closed(kept_alive)
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"ok\n")
        assert waited < TIMEOUT + SLACK
        wait_until(head_cut.is_set, "the header trickler to notice it was cut off")
        wait_until(body_cut.is_set, "the body trickler to notice it was cut off")
        assert site.service.signups_handled == 0  # the half-sent sign-up did nothing
        assert site.status("slow@example.org") == "absent"
        assert site.client.get(f"{site.url}/healthz").text == "ok\n"
    # One line each, no traceback: the sign-up cut off mid-body is not an error of ours.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    dropped = [r.getMessage() for r in caplog.records if r.name == "pipeline.web.timeouts"]
    assert len(dropped) == 3 and sum("request body not complete" in line for line in dropped) == 1, dropped


def test_past_max_connections_a_request_is_answered_503_at_once(newsletter: Newsletter) -> None:
    with running_site(newsletter, max_connections=3, header_timeout=60) as site, ExitStack() as stack:
        holders = [stack.enter_context(connect(site.url)) for _ in range(3)]
        with httpx.Client(timeout=10) as client:
            # Each request opens a fresh connection: the three held ones fill the limit.
            answer = client.get(f"{site.url}/", headers={"Connection": "close"})
            assert answer.status_code == 503
        for held in holders:
            held.close()

        def served() -> bool:
            return httpx.get(f"{site.url}/healthz", headers={"Connection": "close"}).status_code == 200

        wait_until(served, "a request to be served once the held connections are gone")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("header_timeout", 0),
        ("body_timeout", -1),
        ("keep_alive_timeout", 301),
        ("max_connections", 0),
        ("max_connections", 10_001),
    ],
)
def test_out_of_range_serve_limits_are_refused_naming_the_key(
    newsletter: Newsletter, setting: str, value: int
) -> None:
    configure(newsletter, "http://127.0.0.1:8025", {setting: value})
    with pytest.raises(ConfigError, match=rf"^\S+: serve\.{setting} must be more than 0 and at most"):
        newsletter.config()
