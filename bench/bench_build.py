"""Time the in-process build of the large sample issue, whole and stage by stage.

    .venv/bin/python bench/bench_build.py              # issue 2 (the large sample), 30 timed runs
    .venv/bin/python bench/bench_build.py --issue 1 --runs 50 --warmup 5
    .venv/bin/python bench/bench_build.py --json       # machine-readable results on stdout
    .venv/bin/python bench/bench_build.py --profile    # also print a cProfile of the whole build

"Whole build" is ``pipeline.issue.build.build_issue``: read + parse the source, render
(Markdown, Jinja/MJML, MJML compile, CSS inlining, plain text), personalise for
the sample recipient and build the MIME message. Nothing is written to disk.
The stage split times the render stages of ``pipeline.issue.render`` one by one on
the same issue, in a separate pass of each run. The project's target is a whole
build of a 6,000-word issue under 100 ms. See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import html.parser
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a fresh clone without `pip install -e`

from pipeline.config import Config, load_config
from pipeline.errors import NewsletterError
from pipeline.issue.build import build_issue
from pipeline.issue.render import (
    compile_mjml,
    inline_css,
    inline_stylesheet,
    markdown_stage,
    parse_html,
    render_mjml,
    render_text,
    template_context,
)
from pipeline.issue.source import available_numbers, read_issue
from pipeline.send.message import html_size_as_sent, sample_as_sent

LARGE_SAMPLE = 2
TARGET_MS = 100.0
TARGET_WORDS = 6000
STAGES = ("read", "markdown", "template", "mjml", "inline_css", "text")
STAGE_LABELS = {
    "whole": "whole build (build_issue)",
    "read": "  read + parse source",
    "markdown": "  Markdown -> HTML fragments",
    "template": "  Jinja -> MJML (context + template)",
    "mjml": "  MJML compile (mjml-python)",
    "inline_css": "  CSS inlining (premailer)",
    "text": "  plain text (templating; the text renderer runs with the Markdown stage)",
    "stages_sum": "  sum of the stages",
}
PACKAGES = ("mjml-python", "premailer", "cssutils", "lxml", "markdown-it-py", "Jinja2")


# ---------------------------------------------------------------- the machine


def machine(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """The CPU, cores, Python and the versions of ``packages``: what a figure needs next to it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
    }


# ---------------------------------------------------------------- the issue


def pick_issue(config: Config, wanted: int | None) -> tuple[int, str | None]:
    """The issue to time, and a note when it is not the one asked for."""
    numbers = available_numbers(config.paths.issues)
    if wanted is not None:
        return wanted, None
    if LARGE_SAMPLE in numbers:
        return LARGE_SAMPLE, None
    if not numbers:
        sys.exit(f"error: no issues in {config.paths.issues}")
    largest = max(numbers, key=lambda n: (config.paths.issues / f"{n}.md").stat().st_size)
    note = (
        f"issues/{LARGE_SAMPLE}.md (the large sample issue) does not exist yet; "
        f"timing the largest issue available instead: issues/{largest}.md. "
        "Figures for a small issue say little about the 6,000-word target."
    )
    return largest, note


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value or "" for name, value in attrs if name == "href")


def describe(config: Config, number: int) -> dict[str, Any]:
    """Size, words and links of one build, to tell what was measured."""
    build = build_issue(config, number)
    issue, document = build.rendered.issue, build.rendered.document
    links = [link for link in document.links if not link.is_image]
    anchors = _Anchors()
    anchors.feed(build.html)
    message = sample_as_sent(config, build.rendered)
    return {
        "issue": number,
        "path": str(issue.path.relative_to(REPO) if issue.path.is_relative_to(REPO) else issue.path),
        "title": issue.title,
        "source_bytes": issue.path.stat().st_size,
        "words": len(issue.body.split()),
        "sections": len(document.sections),
        "links": len(links),
        "distinct_links": len({link.href for link in links}),
        "images": sum(link.is_image for link in document.links),
        "html_anchors": len(anchors.hrefs),
        "html_bytes": len(build.html.encode("utf-8")),
        "html_sent_bytes": html_size_as_sent(message),
        "html_budget_bytes": config.max_html_bytes,
        "mjml_bytes": len(build.rendered.mjml.encode("utf-8")),
        "text_bytes": len(build.text.encode("utf-8")),
        "eml_bytes": len(message),
    }


# ---------------------------------------------------------------- timing


