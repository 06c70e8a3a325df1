"""HTTP link checking against a real local server: the library, ``check``, ``links``, ``send`` and the archive.

The server runs on 127.0.0.1 in a thread and serves one path per behaviour
(ok, moved, broken, slow, HEAD refused, loop, huge body...). It records every
request and how many were in flight at once per Host, and tests can change
what a path answers (``server.overrides``) to make an archived link break.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from pipeline.check import links as linkcheck
from pipeline.check.links import LinkResult, check_urls
from pipeline.cli import main
from pipeline.config import LinkSettings
from pipeline.db import DB_NAME, open_db
from tests.conftest import Newsletter
from tests.support.cli import run_cli

NEWSLETTER = Path(sys.executable).with_name("newsletter")
Run = Callable[..., subprocess.CompletedProcess[str]]
HUGE = 10 * 1024**3  # what /huge claims to be; it streams until the client hangs up


class LinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.release = threading.Event()
        """Set at teardown: every waiting handler returns at once."""
        self.requests: list[tuple[str, str, str]] = []
        """(method, path, host) of every request, in arrival order."""
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()
        self.events: list[tuple[float, str, str, str]] = []
        """(monotonic time, 'start'|'end', host, path)."""
        self.overrides: dict[str, tuple[int, str | None]] = {}
        """path -> (status, Location): what a path answers from now on."""
        self.huge_sent = 0

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.requests if path is None or p == path)

    def enter(self, method: str, path: str, host: str) -> None:
        with self.lock:
            self.requests.append((method, path, host))
            self.active[host] += 1
            self.max_active[host] = max(self.max_active[host], self.active[host])
            self.events.append((time.monotonic(), "start", host, path))

    def leave(self, host: str, path: str) -> None:
        with self.lock:
            self.active[host] -= 1
            self.events.append((time.monotonic(), "end", host, path))


class _Handler(BaseHTTPRequestHandler):
    server: LinkServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        self._host, self._path, self._left = host, path, False
        self.server.enter(method, path, host)
        try:
            self._route(method, path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._leave()

    def _leave(self) -> None:
        # Counted as finished before the response goes out: a client that got its
        # answer and starts the next request never overlaps with this one.
        if not self._left:
            self._left = True
            self.server.leave(self._host, self._path)

    def _send(self, method: str, status: int, location: str | None = None, body: bytes = b"fine\n") -> None:
        self._leave()
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        if status == 405:
            self.send_header("Allow", "GET")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        server = self.server
        if path in server.overrides:
            status, location = server.overrides[path]
            return self._send(method, status, location)
        if path == "/ok" or path.startswith("/page-") or re.fullmatch(r"/archive/(?:older|1|2)\.md", path):
            return self._send(method, 200)
        if path == "/moved":
            return self._send(method, 301, "/ok")
        if path == "/moved308":
            return self._send(method, 308, "/ok")
        if path == "/chain":  # a temporary hop, then a permanent one: the link itself has not moved
            return self._send(method, 302, "/moved")
        if path == "/head404":
            return self._send(method, 404 if method == "HEAD" else 200)
        if path == "/temp":
            return self._send(method, 302, "/ok")
        if path == "/missing":
            return self._send(method, 404)
        if path == "/error":
            return self._send(method, 500)
        if path == "/slow":
            server.release.wait(5)
            return self._send(method, 200)
        if path == "/nohead":
            return self._send(method, 405 if method == "HEAD" else 200)
        if path == "/loop":
            return self._send(method, 302, "/loop")
        if path == "/delay":
            server.release.wait(float(query.get("s", ["0.2"])[0]))
            return self._send(method, 200)
        if path == "/badlocation":
            return self._send(method, 302, "http://127.0.0.1:99999/")
        if path == "/malformedlocation":
            return self._send(method, 302, "http://[::1/broken")
        if path == "/huge":
            if method == "HEAD":
                return self._send(method, 405)
            self._leave()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(HUGE))
            self.end_headers()
            chunk = b"x" * 65536
            deadline = time.monotonic() + 10
            while server.huge_sent < HUGE and time.monotonic() < deadline and not server.release.is_set():
                self.wfile.write(chunk)
                server.huge_sent += len(chunk)
            return None
        if path == "/trickle":
            # Every byte arrives well within the timeout, the whole answer takes 1.5 s.
            self._leave()
            response = b"HTTP/1.0 200 OK\r\nX-Padding: " + b"p" * 22 + b"\r\nContent-Length: 0\r\n\r\n"
            for byte in response:
                if server.release.wait(1.5 / len(response)):
                    return None
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(method, 404)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> LinkServer:
    srv = LinkServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)

    request.addfinalizer(stop)
    return srv


def settings(**values: object) -> LinkSettings:
    base: dict[str, object] = {
        "enabled": True,
        # Generous: a loaded machine answers slowly. Tests of the timeout itself pass their own.
        "timeout": 5.0,
        "cache_hours": 24.0,
        "per_host": 2,
        "concurrency": 16,
    }
    return LinkSettings(**{**base, **values})  # type: ignore[arg-type]


# --- the library ---------------------------------------------------------------------------------


def test_each_kind_of_answer_gives_the_right_result(server: LinkServer) -> None:
    paths = [
        "/ok",
        "/moved",
        "/moved308",
        "/chain",
        "/temp",
        "/missing",
        "/error",
        "/slow",
        "/nohead",
        "/head404",
        "/malformedlocation",
        "/loop",
        "/huge",
    ]
    started = time.monotonic()
    report = check_urls([server.url(p) for p in paths], settings(timeout=2.0))
    elapsed = time.monotonic() - started
    assert report.skipped == ""
    r = {path: report.results[server.url(path)] for path in paths}

    assert r["/ok"] == LinkResult(server.url("/ok"), True, 200)
    assert r["/ok"].describe() == "ok"

    assert r["/moved"].ok and r["/moved"].permanent_redirect
    assert r["/moved"].final_url == server.url("/ok")
    assert r["/moved"].describe() == f"moved permanently to {server.url('/ok')}: update the link"

    assert r["/moved308"].ok and r["/moved308"].permanent_redirect
    assert r["/chain"].ok and not r["/chain"].permanent_redirect
    assert r["/head404"] == LinkResult(server.url("/head404"), True, 200)
    assert (
        not r["/malformedlocation"].ok and "Invalid URL in location header" in r["/malformedlocation"].error
    )

    assert r["/temp"].ok and not r["/temp"].permanent_redirect
    assert r["/temp"].status == 200 and r["/temp"].describe() == "ok"

    assert not r["/missing"].ok and r["/missing"].status == 404
    assert r["/missing"].describe() == "HTTP 404 Not Found"
    assert not r["/error"].ok and r["/error"].status == 500
    assert r["/error"].describe() == "HTTP 500 Internal Server Error"

    assert not r["/slow"].ok and r["/slow"].describe() == "timed out"

    assert r["/nohead"] == LinkResult(server.url("/nohead"), True, 200)
    assert ("HEAD", "/nohead", "127.0.0.1") in server.requests and (
        "GET",
        "/nohead",
        "127.0.0.1",
    ) in server.requests

    assert not r["/loop"].ok and "redirects" in r["/loop"].describe()
    assert server.hits("/loop") <= 12

    assert r["/huge"] == LinkResult(server.url("/huge"), True, 200)
    assert server.huge_sent < HUGE // 100, "the checker read the huge body instead of hanging up"
    # Everything ran concurrently; the slow link is cut by the 2 s timeout, not released at 5 s.
    assert elapsed < 4.5, elapsed


def test_per_host_concurrency_is_bounded(server: LinkServer) -> None:
    urls = [server.url(f"/delay?s=0.15&n={n}") for n in range(8)]
    report = check_urls(urls, settings(per_host=2, concurrency=16))
    assert all(result.ok for result in report.results.values()) and len(report.results) == 8
    assert server.hits("/delay") == 8
    assert server.max_active["127.0.0.1"] == 2, server.max_active


def test_overall_concurrency_is_bounded(server: LinkServer) -> None:
    # Two host names for the same server: 127.0.0.1 and 127.1 (inet_aton shorthand).
    urls = [server.url(f"/delay?s=0.15&n={n}", host) for n in range(4) for host in ("127.0.0.1", "127.1")]
    check_urls(urls, settings(per_host=4, concurrency=3))
    running = peak = 0
    for _, kind, _, _ in sorted(server.events):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak <= 3


def test_results_are_cached_for_cache_hours(
    server: LinkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_db(tmp_path / "state")
    try:
        good = [server.url("/ok"), server.url("/moved")]
        urls = [*good, server.url("/missing")]
        first = check_urls(urls, settings(cache_hours=1.0), db)
        hits = server.hits()
        assert hits >= 3
        second = check_urls(urls, settings(cache_hours=1.0), db)
        # Good results are cached; a failure is asked again (a one-off 503 must not block a send for a day).
        assert server.hits() - hits == 2, "only the broken link should go to the server again"
        assert second.results == first.results
        stored = {row["url"]: row for row in db.execute("SELECT * FROM link_cache")}
        assert set(stored) == set(good)

        # Two hours later the entries have expired: the server is asked again for all of them.
        hits = server.hits()
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        monkeypatch.setattr(linkcheck, "_now", lambda: later)
        third = check_urls(urls, settings(cache_hours=1.0), db)
        assert server.hits() - hits > 3
        assert third.results == first.results
    finally:
        db.close()


def test_a_tiny_cache_hours_expires(
    server: LinkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_db(tmp_path / "state")
    try:
        clock = [dt.datetime(2026, 5, 1, 12, 0, 0, 100000, tzinfo=dt.UTC)]
        monkeypatch.setattr(linkcheck, "_now", lambda: clock[0])
        check_urls([server.url("/ok")], settings(cache_hours=0.0001), db)  # 0.36 s
        clock[0] += dt.timedelta(seconds=5)
        check_urls([server.url("/ok")], settings(cache_hours=0.0001), db)
        assert server.hits("/ok") == 2
    finally:
        db.close()


def test_cache_age_is_not_rounded_to_seconds(
    server: LinkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_db(tmp_path / "state")
    try:
        clock = [dt.datetime(2026, 5, 1, 12, 0, 0, 100000, tzinfo=dt.UTC)]
        monkeypatch.setattr(linkcheck, "_now", lambda: clock[0])
        check_urls([server.url("/ok")], settings(cache_hours=0.0001), db)  # 0.36 s
        clock[0] += dt.timedelta(seconds=0.8)  # older than 0.36 s, same whole second
        check_urls([server.url("/ok")], settings(cache_hours=0.0001), db)
        assert server.hits("/ok") == 2
    finally:
        db.close()


def test_offline_when_no_host_resolves(tmp_path: Path) -> None:
    db = open_db(tmp_path / "state")
    try:
        started = time.monotonic()
        report = check_urls(
            ["https://nonexistent.invalid/a", "https://other.invalid/b", "mailto:x@example.org"],
            settings(),
            db,
        )
        assert time.monotonic() - started < 2
        assert report.results == {}
        assert "no host resolved" in report.skipped
        assert db.execute("SELECT COUNT(*) FROM link_cache").fetchone()[0] == 0
    finally:
        db.close()


def test_an_unknown_host_next_to_a_live_one_is_a_dns_error(server: LinkServer) -> None:
    report = check_urls([server.url("/ok"), "https://nonexistent.invalid/a"], settings())
    assert report.skipped == ""
    assert report.results[server.url("/ok")].ok
    dead = report.results["https://nonexistent.invalid/a"]
    assert not dead.ok and dead.error == "host not found (DNS)"


def test_only_http_links_are_checked(server: LinkServer) -> None:
    report = check_urls(["mailto:a@example.org", "ftp://example.org/x", server.url("/ok")], settings())
    assert list(report.results) == [server.url("/ok")]


def test_eight_dead_hosts_sorting_first_do_not_make_the_check_offline(server: LinkServer) -> None:
    # "http://0dead..." sorts before "http://127.0.0.1...": the 8 hosts tried are all dead ones.
    dead = [f"http://0dead{n}.invalid/" for n in range(8)]
    report = check_urls([*dead, server.url("/ok")], settings())
    assert report.skipped == ""
    assert report.results[server.url("/ok")].ok
    # A resolver that answers slowly on a loaded machine can make a lookup read "timed out" instead.
    errors = {url: report.results[url].error for url in dead}
    assert set(errors.values()) <= {"host not found (DNS)", "timed out"}, errors


def test_a_hanging_resolver_does_not_outlast_the_dns_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def hanging_getaddrinfo(*args: object, **kwargs: object) -> object:
        time.sleep(1.5)  # a resolver whose name server does not answer
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    started = time.monotonic()
    assert linkcheck._any_host_resolves(["https://example.org/"], timeout=0.2) is False
    assert time.monotonic() - started < 1.0


def test_timeout_bounds_a_response_that_trickles_in(server: LinkServer) -> None:
    started = time.monotonic()
    report = check_urls([server.url("/trickle")], settings(timeout=0.3))
    elapsed = time.monotonic() - started
    assert report.results[server.url("/trickle")].describe() == "timed out"
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize("path", ["/badlocation", None])
def test_an_invalid_url_is_a_broken_link_not_a_crash(server: LinkServer, path: str | None) -> None:
    url = server.url(path) if path else "http://127.0.0.1:99999/typo-in-port"
    report = check_urls([url, server.url("/ok")], settings())
    assert not report.results[url].ok
    assert report.results[server.url("/ok")].ok


def test_a_busy_host_does_not_hold_up_other_hosts(server: LinkServer) -> None:
    # concurrency 2, per_host 1: the 127.0.0.1 links (sorted first) hold both slots,
    # one of them only waiting for its host; the 127.1 link should still start at once.
    urls = [server.url(f"/delay?s=0.25&n={n}") for n in range(3)] + [server.url("/delay?s=0.01", "127.1")]
    check_urls(urls, settings(per_host=1, concurrency=2))
    events = sorted(server.events)
    first_end = next(t for t, kind, host, _ in events if kind == "end" and host == "127.0.0.1")
    other_start = next(t for t, kind, host, _ in events if kind == "start" and host == "127.1")
    assert other_start < first_end


def test_a_transient_failure_is_not_cached(server: LinkServer, tmp_path: Path) -> None:
    db = open_db(tmp_path / "state")
    try:
        server.overrides["/page-flaky"] = (503, None)
        assert (
            not check_urls([server.url("/page-flaky")], settings(), db).results[server.url("/page-flaky")].ok
        )
        del server.overrides["/page-flaky"]  # the server is back a minute later
        assert check_urls([server.url("/page-flaky")], settings(), db).results[server.url("/page-flaky")].ok
    finally:
        db.close()


# --- the command line ----------------------------------------------------------------------------


def run_script(newsletter: Newsletter, *args: str) -> subprocess.CompletedProcess[str]:
    """The real console script, as the editor runs it."""
    return run_cli(newsletter.root, *args, timeout=60)


@pytest.fixture
def cli(newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """The same commands in-process (a subprocess costs a second of imports): from the newsletter's folder."""
    monkeypatch.chdir(newsletter.root)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    monkeypatch.setenv("NEWSLETTER_SECRET", "s" * 48)
    runner = CliRunner()

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        return subprocess.CompletedProcess(
            ["newsletter", *args], result.exit_code, result.stdout, result.stderr
        )

    yield invoke


