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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .config import LinkSettings
from .db import transaction

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
) -> Report:
    wanted = sorted({url for url in urls if urlsplit(url).scheme in ("http", "https")})
    cached = _cached(db, wanted, settings.cache_hours) if db is not None else {}
    todo = [url for url in wanted if url not in cached]
    if todo and transport is None and not _any_host_resolves(todo):
        return Report(cached, skipped="no host resolved: the network looks unreachable, links were not checked")
    fresh = asyncio.run(_check_all(todo, settings, progress, transport)) if todo else {}
    if db is not None and fresh:
        _store(db, fresh.values())
    return Report({**cached, **fresh})


def _any_host_resolves(urls: list[str], limit: int = 8, timeout: float = 3.0) -> bool:
    """Resolve a handful of distinct hosts in parallel; one success means we are online."""
    hosts = list(dict.fromkeys(urlsplit(url).hostname or "" for url in urls))[:limit]

    async def resolve(host: str) -> bool:
        try:
            await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, 443), timeout)
            return True
        except (TimeoutError, OSError, UnicodeError):
            return False

    async def any_resolves() -> bool:
        return any(await asyncio.gather(*(resolve(h) for h in hosts if h)))

    return asyncio.run(any_resolves())


async def _check_all(
    urls: list[str],
    settings: LinkSettings,
    progress: Callable[[int, int], None] | None,
    transport: httpx.AsyncBaseTransport | None,
) -> dict[str, LinkResult]:
    per_host: dict[str, asyncio.Semaphore] = {}
    overall = asyncio.Semaphore(settings.concurrency)
    done = 0
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        limits=limits,
        transport=transport,
    ) as client:

        async def one(url: str) -> LinkResult:
            nonlocal done
            host = urlsplit(url).hostname or ""
            semaphore = per_host.setdefault(host, asyncio.Semaphore(settings.per_host))
            async with overall, semaphore:
                result = await _check(client, url)
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
        if isinstance(error.__cause__, socket.gaierror) or "Name or service not known" in cause or "nodename" in cause:
            return LinkResult(url, False, error="host not found (DNS)")
        return LinkResult(url, False, error=f"cannot connect: {cause}")
    except httpx.HTTPError as error:
        return LinkResult(url, False, error=f"{type(error).__name__}: {error}")


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response:
    # Stream, and close before reading: only the status matters, not a 5 MB page.
    async with client.stream("GET", url) as response:
        return response


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cached(db: sqlite3.Connection, urls: list[str], hours: float) -> dict[str, LinkResult]:
    since = (_now() - dt.timedelta(hours=hours)).isoformat(timespec="seconds")
    found: dict[str, LinkResult] = {}
    for start in range(0, len(urls), 500):
        chunk = urls[start : start + 500]
        rows = db.execute(
            f"SELECT * FROM link_cache WHERE checked_at >= ? AND url IN ({','.join('?' * len(chunk))})",
            (since, *chunk),
        ).fetchall()
        for row in rows:
            found[row["url"]] = LinkResult(
                row["url"], bool(row["ok"]), row["status"], row["final_url"] or "", bool(row["permanent_redirect"]), row["error"] or ""
            )
    return found


def _store(db: sqlite3.Connection, results: Iterable[LinkResult]) -> None:
    stamp = _now().isoformat(timespec="seconds")
    with transaction(db):
        db.executemany(
            "INSERT OR REPLACE INTO link_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.url, int(r.ok), r.status, r.final_url, int(r.permanent_redirect), r.error, stamp) for r in results],
        )