class Stopwatch:
    """Wall-clock and CPU time of consecutive laps. CPU time counts this process only: when it is
    well below wall time, the process was waiting for a core that others were using."""

    def __init__(self) -> None:
        self.laps: dict[str, tuple[float, float]] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[name] = (wall - self._wall, cpu - self._cpu)
        self._wall, self._cpu = wall, cpu


def staged(config: Config, number: int) -> tuple[dict[str, tuple[float, float]], str]:
    """One render, stage by stage, as ``render_issue`` chains them.

    Returns (wall, cpu) seconds per stage, and the MJML source.
    """
    watch = Stopwatch()
    issue = read_issue(config.paths.issues, number)
    watch.lap("read")
    document = markdown_stage(config, issue)
    watch.lap("markdown")
    context = template_context(config, issue, document)
    source = render_mjml(config.paths.templates, context)
    watch.lap("template")
    compiled = compile_mjml(source)
    watch.lap("mjml")
    inline_css(parse_html(compiled), inline_stylesheet(config.paths.templates))
    watch.lap("inline_css")
    render_text(config.paths.templates, context)
    watch.lap("text")
    return watch.laps, source


def whole(config: Config, number: int) -> tuple[float, float]:
    watch = Stopwatch()
    build_issue(config, number)
    watch.lap("whole")
    return watch.laps["whole"]


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    wall = [w * 1000 for w, _ in samples]
    cpu = [c * 1000 for _, c in samples]
    return {
        "median_ms": round(statistics.median(wall), 3),
        "p90_ms": round(percentile(wall, 0.9), 3),
        "min_ms": round(min(wall), 3),
        "max_ms": round(max(wall), 3),
        "cpu_median_ms": round(statistics.median(cpu), 3),
        "cpu_p90_ms": round(percentile(cpu, 0.9), 3),
    }


def measure(config: Config, number: int, runs: int, warmup: int) -> tuple[dict[str, dict[str, float]], str]:
    for _ in range(warmup):
        whole(config, number)
        staged(config, number)
    names = ("whole", *STAGES, "stages_sum")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    source = ""
    for _ in range(runs):
        gc.collect()  # start every run with the same heap; the collector still runs inside it
        samples["whole"].append(whole(config, number))
        gc.collect()
        laps, source = staged(config, number)
        for name in STAGES:
            samples[name].append(laps[name])
        samples["stages_sum"].append(
            (sum(wall for wall, _ in laps.values()), sum(cpu for _, cpu in laps.values()))
        )
    return {name: summary(values) for name, values in samples.items()}, source


# ---------------------------------------------------------------- npx mjml


def npx_mjml(source: str, runs: int) -> dict[str, Any]:
    """Compile the same MJML with the reference (Node) compiler, if it is installed. Never downloads."""
    npx = shutil.which("npx")
    if npx is None:
        return {"available": False, "reason": "npx not on PATH"}
    # --no-install: do not fetch mjml; offline: do not even ask the registry.
    env = dict(os.environ, npm_config_offline="true", npm_config_update_notifier="false")
    command = [npx, "--no-install", "mjml"]
    try:
        probe = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, timeout=30, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"available": False, "reason": f"npx mjml --version failed: {error}"}
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        if "ENOTCACHED" in probe.stderr or "could not determine executable" in probe.stderr:
            last = "mjml is not installed for npx, and the benchmark does not download it"
        return {"available": False, "reason": last}
    version = probe.stdout.strip().replace("\n", " ")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "issue.mjml"
        path.write_text(source, encoding="utf-8")
        seconds = []
        output = ""
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run(
                [*command, "--stdout", str(path)], capture_output=True, text=True, env=env, check=False
            )
            seconds.append((time.perf_counter() - start, 0.0))
            if done.returncode != 0:
                return {"available": False, "reason": f"npx mjml failed: {done.stderr.strip()[:300]}"}
            output = done.stdout
    return {
        "available": True,
        "version": version,
        "runs": runs,
        "note": "one process per run: includes Node start-up",
        "html_bytes_before_inlining": len(output.encode("utf-8")),
        "python_html_bytes_before_inlining": len(compile_mjml(source).encode("utf-8")),
        **{key: value for key, value in summary(seconds).items() if not key.startswith("cpu")},
    }


# ---------------------------------------------------------------- profile