def enable_links(newsletter: Newsletter, **values: object) -> None:
    """Replace the sample config's [links] section (enabled = false) by one that checks links."""
    lines = newsletter.config_path.read_text(encoding="utf-8").splitlines()
    kept: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("["):
            inside = line.strip() == "[links]"
        if not inside:
            kept.append(line)
    # timeout 2 s: time for a loaded machine, and still short of /slow's 5 s release.
    wanted = {"enabled": "true", "timeout": "2", "cache_hours": "24", "per_host": "2", "concurrency": "16"}
    wanted.update({key: str(value) for key, value in values.items()})
    kept += ["", "[links]", *(f"{key} = {value}" for key, value in wanted.items())]
    newsletter.config_path.write_text("\n".join(kept) + "\n", encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def issue_with_links(server: LinkServer, names: list[str]) -> str:
    return (
        "Links of every kind.\n\n"
        + "\n\n".join(f"- [{name}]({server.url('/' + name)})" for name in names)
        + "\n"
    )


ALL = ["ok", "moved", "temp", "missing", "error", "slow", "nohead", "loop", "huge"]
FINE = ["ok", "moved", "temp", "nohead", "huge"]


@pytest.mark.slow  # the console script in a subprocess
def test_check_fails_on_broken_links_and_passes_when_only_fine_ones_remain(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    path = newsletter.write_issue(3, issue_with_links(server, ALL))
    result = run_script(newsletter, "check", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr

    def where(name: str) -> str:
        return f"issues/3.md:{line_of(path, f'[{name}](')}"

    for name, reason in [
        ("missing", "HTTP 404 Not Found"),
        ("error", "HTTP 500 Internal Server Error"),
        ("slow", "timed out"),
        ("loop", "more than 10 redirects"),
    ]:
        assert f"{where(name)}: error: link '{name}': {reason}: {server.url('/' + name)}" in result.stderr, (
            result.stderr
        )
    moved = f"{where('moved')}: warning: link 'moved': {server.url('/moved')} moved permanently to {server.url('/ok')}: update the link"
    assert moved in result.stdout
    assert moved not in result.stderr
    assert "moved permanently" not in result.stdout.replace(moved, "")  # not the 302
    for name in FINE:
        assert f"link '{name}': HTTP" not in result.stderr
        assert f"error: link '{name}'" not in result.stderr
    assert "9 link(s) checked over HTTP, 4 broken" in result.stdout
    assert "issues/3.md: 9 links, 4 error(s)" in result.stderr
    assert "fix the errors before sending" in result.stderr

    newsletter.write_issue(3, issue_with_links(server, FINE))
    result = cli("check", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "moved permanently to" in result.stdout
    assert "5 link(s) checked over HTTP, 0 broken" in result.stdout
    assert "ready to send" in result.stdout


def test_check_offline_does_not_touch_the_network(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    newsletter.write_issue(3, issue_with_links(server, ALL))
    result = cli("check", "3", "--offline")
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.hits() == 0
    assert "links not checked over HTTP (--offline)" in result.stdout
    assert "ready to send" in result.stdout


def test_check_with_links_disabled_does_not_touch_the_network(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter, enabled="false")
    newsletter.write_issue(3, issue_with_links(server, ["missing"]))
    result = cli("check", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.hits() == 0
    assert "links.enabled = false" in result.stdout


def test_links_prints_the_problems_and_a_summary(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    path = newsletter.write_issue(4, issue_with_links(server, ["ok", "moved", "missing", "error", "temp"]))
    result = cli("links", "4")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    missing = f"issues/4.md:{line_of(path, '[missing](')}: error: link 'missing': HTTP 404 Not Found: {server.url('/missing')}"
    assert any(line.endswith(missing) for line in lines), result.stdout
    assert f"error: link 'error': HTTP 500 Internal Server Error: {server.url('/error')}" in result.stdout
    assert (
        f"warning: link 'moved': {server.url('/moved')} moved permanently to {server.url('/ok')}"
        in result.stdout
    )
    assert lines[-1] == "5 link(s) checked: 2 broken, 1 moved permanently"
    assert "error: 2 broken link(s)" in result.stderr
    assert "Traceback" not in result.stderr

    newsletter.write_issue(4, issue_with_links(server, ["ok", "moved", "temp"]))
    result = cli("links", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "3 link(s) checked: 0 broken, 1 moved permanently"


def test_unreachable_network_skips_the_link_check_with_a_warning(newsletter: Newsletter, cli: Run) -> None:
    enable_links(newsletter)
    newsletter.write_issue(
        3, "Read [this](https://nonexistent.invalid/post) and [that](https://gone.invalid/x).\n"
    )
    started = time.monotonic()
    result = cli("check", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: no host resolved: the network looks unreachable, links were not checked" in result.stdout
    assert "ready to send" in result.stdout

    result = cli("links", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("warning: no host resolved")
    assert time.monotonic() - started < 10


# --- send ----------------------------------------------------------------------------------------


def add_subscribers(newsletter: Newsletter, cli: Run) -> None:
    csv = newsletter.root / "subscribers.csv"
    csv.write_text(
        "email,name,status\nada@example.org,Ada,active\ngrace@example.org,Grace,active\nlinus@example.org,Linus,active\n",
        encoding="utf-8",
    )
    result = cli("subscribers", "import", str(csv))
    assert result.returncode == 0, result.stdout + result.stderr


def outbox(newsletter: Newsletter) -> list[Path]:
    folder = newsletter.root / "outbox" / "new"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_send_refuses_broken_links_unless_allowed(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    add_subscribers(newsletter, cli)
    newsletter.write_issue(5, issue_with_links(server, ["ok", "missing"]))

    result = cli("send", "5")
    assert result.returncode != 0, result.stdout + result.stderr
    assert (
        "issue 5 has 1 broken link(s) (--allow-broken-links sends anyway): nothing was sent" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert outbox(newsletter) == []
    status = cli("status", "5")
    assert "issue 5: not sent yet (3 active subscribers)" in status.stdout

    result = cli("send", "5", "--allow-broken-links")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"link 'missing': HTTP 404 Not Found: {server.url('/missing')}" in result.stdout
    assert "3 sent, 0 failed" in result.stdout
    assert len(outbox(newsletter)) == 3
    assert "issue 5: done" in cli("status", "5").stdout


def test_send_offline_skips_the_link_check(server: LinkServer, newsletter: Newsletter, cli: Run) -> None:
    enable_links(newsletter)
    add_subscribers(newsletter, cli)
    newsletter.write_issue(5, issue_with_links(server, ["missing"]))
    result = cli("send", "5", "--offline")
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.hits() == 0
    assert len(outbox(newsletter)) == 3


# --- links --archive -----------------------------------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_links_archive_suggests_errata_that_run_as_printed(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    add_subscribers(newsletter, cli)
    gone, old, stays = server.url("/page-gone"), server.url("/page-old"), server.url("/page-stays")
    newsletter.write_issue(
        1, f"Three links.\n\n[The talk]({gone}) and [the slides]({old}).\n\nAlso [this]({stays}).\n"
    )
    sent = cli("send", "1")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert (newsletter.root / "archive" / "1.md").exists()

    result = cli("links", "--archive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["3 link(s) in 1 archived issue(s) checked: 0 broken"]

    # A week later: one page is gone, one has moved for good.
    server.overrides["/page-gone"] = (404, None)
    server.overrides["/page-old"] = (301, "/page-new")
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    with db:
        db.execute(
            "UPDATE link_cache SET checked_at = ?",
            ((dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).isoformat(timespec="seconds"),),
        )
    db.close()

    hits = server.hits()
    result = cli("links", "--archive")
    assert server.hits() > hits
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: 1 broken link(s)" in result.stderr
    lines = result.stdout.splitlines()
    archived = newsletter.root / "archive" / "1.md"
    assert f"1.md:{line_of(archived, gone)}: HTTP 404 Not Found: {gone}" in lines
    assert (
        f"1.md:{line_of(archived, old)}: moved permanently to {server.url('/page-new')}: update the link: {old}"
        in lines
    )
    assert lines[-1] == "3 link(s) in 1 archived issue(s) checked: 1 broken"
    commands = [line.strip() for line in lines if line.startswith("  newsletter errata add ")]
    assert len(commands) == 2
    assert not any(stays in command for command in commands)

    for command in commands:
        argv = shlex.split(command)
        assert argv[:4] == ["newsletter", "errata", "add", "1"]
        done = run_script(newsletter, *argv[1:])  # the venv's console script stands in for `newsletter`
        assert done.returncode == 0, done.stdout + done.stderr
        assert "recorded against issue 1" in done.stdout

    listed = cli("errata", "list")
    assert listed.returncode == 0, listed.stderr
    errata = listed.stdout.splitlines()
    assert len(errata) == 2
    broken = next(line for line in errata if gone in line)
    assert "The link to “The talk”" in broken and "no longer works" in broken and "[replace" not in broken
    assert broken.endswith("(pending)")
    moved = next(line for line in errata if "the slides" in line)
    assert f"has moved to `{server.url('/page-new')}`" in moved
    assert f"[replace {old!r} -> {server.url('/page-new')!r}]" in moved


def send_issue_one(newsletter: Newsletter, cli: Run, body: str) -> None:
    add_subscribers(newsletter, cli)
    newsletter.write_issue(1, body)
    sent = cli("send", "1")
    assert sent.returncode == 0, sent.stdout + sent.stderr


def archive_on(server: LinkServer, newsletter: Newsletter) -> None:
    """Publish the archive on the test server: relative links resolve against it."""
    text = newsletter.config_path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^archive_base_url = .*$", f'archive_base_url = "{server.url("/archive")}"', text)
    newsletter.config_path.write_text(text, encoding="utf-8")


def test_a_link_to_a_section_of_the_issue_itself_passes_check(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    archive_on(server, newsletter)
    newsletter.write_issue(7, "Intro: see [the news](#news) below.\n\n## News\n\nNothing yet.\n")
    result = cli("check", "7")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize("written", ["older.md", "/page-café"], ids=["relative", "non-ascii"])
def test_a_suggested_replace_runs_for_links_written_differently(
    server: LinkServer, newsletter: Newsletter, cli: Run, written: str
) -> None:
    enable_links(newsletter)
    archive_on(server, newsletter)
    target = written if written.endswith(".md") else server.url(written)
    send_issue_one(newsletter, cli, f"See [the old page]({target}).\n")
    moved = "/archive/older.md" if written.endswith(".md") else "/page-caf%C3%A9"
    server.overrides[moved] = (301, "/page-new")
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    with db:
        db.execute("DELETE FROM link_cache")
    db.close()
    result = cli("links", "--archive")
    commands = [
        line.strip() for line in result.stdout.splitlines() if line.startswith("  newsletter errata add ")
    ]
    assert len(commands) == 1, result.stdout
    recorded = cli(*shlex.split(commands[0])[1:])
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr


def expire_link_cache(newsletter: Newsletter) -> None:
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    with db:
        db.execute("DELETE FROM link_cache")
    db.close()


@pytest.mark.slow  # the console script in a subprocess
def test_an_erratum_once_announced_is_not_suggested_again(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    archive_on(server, newsletter)
    gone = server.url("/page-gone")
    send_issue_one(newsletter, cli, f"See [the talk]({gone}).\n")
    server.overrides["/page-gone"] = (404, None)
    expire_link_cache(newsletter)
    first = cli("links", "--archive")
    command = next(
        line.strip() for line in first.stdout.splitlines() if line.startswith("  newsletter errata add ")
    )
    assert cli(*shlex.split(command)[1:]).returncode == 0
    newsletter.write_issue(2, "Second issue.\n")
    assert cli("send", "2").returncode == 0  # announces the erratum
    again = cli("links", "--archive")
    suggestions = [line for line in again.stdout.splitlines() if line.startswith("  newsletter errata add ")]
    assert suggestions == [], again.stdout


def test_a_cached_broken_link_is_reported_even_when_the_rest_cannot_be_checked(
    server: LinkServer, newsletter: Newsletter, cli: Run
) -> None:
    enable_links(newsletter)
    newsletter.write_issue(3, f"A [dead link]({server.url('/missing')}).\n")
    assert cli("check", "3").returncode == 1  # the 404 is now cached
    newsletter.write_issue(
        3, f"A [dead link]({server.url('/missing')}) and [another](https://nonexistent.invalid/).\n"
    )
    result = cli("check", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HTTP 404 Not Found" in result.stderr


def test_links_prints_the_issue_path_like_check(server: LinkServer, newsletter: Newsletter, cli: Run) -> None:
    enable_links(newsletter)
    path = newsletter.write_issue(4, f"A [dead link]({server.url('/missing')}).\n")
    result = cli("links", "4")
    assert result.stdout.startswith(
        f"issues/4.md:{line_of(path, '[dead link](')}: error: link 'dead link'"
    ), result.stdout
