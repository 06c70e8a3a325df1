"""Time sending: per-recipient message building, the campaign engine, memory at 1M subscribers, SES throughput.

    .venv/bin/python bench/bench_send.py              # everything, full size: ~20 min (the 1M campaign ~11)
    .venv/bin/python bench/bench_send.py --quick      # smaller sizes, fewer runs: ~4 min
    .venv/bin/python bench/bench_send.py --json       # machine-readable results on stdout
    .venv/bin/python bench/bench_send.py --only build,campaign,million,standin,ses
    .venv/bin/python bench/bench_send.py --only ses --profile   # also cProfile the SES sender (all threads)
    .venv/bin/python bench/bench_send.py --out r.json # save the JSON after every part; --render r.json prints it

What is measured, always through the library as ``newsletter send`` uses it (nothing in pipeline/ is
changed; the runner's own methods are wrapped only to count and time them):

1. ``build``: ``MessageTemplate.build`` for issue 2 (the large sample), one thread, distinct
   recipients; and the whole per-recipient step (``CampaignRunner._deliver``: token, headers, build, DiscardTransport).
2. ``campaign``: ``prepare_campaign`` + ``CampaignRunner.run`` with ``DiscardTransport``, no rate
   limit, on a fresh state database of N subscribers, with the database as shipped
   (WAL, ``synchronous=FULL``), and again with ``synchronous=NORMAL`` to show what the per-round
   fsync of the ledger costs.
3. ``million``: the same with 1,000,000 subscribers (``--quick``: 200,000), run in a child process so
   that only the campaign's memory counts: its peak RSS (VmHWM of the child, which includes importing
   the pipeline and rendering the issue, as ``newsletter send`` does), RSS sampled over time (flat =
   it streams), time and rate.
4. ``standin``: what the local SES stand-in (``bench/ses_standin.py``, its own process) sustains
   with a 50 ms answer delay, driven by raw keep-alive HTTP clients with the real request size.
5. ``ses``: ``SesTransport`` (boto3, real request signing) against the stand-in, through
   ``CampaignRunner`` with ``max_rate=500`` (the rate ``send_rate`` gives: config vs the stand-in's
   ``GetAccount`` quota) and 32 / 48 workers; sustained rate over the middle 80 % of the messages,
   and where the sender's CPU goes.

Targets: >= 2,000 msg/s building and through the engine; < 200 MB peak RSS at 1M; >= 450 msg/s
sustained through SES at max_rate 500. See bench/README.md for recorded figures.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import gc
import io
import json
import os
import pstats
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a fresh clone without `pip install -e`
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import machine as machine_and_packages

from pipeline.audience.tokens import make_token
from pipeline.config import Config, load_config
from pipeline.db import DB_NAME, open_db
from pipeline.issue.render import Rendered, render_issue
from pipeline.issue.source import read_issue
from pipeline.send.delivery import Outcome, SendSettings
from pipeline.send.ledger import Campaign, Candidate, content_hash, delivery_key, prepare_campaign
from pipeline.send.message import MessageTemplate, Recipient, list_id, sender_domain
from pipeline.send.runner import CampaignRunner, Summary
from pipeline.send.transports.base import Transport
from pipeline.send.transports.discard import DiscardTransport

ISSUE = 2
SECRET = b"bench-secret-0123456789abcdef"
PARTS = ("build", "campaign", "million", "standin", "ses")
TARGET_BUILD = 2000.0  # msg/s
TARGET_RSS_MB = 200.0
TARGET_SES = 450.0  # msg/s at max_rate 500
SES_RATE = 500.0
SES_DELAY = 0.05
PACKAGES = ("boto3", "botocore", "urllib3")


# ---------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    return {**machine_and_packages(PACKAGES), "sqlite": sqlite3.sqlite_version}


def commit_cost(folder: Path, commits: int = 300) -> dict[str, float]:
    """Milliseconds per tiny committed transaction in a WAL database on the temp disk, per synchronous mode."""
    result = {}
    for mode in ("FULL", "NORMAL"):
        path = folder / f"fsync-{mode}.sqlite3"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {mode}")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for index in range(commits):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (v) VALUES (?)", (f"row {index}",))
            db.execute("COMMIT")
        result[mode] = round((time.perf_counter() - start) / commits * 1000, 3)
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------- set-up


def load(config_path: Path) -> tuple[Config, Rendered]:
    config = load_config(config_path)
    return config, render_issue(config, read_issue(config.paths.issues, ISSUE))


def with_state(config: Config, state: Path) -> Config:
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, state=state))


def subscriber_rows(count: int, stamp: str) -> Iterator[tuple[Any, ...]]:
    """Active subscribers reader<N>@example.org; every 7th has a non-ASCII name (an encoded To header)."""
    for index in range(1, count + 1):
        email = f"reader{index}@example.org"
        name = f"Zoë Ünal {index}" if index % 7 == 0 else f"Reader {index}"
        yield (index, email, email.casefold(), name, "active", "bench", stamp, stamp, stamp)


def make_state(folder: Path, count: int) -> Path:
    """A state database (the real schema, via open_db) with ``count`` active subscribers, bulk-inserted."""
    folder.mkdir(parents=True, exist_ok=True)
    db = open_db(folder)
    db.execute("PRAGMA synchronous = OFF")  # set-up only; the campaign reopens it as shipped
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO subscribers (id, email, email_key, name, status, source, created_at, confirmed_at,"
        " status_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        subscriber_rows(count, stamp),
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return folder / DB_NAME


def copy_state(source: Path, folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / DB_NAME)
    return folder


# ---------------------------------------------------------------- instrumentation


class Timeline:
    """A reporter that samples (seconds, messages recorded) every ``step`` outcomes: bounded memory."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.count = 0
        self.samples: list[tuple[float, int]] = []
        self.kinds: dict[str, int] = {}
        self._start = 0.0

    def start(self, total: int, done: int) -> None:
        self._start = time.monotonic()
        self.samples = [(0.0, 0)]

    def advance(self, outcome: Outcome) -> None:
        self.count += 1
        self.kinds[outcome.kind] = self.kinds.get(outcome.kind, 0) + 1
        if self.count % self.step == 0:
            self.samples.append((time.monotonic() - self._start, self.count))

    def finish(self) -> None:
        self.samples.append((time.monotonic() - self._start, self.count))

    def middle_rate(self, low: float = 0.1, high: float = 0.9) -> float | None:
        """Messages per second between the ``low`` and ``high`` fractions of the messages: no ramp-up or tail."""
        total = self.count
        if total < 10 or len(self.samples) < 4:
            return None
        first = next(s for s in self.samples if s[1] >= total * low)
        last = next(s for s in self.samples if s[1] >= total * high)
        return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else None


