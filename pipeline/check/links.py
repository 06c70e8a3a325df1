"""Check every link of an issue over HTTP: concurrently, politely, with a cache.

HEAD first (cheap), GET when a server refuses HEAD; redirects followed, and a
permanent one reported as a suggestion to update the link. Results are cached
in the state database so re-checking a draft is fast. When not one host
resolves, the machine is offline: the check says it was skipped instead of
calling every link broken.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from pipeline.config import LinkSettings
from pipeline.db import transaction

USER_AGENT = "newsletter-pipeline link checker (+https://github.com/)"
# Servers that refuse HEAD answer with one of these; GET tells the truth.
HEAD_REFUSED = {403, 404, 405, 406, 429, 500, 501, 503}
PERMANENT_REDIRECTS = {301, 308}


@dataclass(frozen=True)
class LinkResult:
    url: str
    ok: bool
    status: int | None = None
    final_url: str = ""
    permanent_redirect: bool = False
    error: str = ""

    def describe(self) -> str:
        if self.ok and self.permanent_redirect:
            return f"moved permanently to {self.final_url}: update the link"
        if self.ok:
            return "ok"
        return self.error or f"HTTP {self.status}"


@dataclass(frozen=True)
class Report:
    results: dict[str, LinkResult]
    skipped: str = ""
    """Why the check did not run (offline), or empty."""


def check_urls(
    urls: Iterable[str],
    settings: LinkSettings,
    db: sqlite3.Connection | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    use_cache: bool = True,
) -> Report:
    wanted = sorted({url for url in urls if _scheme(url) in ("http", "https")})
    cached = _cached(db, wanted, settings.cache_hours) if db is not None and use_cache else {}
    todo = [url for url in wanted if url not in cached]
    # Every host counts, cached ones too: one mistyped new domain must not look like "offline".
    if todo and transport is None and not _any_host_resolves(wanted):
        return Report(
            cached, skipped="no host resolved: the network looks unreachable, links were not checked"
        )
    fresh = asyncio.run(_check_all(todo, settings, progress, transport)) if todo else {}
    if db is not None and fresh:
        _store(db, fresh.values())
    return Report({**cached, **fresh})


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:  # e.g. "http://[::1/": not a URL at all; the offline checks report it
        return ""


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _any_host_resolves(urls: list[str], timeout: float = 3.0, most: int = 64) -> bool:
    """Resolve the distinct hosts at once; the first success means we are online.

    Daemon threads, not asyncio: a hanging resolver must not hold us past ``timeout``.
    """
    hosts = [host for host in dict.fromkeys(_host(url) for url in urls) if host][:most]
    online = threading.Event()
    remaining = threading.Semaphore(0)

    def resolve(host: str) -> None:
        try:
            socket.getaddrinfo(host, 443)
            online.set()
        except (OSError, UnicodeError):
            pass
        finally:
            remaining.release()

    for host in hosts:
        threading.Thread(target=resolve, args=(host,), daemon=True).start()
    deadline = time.monotonic() + timeout
    for _ in hosts:
        if online.is_set() or not remaining.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    return online.is_set()


async def _check_all(
    urls: list[str],
    settings: LinkSettings,
    progress: Callable[[int, int], None] | None,
    transport: httpx.AsyncBaseTransport | None,
) -> dict[str, LinkResult]:
    per_host: dict[str, asyncio.Semaphore] = {}
    overall = asyncio.Semaphore(settings.concurrency)
    done = 0
    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        limits=limits,
        transport=transport,
    ) as client:

        async def one(url: str) -> LinkResult:
            nonlocal done
            host = _host(url)
            semaphore = per_host.setdefault(host, asyncio.Semaphore(settings.per_host))
            # Per-host first: links to one busy host must not hold every overall slot while they wait.
            async with semaphore, overall:
                try:
                    result = await asyncio.wait_for(_check(client, url), settings.timeout)
                except TimeoutError:
                    result = LinkResult(url, False, error="timed out")
            done += 1
            if progress:
                progress(done, len(urls))
            return result

        results = await asyncio.gather(*(one(url) for url in urls))
    return {result.url: result for result in results}


async def _check(client: httpx.AsyncClient, url: str, max_redirects: int = 10) -> LinkResult:
    current = url
    permanent = True
    redirected = False
    try:
        for _ in range(max_redirects + 1):
            response = await client.head(current)
            if response.status_code in HEAD_REFUSED:
                response = await _get(client, current)
            if response.is_redirect and "location" in response.headers:
                redirected = True
                permanent = permanent and response.status_code in PERMANENT_REDIRECTS
                current = str(response.url.join(response.headers["location"]))
                continue
            ok = response.status_code < 400
            return LinkResult(
                url,
                ok,
                response.status_code,
                current if redirected else "",
                ok and redirected and permanent and current != url,
                "" if ok else f"HTTP {response.status_code} {response.reason_phrase}".strip(),
            )
        return LinkResult(url, False, error=f"more than {max_redirects} redirects")
    except httpx.TimeoutException:
        return LinkResult(url, False, error="timed out")
    except httpx.ConnectError as error:
        cause = str(error) or type(error).__name__
        if _is_dns_failure(error):
            return LinkResult(url, False, error="host not found (DNS)")
        return LinkResult(url, False, error=f"cannot connect: {cause}")
    except httpx.HTTPError as error:
        return LinkResult(url, False, error=f"{type(error).__name__}: {error}")
    except Exception as error:
        return LinkResult(url, False, error=f"invalid URL: {error}")


def _is_dns_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(error).lower()
    return any(p in text for p in ("name or service not known", "name resolution", "nodename nor servname"))


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response:
    # Stream, and close before reading: only the status matters, not a 5 MB page.
    async with client.stream("GET", url) as response:
        return response


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cached(db: sqlite3.Connection, urls: list[str], hours: float) -> dict[str, LinkResult]:
    since = (_now() - dt.timedelta(hours=hours)).isoformat(timespec="microseconds")
    found: dict[str, LinkResult] = {}
    for start in range(0, len(urls), 500):
        chunk = urls[start : start + 500]
        rows = db.execute(
            f"SELECT * FROM link_cache WHERE checked_at >= ? AND url IN ({','.join('?' * len(chunk))})",
            (since, *chunk),
        ).fetchall()
        for row in rows:
            found[row["url"]] = LinkResult(
                row["url"],
                bool(row["ok"]),
                row["status"],
                row["final_url"] or "",
                bool(row["permanent_redirect"]),
                row["error"] or "",
            )
    return found


def _store(db: sqlite3.Connection, results: Iterable[LinkResult]) -> None:
    """Only good results are kept: a one-off 503 or timeout must not block a send for a day."""
    results = [r for r in results if r.ok]
    stamp = _now().isoformat(timespec="microseconds")
    with transaction(db):
        db.executemany(
            "INSERT OR REPLACE INTO link_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (r.url, int(r.ok), r.status, r.final_url, int(r.permanent_redirect), r.error, stamp)
                for r in results
            ],
        )