def profile(config: Config, number: int, runs: int, limit: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        build_issue(config, number)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write(f"cProfile of {runs} whole builds (times are totals over all runs; profiling slows it down)\n")
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


# ---------------------------------------------------------------- output


def busy(result: dict[str, Any]) -> bool:
    return max(result["load_before"], result["load_after"]) > result["machine"]["usable_cores"] * 0.75


def table(result: dict[str, Any]) -> str:
    m, d, t = result["machine"], result["issue"], result["timings"]
    lines = [
        f"Build benchmark, {result['date']}",
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['implementation']} {m['python']}, {m['platform']}",
        "packages: " + ", ".join(f"{name} {version}" for name, version in m["packages"].items()),
    ]
    if result.get("note"):
        lines.append(f"NOTE: {result['note']}")
    lines += [
        f"issue: {d['path']} ({d['title']!r})",
        f"  {d['words']:,} words (Markdown body), {d['sections']} sections, "
        f"{d['links']} links ({d['distinct_links']} distinct), {d['images']} images",
        f"  HTML part as sent {d['html_sent_bytes']:,} bytes of a {d['html_budget_bytes']:,}-byte budget "
        f"({d['html_sent_bytes'] / d['html_budget_bytes']:.0%}; {d['html_bytes']:,} decoded); MJML {d['mjml_bytes']:,}; "
        f"text {d['text_bytes']:,}; message {d['eml_bytes']:,}",
        f"runs: {result['runs']} timed after {result['warmup']} warm-up",
        "",
        f"load average (1 min) before / after: {result['load_before']:.2f} / {result['load_after']:.2f} "
        f"on {m['usable_cores']} cores"
        + ("  -- busy machine: others compete for cores and caches" if busy(result) else ""),
        "",
        f"{'':40} {'wall clock':^39} {'CPU (this process)':^19}",
        f"{'':40} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'median':>9} {'p90':>9}",
    ]
    for name in ("whole", *STAGES, "stages_sum"):
        row = t[name]
        keys = ("median_ms", "p90_ms", "min_ms", "max_ms", "cpu_median_ms", "cpu_p90_ms")
        cells = [row[key] for key in keys]
        lines.append(f"{STAGE_LABELS[name]:40} " + " ".join(f"{cell:>7.1f}ms" for cell in cells))
    median, cpu = t["whole"]["median_ms"], t["whole"]["cpu_median_ms"]
    verdict = "under" if median < TARGET_MS else "OVER"
    per_k = median / max(d["words"], 1) * 1000
    lines += [
        "",
        f"target: whole build of a {TARGET_WORDS:,}-word issue under {TARGET_MS:.0f} ms -> "
        f"median {median:.1f} ms wall ({cpu:.1f} ms CPU), {verdict} target ({per_k:.1f} ms per 1,000 words)",
    ]
    if not 0.8 * TARGET_WORDS <= d["words"] <= 1.2 * TARGET_WORDS:
        lines.append(f"  (this issue has {d['words']:,} words, not ~{TARGET_WORDS:,}: no verdict applies)")
    npx = result["npx_mjml"]
    if npx.get("available"):
        lines.append(
            f"npx mjml {npx['version']}: median {npx['median_ms']:.1f} ms, p90 {npx['p90_ms']:.1f} ms "
            f"over {npx['runs']} runs ({npx['note']}); its HTML {npx['html_bytes_before_inlining']:,} bytes "
            f"vs mjml-python {npx['python_html_bytes_before_inlining']:,} (before inlining)"
        )
    else:
        lines.append(f"npx mjml comparison: skipped ({npx['reason']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issue", type=int, help=f"issue number (default: {LARGE_SAMPLE}, the large sample)")
    parser.add_argument("--config", type=Path, default=REPO / "newsletter.toml", help="newsletter.toml")
    parser.add_argument("--runs", type=int, default=30, help="timed runs (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--npx-runs", type=int, default=5, help="runs of npx mjml, if installed (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the whole build")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    try:
        config = load_config(args.config)
        number, note = pick_issue(config, args.issue)
        details = describe(config, number)
    except NewsletterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    timings, source = measure(config, number, args.runs, args.warmup)
    load_after = os.getloadavg()[0]
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "note": note,
        "issue": details,
        "runs": args.runs,
        "warmup": args.warmup,
        "load_before": load_before,
        "load_after": load_after,
        "target": {"words": TARGET_WORDS, "whole_build_ms": TARGET_MS},
        "under_target": timings["whole"]["median_ms"] < TARGET_MS,
        "timings": timings,
        "npx_mjml": npx_mjml(source, args.npx_runs),
    }
    if args.profile:
        result["profile"] = profile(config, number, max(5, args.runs // 3))
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(table(result))
        if args.profile:
            print("\n" + result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