class Probe:
    """Counts and times the runner's steps by wrapping its bound methods on the instance (cheap: ~2 µs a call)."""

    def __init__(self, runner: CampaignRunner, *, profile: bool = False) -> None:
        self.commits = 0
        self.commit_rows = 0
        self.commit_wall = 0.0
        self.query_wall = 0.0
        self.queries = 0
        self._registry: list[dict[str, float]] = []
        registry = self._registry
        local = threading.local()
        self.profiles: list[cProfile.Profile] = []
        profiles = self.profiles

        def acc() -> dict[str, float]:
            found = getattr(local, "acc", None)
            if found is None:
                found = local.acc = {
                    "build_cpu": 0.0,
                    "build_n": 0,
                    "send_cpu": 0.0,
                    "send_wall": 0.0,
                    "send_n": 0,
                }
                registry.append(found)
                if profile:
                    local.profile = cProfile.Profile()
                    profiles.append(local.profile)
            return found

        commit, next_recipients, template = (
            runner.ledger.record_and_claim,
            runner.ledger.queued,
            runner.template,
        )
        deliver, transport = runner._deliver, runner.transport

        def timed_commit(finished: Sequence[Outcome], claimed: Sequence[Candidate] = ()) -> list[Candidate]:
            start = time.perf_counter()
            started = commit(finished, claimed)
            self.commit_wall += time.perf_counter() - start
            self.commits += 1
            self.commit_rows += len(finished) + len(claimed)
            return started

        def timed_next(*, after: int, limit: int, partition: tuple[int, int] = (0, 1)) -> list[Candidate]:
            start = time.perf_counter()
            rows = next_recipients(after=after, limit=limit, partition=partition)
            self.query_wall += time.perf_counter() - start
            self.queries += 1
            return rows

        class TimedTemplate:
            def build(self, recipient: Any) -> bytes:
                mine = acc()
                start = time.thread_time()
                data = template.build(recipient)
                mine["build_cpu"] += time.thread_time() - start
                mine["build_n"] += 1
                return data

            def __getattr__(self, attribute: str) -> Any:
                return getattr(template, attribute)

        class TimedTransport:
            name = transport.name

            def send(self, envelope: Any) -> str:
                mine = acc()
                cpu, wall = time.thread_time(), time.perf_counter()
                try:
                    return transport.send(envelope)
                finally:
                    mine["send_cpu"] += time.thread_time() - cpu
                    mine["send_wall"] += time.perf_counter() - wall
                    mine["send_n"] += 1

            def __getattr__(self, attribute: str) -> Any:
                return getattr(transport, attribute)

        def profiled_deliver(*args: Any) -> Outcome:
            acc()
            local.profile.enable()
            try:
                return deliver(*args)
            finally:
                local.profile.disable()

        runner.ledger.record_and_claim = timed_commit  # type: ignore[method-assign]
        runner.ledger.queued = timed_next  # type: ignore[method-assign]
        runner.template = TimedTemplate()  # type: ignore[assignment]
        runner.transport = TimedTransport()  # type: ignore[assignment]
        if profile:
            runner._deliver = profiled_deliver  # type: ignore[method-assign]

    def workers(self) -> dict[str, float]:
        total = {"build_cpu": 0.0, "build_n": 0, "send_cpu": 0.0, "send_wall": 0.0, "send_n": 0}
        for acc in self._registry:
            for key in total:
                total[key] += acc[key]
        return total

    def report(self, handled: int) -> dict[str, Any]:
        workers = self.workers()
        per = max(handled, 1)
        return {
            "commits": self.commits,
            "rows_per_commit": round(self.commit_rows / max(self.commits, 1), 2),
            "commit_wall_s": round(self.commit_wall, 3),
            "commit_ms_each": round(self.commit_wall / max(self.commits, 1) * 1000, 3),
            "claim_queries": self.queries,
            "claim_query_wall_s": round(self.query_wall, 3),
            "build_cpu_ms_per_msg": round(workers["build_cpu"] / max(workers["build_n"], 1) * 1000, 4),
            "send_cpu_ms_per_msg": round(workers["send_cpu"] / max(workers["send_n"], 1) * 1000, 4),
            "send_wall_ms_per_msg": round(workers["send_wall"] / max(workers["send_n"], 1) * 1000, 3),
            "worker_threads": len(self._registry),
            "handled": per,
        }


def run_campaign(
    db: sqlite3.Connection,
    config: Config,
    rendered: Rendered,
    transport: Transport,
    settings: SendSettings,
    *,
    step: int,
    profile: bool = False,
) -> dict[str, Any]:
    """prepare_campaign + CampaignRunner.run, timed and instrumented."""
    start = time.perf_counter()
    preparation = prepare_campaign(db, ISSUE, content_hash(rendered), transport)
    prepared = time.perf_counter() - start
    template = MessageTemplate(config, rendered)
    timeline = Timeline(step)
    runner = CampaignRunner(db, config, preparation.campaign, template, transport, SECRET, settings, timeline)
    probe = Probe(runner, profile=profile)
    main_profile = cProfile.Profile() if profile else None
    gc.collect()
    cpu, main_cpu = time.process_time(), time.thread_time()
    if main_profile:
        main_profile.enable()
    summary = runner.run()
    if main_profile:
        main_profile.disable()
    main_cpu, cpu = time.thread_time() - main_cpu, time.process_time() - cpu
    result = {
        **outcome_figures(preparation.queued, summary, timeline, cpu),
        "prepare_s": round(prepared, 3),
        "main_thread_cpu_s": round(main_cpu, 3),
        "probe": probe.report(summary.handled),
    }
    if profile:
        result["profile"] = format_profiles(main_profile, probe.profiles)
    return result


def run_campaign_processes(
    db: sqlite3.Connection,
    config: Config,
    rendered: Rendered,
    transport: Transport,
    settings: SendSettings,
    processes: int,
    *,
    step: int,
) -> dict[str, Any]:
    """prepare_campaign + fanout.run_in_processes, as `newsletter send` runs an SES campaign on several cores.

    The sender processes open their own transport from ``config`` (the stand-in's endpoint). No probe:
    their threads are in other processes; CPU is this process's plus the senders' (RUSAGE_CHILDREN)."""
    import resource

    from pipeline.send.fanout import run_in_processes

    preparation = prepare_campaign(db, ISSUE, content_hash(rendered), transport)
    transport.close()  # each sender process opens its own
    timeline = Timeline(step)
    gc.collect()
    cpu = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = run_in_processes(
        db,
        config,
        preparation.campaign,
        MessageTemplate(config, rendered),
        SECRET,
        settings,
        processes,
        timeline,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (
        time.process_time()
        - cpu
        + (after.ru_utime + after.ru_stime)
        - (children.ru_utime + children.ru_stime)
    )
    return {**outcome_figures(preparation.queued, summary, timeline, cpu), "probe": None}


def outcome_figures(queued: int, summary: Summary, timeline: Timeline, cpu: float) -> dict[str, Any]:
    """What one campaign run gives, however it was run: counts, rates, CPU."""
    return {
        "queued": queued,
        "status": summary.status,
        "reason": summary.reason,
        "counts": summary.counts,
        "handled": summary.handled,
        "elapsed_s": round(summary.elapsed, 3),
        "rate": round(summary.rate, 1),
        "middle_rate": round(timeline.middle_rate() or 0.0, 1),
        "process_cpu_s": round(cpu, 3),
        "cpu_cores_busy": round(cpu / summary.elapsed, 2) if summary.elapsed else 0.0,
    }


def format_profiles(main: cProfile.Profile | None, workers: list[cProfile.Profile], limit: int = 30) -> str:
    out = io.StringIO()
    if main is not None:
        out.write("=== main thread (CampaignRunner.run loop), sorted by own time ===\n")
        pstats.Stats(main, stream=out).strip_dirs().sort_stats("tottime").print_stats(limit)
    if workers:
        out.write(
            f"=== {len(workers)} worker threads merged (CampaignRunner._deliver), sorted by own time ===\n"
        )
        stats = pstats.Stats(workers[0], stream=out)
        for other in workers[1:]:
            stats.add(other)
        stats.strip_dirs().sort_stats("tottime").print_stats(limit)
        out.write("=== worker threads, cumulative ===\n")
        stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


# ---------------------------------------------------------------- 1. building messages


def bench_build(config: Config, rendered: Rendered, messages: int, runs: int) -> dict[str, Any]:
    template = MessageTemplate(config, rendered)
    domain = sender_domain(config)
    digest = content_hash(rendered)
    campaign = Campaign(1, ISSUE, digest, "sending", "dry-run")
    recipients = []
    for index in range(1, messages + 1):
        email = f"reader{index}@example.org"
        token = make_token(SECRET, "unsubscribe", index, email, list_id=list_id(config))
        recipients.append(
            Recipient(
                email=email,
                name=f"Zoë Ünal {index}" if index % 7 == 0 else f"Reader {index}",
                unsubscribe_url=f"{config.public_url}/unsubscribe/{token}",
                message_id=f"<{delivery_key(campaign, index)}.{digest[:10]}@{domain}>",
            )
        )
    size = len(template.build(recipients[0]))
    date = dt.datetime.now(dt.UTC)

    def build_only(fixed_date: dt.datetime | None) -> tuple[float, float]:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for recipient in recipients:
            template.build(recipient, fixed_date)
        return time.perf_counter() - wall, time.process_time() - cpu

    # The whole per-recipient step as a sender thread does it: token, Recipient, build, hand to the transport.
    runner = CampaignRunner(
        None,
        config,
        campaign,
        template,
        DiscardTransport(),
        SECRET,  # type: ignore[arg-type]
        SendSettings(1, None, 1, 1),
    )
    rows = [(index, f"reader{index}@example.org", f"Reader {index}") for index in range(1, messages + 1)]

    def per_recipient() -> tuple[float, float]:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for subscriber_id, email, name in rows:
            runner._deliver(Candidate(subscriber_id, 0, email, name))
        return time.perf_counter() - wall, time.process_time() - cpu

    build_only(None)  # warm-up
    variants = {
        "build": lambda: build_only(None),
        "build_fixed_date": lambda: build_only(date),
        "per_recipient": per_recipient,
    }
    collected: dict[str, list[tuple[float, float]]] = {label: [] for label in variants}
    for _ in range(runs):  # interleaved, so a change in the machine's load hits every variant alike
        for label, function in variants.items():
            collected[label].append(function())
    results = {}
    for label, samples in collected.items():
        walls = [messages / wall for wall, _ in samples]
        cpus = [messages / cpu for _, cpu in samples if cpu > 0]
        results[label] = {
            "median_rate": round(statistics.median(walls), 1),
            "min_rate": round(min(walls), 1),
            "max_rate": round(max(walls), 1),
            "cpu_median_rate": round(statistics.median(cpus), 1) if cpus else None,
            "us_per_msg": round(1e6 / statistics.median(walls), 1),
        }
    return {"messages": messages, "runs": runs, "message_bytes": size, **results}


# ---------------------------------------------------------------- 2. the campaign engine, discarding


def bench_campaign(
    config: Config,
    rendered: Rendered,
    work: Path,
    subscribers: int,
    runs: int,
    variants: list[tuple[str, int, str]],
) -> dict[str, Any]:
    source = make_state(work / "campaign-source", subscribers)
    collected: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
    for run in range(runs):  # interleaved, so a change in the machine's load hits every variant alike
        for label, concurrency, sync in variants:
            state = copy_state(source, work / f"campaign-{run}")
            db = open_db(state)
            if sync != "FULL":
                db.execute(f"PRAGMA synchronous = {sync}")
            settings = SendSettings(
                concurrency=concurrency,
                max_rate=None,
                max_attempts=config.send.max_attempts,
                max_consecutive_failures=config.send.max_consecutive_failures,
            )
            collected[label].append(
                run_campaign(
                    db,
                    with_state(config, state),
                    rendered,
                    DiscardTransport(),
                    settings,
                    step=max(subscribers // 100, 1),
                )
            )
            db.close()
            shutil.rmtree(state)
    results = {}
    for label, concurrency, sync in variants:
        samples = collected[label]
        ordered = sorted(samples, key=lambda s: s["rate"])
        median = ordered[len(ordered) // 2]
        results[label] = {
            "concurrency": concurrency,
            "synchronous": sync,
            "median_rate": median["rate"],
            "rates": [s["rate"] for s in samples],
            "median_msg_per_cpu_s": round(
                statistics.median(
                    s["handled"] / s["process_cpu_s"] for s in samples if s["process_cpu_s"] > 0
                ),
                1,
            ),
            "median_run": median,
        }
    shutil.rmtree(source.parent)
    return {"subscribers": subscribers, "runs": runs, "variants": results}


# ---------------------------------------------------------------- 3. one million, in a child process


def _status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_million(state: Path, config_path: Path, concurrency: int, sync: str) -> int:
    """Runs in the child: render, prepare, run; prints one JSON line. Peak RSS is reset after render."""
    marks: dict[str, Any] = {"start_kb": _status_kb("self", "VmRSS")}
    config, rendered = load(config_path)
    config = with_state(config, state)
    db = open_db(state)
    if sync != "FULL":
        db.execute(f"PRAGMA synchronous = {sync}")
    marks["after_render_hwm_kb"] = _status_kb("self", "VmHWM")
    transport = DiscardTransport()
    settings = SendSettings(
        concurrency=concurrency,
        max_rate=None,
        max_attempts=config.send.max_attempts,
        max_consecutive_failures=config.send.max_consecutive_failures,
    )
    result = run_campaign(db, config, rendered, transport, settings, step=10_000)
    marks["end_hwm_kb"] = _status_kb("self", "VmHWM")
    marks["end_rss_kb"] = _status_kb("self", "VmRSS")
    marks["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["memory"] = marks
    result["sent_by_transport"] = int(transport.send(None).rpartition("-")[2]) - 1  # type: ignore[arg-type]  # its counter
    print(json.dumps(result), flush=True)
    return 0


def bench_million(
    work: Path, config_path: Path, subscribers: int, concurrency: int, sync: str
) -> dict[str, Any]:
    start = time.perf_counter()
    state = work / "million"
    make_state(state, subscribers)
    setup_s = time.perf_counter() - start
    db_bytes = (state / DB_NAME).stat().st_size
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-million",
        str(state),
        "--config",
        str(config_path),
        "--concurrency",
        str(concurrency),
        "--sync",
        sync,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        while process.poll() is None:
            try:
                rss = _status_kb(process.pid, "VmRSS")
            except (OSError, ValueError):
                rss = 0
            if rss:
                samples.append((round(time.monotonic() - started, 1), rss))
            time.sleep(0.5)
        output = process.stdout.read() if process.stdout else ""
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finally:
        if process.stdout:
            process.stdout.close()
    if process.returncode != 0:
        raise RuntimeError(f"the 1M child failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    shutil.rmtree(state)
    # RSS over the run, at tenths of the time: flat means the ledger is streamed, not loaded.
    trajectory = (
        [samples[min(len(samples) - 1, round(i * (len(samples) - 1) / 10))] for i in range(11)]
        if samples
        else []
    )
    return {
        "subscribers": subscribers,
        "concurrency": concurrency,
        "synchronous": sync,
        "setup_s": round(setup_s, 1),
        "db_mb": round(db_bytes / 1e6, 1),
        # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss still counts the forked copy of this (parent) process.
        "peak_rss_mb": round(result["memory"]["end_hwm_kb"] / 1024, 1),
        "ru_maxrss_mb": round(result["memory"]["ru_maxrss_kb"] / 1024, 1),
        "peak_rss_sampled_mb": round(max(kb for _, kb in samples) / 1024, 1) if samples else None,
        "rss_after_render_mb": round(result["memory"]["after_render_hwm_kb"] / 1024, 1),
        "rss_trajectory_mb": [(t, round(kb / 1024, 1)) for t, kb in trajectory],
        "child_wall_s": round(time.monotonic() - started, 1),
        **{k: v for k, v in result.items() if k != "memory"},
        "memory": result["memory"],
    }


# ---------------------------------------------------------------- 4. the SES stand-in on its own


def request_body(config: Config, rendered: Rendered) -> bytes:
    """A SendEmail body the size boto3 sends for issue 2: JSON with the raw message base64-encoded."""
    import base64

    data = MessageTemplate(config, rendered).build(
        Recipient(
            "reader1@example.org", "Reader 1", f"{config.public_url}/unsubscribe/1.x", "<1@example.org>"
        )
    )
    return json.dumps(
        {
            "Content": {"Raw": {"Data": base64.b64encode(data).decode()}},
            "Destination": {"ToAddresses": ["reader1@example.org"]},
            "FromEmailAddress": "editor@example.org",
        }
    ).encode()


def bench_standin(body: bytes, impls: list[str], connections: list[int], requests: int) -> dict[str, Any]:
    import http.client

    from ses_standin import SEND_PATH, StandIn

    results: dict[str, Any] = {"request_bytes": len(body), "requests": requests, "delay_ms": SES_DELAY * 1000}
    for impl in impls:
        with StandIn(delay=SES_DELAY, impl=impl) as standin:
            for count in connections:
                standin.stats(reset=True)
                each = max(requests // count, 1)
                errors: list[str] = []

                def client(each: int = each, errors: list[str] = errors) -> None:  # bound now, not late
                    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=30)
                    try:
                        for _ in range(each):
                            connection.request(
                                "POST", SEND_PATH, body=body, headers={"Content-Type": "application/json"}
                            )
                            answer = connection.getresponse()
                            answer.read()
                            if answer.status != 200:
                                errors.append(str(answer.status))
                    except OSError as error:
                        errors.append(str(error))
                    finally:
                        connection.close()

                threads = [threading.Thread(target=client) for _ in range(count)]
                start = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                elapsed = time.perf_counter() - start
                stats = standin.stats()
                times = stats["send_times"]
                middle = None
                if len(times) > 20:
                    low, high = times[len(times) // 10], times[len(times) * 9 // 10]
                    middle = (len(times) * 8 // 10) / (high - low) if high > low else None
                results[f"{impl}/{count}"] = {
                    "impl": impl,
                    "connections": count,
                    "rate": round(count * each / elapsed, 1),
                    "middle_rate": round(middle, 1) if middle else None,
                    "ideal_rate": round(count / SES_DELAY, 1),
                    "peak_in_flight": stats["peak_in_flight"],
                    "errors": len(errors),
                }
    return results


# ---------------------------------------------------------------- 5. SES through the pipeline


class SleepTransport:
    """No HTTP, no CPU: each send just waits as long as the stand-in would. The engine's own ceiling."""

    name = "sleep"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def send(self, envelope: Any) -> str:
        time.sleep(self.delay)
        return "slept"

    def max_rate(self) -> float | None:
        return None

    def was_delivered(self, key: str) -> bool | None:
        return None

    def close(self) -> None:
        pass


def ses_send_cost(config: Config, rendered: Rendered, impl: str, sends: int) -> dict[str, float]:
    """CPU per SesTransport.send on one thread (no other threads, stand-in answers at once)."""
    from ses_standin import StandIn

    from pipeline.send.transports.base import Envelope
    from pipeline.send.transports.ses import SesTransport

    data = MessageTemplate(config, rendered).build(
        Recipient(
            "reader1@example.org", "Reader 1", f"{config.public_url}/unsubscribe/1.x", "<1@example.org>"
        )
    )
    result = {}
    with StandIn(delay=0.0, impl=impl) as standin:
        transport = SesTransport("us-east-1", standin.url, "", 4)
        try:
            for label, body in (("issue_message", data), ("small_2kb_message", b"x" * 2000)):
                envelope = Envelope("editor@example.org", "reader1@example.org", body, "bench")
                for _ in range(min(sends // 5, 50)):
                    transport.send(envelope)
                cpu, wall = time.thread_time(), time.perf_counter()
                for _ in range(sends):
                    transport.send(envelope)
                result[f"{label}_cpu_ms"] = round((time.thread_time() - cpu) / sends * 1000, 3)
                result[f"{label}_wall_ms"] = round((time.perf_counter() - wall) / sends * 1000, 3)
        finally:
            transport.close()
    result["message_bytes"] = len(data)
    return result


def bench_ses(
    config: Config,
    rendered: Rendered,
    work: Path,
    subscribers: int,
    runs: int,
    concurrencies: list[int],
    impl: str,
    profile: bool,
    process_counts: list[int],
) -> dict[str, Any]:
    from ses_standin import StandIn

    from pipeline.send.transports.ses import SesTransport

    try:
        from pipeline.publish import send_rate
    except ImportError:  # pipeline.publish pulls in the whole CLI (archive, link checks); the rule is this:

        def send_rate(config: Config, transport: Any, dry_run: bool) -> float | None:
            account = transport.max_rate()
            return min(config.send.max_rate, account) if account else config.send.max_rate

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
    ):
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)
    source = make_state(work / "ses-source", subscribers)
    results: dict[str, Any] = {
        "subscribers": subscribers,
        "runs": runs,
        "standin_impl": impl,
        "delay_ms": SES_DELAY * 1000,
        "variants": {},
    }
    results["send_cost"] = ses_send_cost(config, rendered, impl, 300)
    collected: dict[str, list[dict[str, Any]]] = {}
    with StandIn(delay=SES_DELAY, max_send_rate=1000.0, impl=impl) as standin:
        ses_config = dataclasses.replace(
            config,
            transport="ses",
            ses=dataclasses.replace(config.ses, endpoint_url=standin.url),
            send=dataclasses.replace(config.send, max_rate=SES_RATE),
        )
        plan = [
            ("boto3", c, p, run) for run in range(runs) for p in process_counts for c in concurrencies
        ]  # interleaved
        plan += [("sleep", c, 1, 0) for c in concurrencies]
        for kind, concurrency, processes, run in plan:
            state = copy_state(source, work / "ses-run")
            db = open_db(state)
            # As open_transport builds it: a connection pool of concurrency + 2.
            transport: Any = (
                SesTransport("us-east-1", standin.url, "", concurrency + 2)
                if kind == "boto3"
                else SleepTransport(SES_DELAY)
            )
            try:
                if kind == "boto3":
                    transport.check()
                    rate = send_rate(ses_config, transport, dry_run=False)  # min(config 500, GetAccount 1000)
                else:
                    rate = SES_RATE
                standin.stats(reset=True)
                settings = SendSettings(
                    concurrency=concurrency,
                    max_rate=rate,
                    max_attempts=config.send.max_attempts,
                    max_consecutive_failures=config.send.max_consecutive_failures,
                )
                if processes > 1:
                    sample = run_campaign_processes(
                        db,
                        with_state(ses_config, state),
                        rendered,
                        transport,
                        settings,
                        processes,
                        step=max(subscribers // 200, 1),
                    )
                else:
                    sample = run_campaign(
                        db,
                        with_state(ses_config, state),
                        rendered,
                        transport,
                        settings,
                        step=max(subscribers // 200, 1),
                        profile=profile and kind == "boto3" and run == 0,
                    )
            finally:
                transport.close()
                db.close()
            stats = standin.stats()
            times = stats["send_times"]
            if len(times) > 20:
                low, high = times[len(times) // 10], times[len(times) * 9 // 10]
                sample["standin_middle_rate"] = round((len(times) * 8 // 10) / (high - low), 1)
            sample["standin_sends"] = stats["sends"]
            sample["standin_peak_in_flight"] = stats["peak_in_flight"]
            sample["standin_connections"] = stats["connections"]
            sample["max_rate"] = rate
            collected.setdefault(f"{kind}/{concurrency}/{processes}", []).append(sample)
            shutil.rmtree(state)
    for key, samples in collected.items():
        kind, concurrency, processes = key.split("/")
        ordered = sorted(samples, key=lambda s: s["middle_rate"])
        median = ordered[len(ordered) // 2]
        profiled = next((s.pop("profile") for s in samples if "profile" in s), None)
        results["variants"][key] = {
            "transport": (
                "SesTransport" + (f" x{processes} proc" if processes != "1" else "")
                if kind == "boto3"
                else "sleep 50 ms (no HTTP)"
            ),
            "kind": kind,
            "concurrency": int(concurrency),
            "processes": int(processes),
            "max_rate": median["max_rate"],
            "median_middle_rate": median["middle_rate"],
            "median_rate": statistics.median(s["rate"] for s in samples),
            "middle_rates": [s["middle_rate"] for s in samples],
            "median_run": median,
            **({"profile": profiled} if profiled else {}),
        }
    shutil.rmtree(source.parent)
    return results


# ---------------------------------------------------------------- output


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSES TARGET"


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Send benchmark, {result['date']}  ({'--quick' if result['quick'] else 'full'})",
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['implementation']} {m['python']}, "
        f"SQLite {m['sqlite']}, {m['platform']}",
        "packages: " + ", ".join(f"{name} {version}" for name, version in m["packages"].items()),
        f"source: commit {result.get('source', {}).get('commit')}"
        + (
            f", uncommitted changes in {', '.join(result['source']['pipeline_changes'])}"
            if result.get("source", {}).get("pipeline_changes")
            else ""
        ),
        f"command: {result.get('command', '')}",
        f"load average (1 min) before / after: {result['load_before']:.2f} / {result.get('load_after', 0.0):.2f}"
        + (
            "  -- busy machine: other processes compete for the cores; expect lower figures"
            if max(result["load_before"], result.get("load_after", 0.0)) > (m["usable_cores"] or 1) * 0.75
            else ""
        ),
        f"committed transaction on the temp disk (WAL): synchronous=FULL {result['commit_ms']['FULL']:.2f} ms, "
        f"NORMAL {result['commit_ms']['NORMAL']:.2f} ms",
    ]
    if "build" in result:
        b = result["build"]
        lines += [
            "",
            f"1. Per-recipient message, issue {ISSUE} ({b['message_bytes']:,}-byte message), one thread, "
            f"{b['messages']:,} distinct recipients, median of {b['runs']} runs",
            f"   {'':44} {'msg/s':>9} {'min':>9} {'max':>9} {'µs/msg':>8} {'msg/CPU-s':>10}",
        ]
        for key, label in (
            ("build", "MessageTemplate.build"),
            ("build_fixed_date", "  same, Date passed in (no now() per message)"),
            ("per_recipient", "CampaignRunner._deliver (token+build+discard)"),
        ):
            row = b[key]
            lines.append(
                f"   {label:44} {row['median_rate']:>9,.0f} {row['min_rate']:>9,.0f} {row['max_rate']:>9,.0f} "
                f"{row['us_per_msg']:>8.0f} {row['cpu_median_rate'] or 0:>10,.0f}"
            )
        lines.append(
            f"   target >= {TARGET_BUILD:,.0f} msg/s: {mark(b['per_recipient']['median_rate'] >= TARGET_BUILD)}"
        )
    if "campaign" in result:
        c = result["campaign"]
        lines += [
            "",
            f"2. Campaign engine, DiscardTransport, no rate limit, {c['subscribers']:,} subscribers, "
            f"median of {c['runs']} runs (prepare + run on a fresh copy each run)",
            f"   {'variant':24} {'msg/s':>8} {'runs':>22} {'prepare':>8} {'commits':>8} {'rows/c':>7} "
            f"{'in commit':>10} {'ms/commit':>9} {'CPU cores':>9} {'msg/CPU-s':>9}",
        ]
        for label, v in c["variants"].items():
            run, probe = v["median_run"], v["median_run"]["probe"]
            share = probe["commit_wall_s"] / run["elapsed_s"] if run["elapsed_s"] else 0
            lines.append(
                f"   {label:24} {v['median_rate']:>8,.0f} {'/'.join(f'{r:,.0f}' for r in v['rates']):>22} "
                f"{run['prepare_s']:>7.2f}s {probe['commits']:>8,} {probe['rows_per_commit']:>7.1f} "
                f"{probe['commit_wall_s']:>6.1f}s{share:>4.0%} {probe['commit_ms_each']:>9.2f} {run['cpu_cores_busy']:>9.2f} "
                f"{v['median_msg_per_cpu_s']:>9,.0f}"
            )
        first = next(iter(c["variants"].values()))
        lines.append(
            f"   target >= {TARGET_BUILD:,.0f} msg/s on one core (as shipped: {next(iter(c['variants']))}, "
            f"messages per CPU-second): {mark(first['median_msg_per_cpu_s'] >= TARGET_BUILD)}; "
            f"the wall rate waits on the ledger's fsync"
        )
        lines.append(
            "   'in commit': wall time of the main loop inside the per-round ledger transaction, share of the run;"
        )
        lines.append(
            "   'CPU cores': process CPU / wall (the median run); 'msg/CPU-s': messages per second of process CPU"
        )
    if "million" in result:
        x = result["million"]
        p = x["probe"]
        peak = x["memory"]["end_hwm_kb"] / 1024
        share = p["commit_wall_s"] / x["elapsed_s"] if x["elapsed_s"] else 0
        lines += [
            "",
            f"3. {x['subscribers']:,} subscribers, DiscardTransport, no rate limit, concurrency {x['concurrency']}, "
            f"synchronous={x['synchronous']}, in a child process",
            f"   set-up (bulk insert, not timed below): {x['setup_s']:.1f} s, database {x['db_mb']:.0f} MB",
            f"   prepare_campaign (ledger of {x['queued']:,} rows): {x['prepare_s']:.1f} s",
            f"   run: {x['handled']:,} messages in {x['elapsed_s']:.1f} s = {x['rate']:,.0f} msg/s "
            f"(middle 80 %: {x['middle_rate']:,.0f} msg/s), status {x['status']}",
            f"   ledger commits: {p['commits']:,} ({p['rows_per_commit']:.1f} rows each), {p['commit_wall_s']:.1f} s "
            f"= {share:.0%} of the run, {p['commit_ms_each']:.2f} ms each",
            f"   peak RSS of the child: {peak:.1f} MB (VmHWM; sampled max {x['peak_rss_sampled_mb']} MB; "
            f"after imports + render: {x['rss_after_render_mb']:.1f} MB)",
            "   RSS over the run (s, MB): "
            + ", ".join(f"{t:.0f}:{mb:.0f}" for t, mb in x["rss_trajectory_mb"]),
            f"   target peak RSS < {TARGET_RSS_MB:.0f} MB: {mark(peak < TARGET_RSS_MB)}",
        ]
    if "standin" in result:
        s = result["standin"]
        lines += [
            "",
            f"4. SES stand-in alone: {s['delay_ms']:.0f} ms answers, raw keep-alive clients, "
            f"{s['request_bytes']:,}-byte requests, ~{s['requests']:,} requests",
            f"   {'server':12} {'conns':>6} {'req/s':>8} {'middle':>8} {'ideal':>8} {'peak':>6} {'errors':>6}",
        ]
        for row in s.values():
            if not isinstance(row, dict):
                continue
            lines.append(
                f"   {row['impl']:12} {row['connections']:>6} {row['rate']:>8,.0f} "
                f"{row['middle_rate'] or 0:>8,.0f} {row['ideal_rate']:>8,.0f} {row['peak_in_flight']:>6} "
                f"{row['errors']:>6}"
            )
        lines.append(
            "   need > 500 req/s for the SES benchmark; 'middle' = server-side rate over the middle 80 %"
        )
    if "ses" in result:
        s = result["ses"]
        cost = s["send_cost"]
        lines += [
            "",
            f"5. SES: CampaignRunner -> stand-in ({s['standin_impl']}, {s['delay_ms']:.0f} ms answers), "
            f"{s['subscribers']:,} subscribers, median of {s['runs']} run(s)",
            f"   one SesTransport.send, one thread, no delay: {cost['issue_message_cpu_ms']:.2f} ms CPU "
            f"({cost['message_bytes']:,}-byte message), {cost['small_2kb_message_cpu_ms']:.2f} ms CPU (2 KB message)",
            f"   {'transport':22} {'workers':>7} {'max_rate':>8} {'middle':>7} {'total':>7} {'runs (middle)':>17} "
            f"{'peak':>4} {'commits':>7} {'rows/c':>6} {'in commit':>10} {'build':>7} {'send CPU':>8} "
            f"{'send wall':>9} {'CPU':>5}",
        ]
        for v in s["variants"].values():
            run, probe = v["median_run"], v["median_run"]["probe"]
            if probe is None:  # several sender processes: no in-process probe
                lines.append(
                    f"   {v['transport']:22} {v['concurrency']:>7} {v['max_rate']:>8.0f} {v['median_middle_rate']:>7,.0f} "
                    f"{v['median_rate']:>7,.0f} {'/'.join(f'{r:,.0f}' for r in v['middle_rates']):>17} "
                    f"{run['standin_peak_in_flight']:>4} {'-':>7} {'-':>6} {'-':>11} {'-':>7} {'-':>8} {'-':>9} "
                    f"{run['cpu_cores_busy']:>5.2f}"
                )
                continue
            share = probe["commit_wall_s"] / run["elapsed_s"] if run["elapsed_s"] else 0
            lines.append(
                f"   {v['transport']:22} {v['concurrency']:>7} {v['max_rate']:>8.0f} {v['median_middle_rate']:>7,.0f} "
                f"{v['median_rate']:>7,.0f} {'/'.join(f'{r:,.0f}' for r in v['middle_rates']):>17} "
                f"{run['standin_peak_in_flight'] if v['kind'] == 'boto3' else '-':>4} "
                f"{probe['commits']:>7,} {probe['rows_per_commit']:>6.1f} {probe['commit_wall_s']:>6.1f}s{share:>4.0%} "
                f"{probe['build_cpu_ms_per_msg']:>5.2f}ms {probe['send_cpu_ms_per_msg']:>6.2f}ms "
                f"{probe['send_wall_ms_per_msg']:>7.1f}ms {run['cpu_cores_busy']:>5.2f}"
            )
        best = max(
            (v["median_middle_rate"] for v in s["variants"].values() if v["kind"] == "boto3"), default=0.0
        )
        lines += [
            "   middle = msg/s recorded in the ledger over the middle 80 % of the messages; total = handled / elapsed;",
            "   peak = most requests the stand-in had in flight; build / send CPU = worker-thread CPU per message in",
            "   CampaignRunner._deliver / transport.send; send wall = wall time per send (50 ms of it is the answer",
            "   delay); CPU = sender process CPU / wall, in cores (one GIL: ~1.0 is the ceiling for Python code)",
            f"   target >= {TARGET_SES:,.0f} msg/s sustained through SesTransport: {mark(best >= TARGET_SES)} (best {best:,.0f})",
        ]
        for key, v in s["variants"].items():
            if v.get("profile"):
                lines += [
                    "",
                    f"cProfile of the SES sender, {key} (first run; profiling slows it down; "
                    "wall times of C calls that release the GIL include waiting to get it back):",
                    v["profile"],
                ]
    for part, error in result.get("errors", {}).items():
        lines += ["", f"part {part} FAILED: {error}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {','.join(PARTS)}")
    parser.add_argument("--config", type=Path, default=REPO / "newsletter.toml")
    parser.add_argument(
        "--million", type=int, help="subscribers for part 3 (default 1,000,000; --quick 200,000)"
    )
    parser.add_argument("--concurrency", type=int, help="workers for part 3 (default: [send] concurrency)")
    parser.add_argument(
        "--sync", default="FULL", choices=("FULL", "NORMAL", "OFF"), help="part 3's synchronous mode"
    )
    parser.add_argument(
        "--ses-subscribers", type=int, help="recipients for part 5 (default 10,000; --quick 3,000)"
    )
    parser.add_argument("--ses-workers", default="32,48", help="worker counts for part 5 (default 32,48)")
    parser.add_argument(
        "--ses-processes", default="1,2", help="sender process counts for part 5 (default 1,2)"
    )
    parser.add_argument(
        "--standin-impl",
        default="asyncio",
        choices=("asyncio", "threading"),
        help="stand-in server for part 5 (part 4 measures both)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the first SES run of each worker count"
    )
    parser.add_argument(
        "--tmp", type=Path, help="where the temporary state databases go (default: system temp)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON results here, after every part")
    parser.add_argument(
        "--render", type=Path, metavar="RESULT.json", help="print the table of a saved --json result"
    )
    parser.add_argument("--child-million", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_million:
        return child_million(args.child_million, args.config, args.concurrency or 8, args.sync)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0

    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    quick = args.quick
    config, rendered = load(args.config)
    concurrency = args.concurrency or config.send.concurrency
    workers = [int(w) for w in args.ses_workers.split(",") if w.strip()]
    process_counts = [int(p) for p in args.ses_processes.split(",") if p.strip()]
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "command": " ".join(
            [".venv/bin/python bench/bench_send.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": quick,
        "machine": machine(),
        "source": source_version(),
        "issue": ISSUE,
        "load_before": os.getloadavg()[0],
    }

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-send-", dir=args.tmp) as folder:
        work = Path(folder)
        result["commit_ms"] = commit_cost(work)
        million = args.million or (200_000 if quick else 1_000_000)
        ses_count = args.ses_subscribers or (3000 if quick else 10_000)
        jobs: dict[str, tuple[str, Any]] = {
            "build": (
                "1. building messages",
                lambda: bench_build(config, rendered, 3000 if quick else 10_000, 3 if quick else 5),
            ),
            "campaign": (
                "2. campaign engine with DiscardTransport",
                lambda: bench_campaign(
                    config,
                    rendered,
                    work,
                    5000 if quick else 20_000,
                    3,
                    [
                        (f"c={concurrency} FULL (shipped)", concurrency, "FULL"),
                        (f"c={concurrency} NORMAL", concurrency, "NORMAL"),
                        ("c=32 FULL", 32, "FULL"),
                    ],
                ),
            ),
            "million": (
                f"3. {million:,} subscribers in a child process",
                lambda: bench_million(work, args.config.resolve(), million, concurrency, args.sync),
            ),
            "standin": (
                "4. the SES stand-in alone",
                lambda: bench_standin(
                    request_body(config, rendered),
                    ["threading", "asyncio"],
                    [32, 48],
                    2000 if quick else 5000,
                ),
            ),
            "ses": (
                f"5. SES through the pipeline, {ses_count:,} recipients, workers {workers}",
                lambda: bench_ses(
                    config,
                    rendered,
                    work,
                    ses_count,
                    1 if quick else 3,
                    workers,
                    args.standin_impl,
                    args.profile,
                    process_counts,
                ),
            ),
        }
        for part in PARTS:
            if part not in parts:
                continue
            title, job = jobs[part]
            print(f"{title} ...", file=sys.stderr, flush=True)
            started, load_before = time.perf_counter(), os.getloadavg()[0]
            try:
                result[part] = job()
            except Exception as error:
                result.setdefault("errors", {})[part] = f"{type(error).__name__}: {error}"
                print(f"   failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            else:
                result[part]["part_seconds"] = round(time.perf_counter() - started, 1)
                result[part]["load_1min"] = [load_before, os.getloadavg()[0]]
            save()
    result["load_after"] = os.getloadavg()[0]
    save()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(table(result))
    return 1 if result.get("errors") else 0


def source_version() -> dict[str, Any]:
    """The commit measured, and whether pipeline/ had uncommitted changes (others edit it concurrently)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        return {"commit": head, "pipeline_changes": [line[3:] for line in dirty if line.strip()]}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "pipeline_changes": []}


if __name__ == "__main__":
    sys.exit(main())
