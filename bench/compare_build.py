"""Build speed of this checkout against an earlier commit, measured side by side in one sitting.

    .venv/bin/python bench/compare_build.py 0b06fa9            # issues/2.md, 5 rounds
    .venv/bin/python bench/compare_build.py 0b06fa9 --rounds 9 --runs 10 --process-runs 4 --json

Machines differ, and a shared machine's speed drifts from minute to minute, so this states speed as
ratios of two checkouts measured interleaved: each round times the base, then this checkout, the same
way, and the ratios are of the medians over all rounds.

* **In-process build**: ``build_issue(config, N)`` in a child process per checkout and round (warmed up,
  then ``--runs`` timed builds), with the stage split: the time spent inside each render function
  that checkout has (``markdown_stage``, ``render_text``, ``inline_css``, ...), as a share of the build.
* **Whole process**: ``newsletter build N`` as the editor runs it (Python's start-up and imports
  included): the console script's function as that checkout's pyproject.toml names it, with bytecode
  cached as on an editor's machine, ``--process-runs`` times per round after one untimed run.

The base commit is checked out into a temporary git worktree (removed afterwards). It runs with this
checkout's virtual environment when it imports there; when it needs packages this one lacks (a
dependency removed since), the worktree gets its own, from its own pyproject.toml and constraints.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The render functions whose time the stage split reports, when a checkout has them.
STAGES = (
    "markdown_stage",
    "render_mjml",
    "compile_mjml",
    "parse_html",
    "frame_tables",
    "inline_css",
    "break_long_link_texts",
    "render_text",
)


# ---------------------------------------------------------------- the child: one checkout, one round


def child(tree: Path, number: int, runs: int, warmup: int) -> dict[str, Any]:
    """Time ``runs`` in-process builds of issue ``number`` with ``tree``'s pipeline, stage by stage."""
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    import gc

    from pipeline.config import load_config
    from pipeline.issue import build as build_module
    from pipeline.issue import render

    spent: dict[str, float] = {}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - start

        return wrapper

    for name in STAGES:  # render_issue looks these up in its module's globals at each call
        if callable(getattr(render, name, None)):
            setattr(render, name, timed(name, getattr(render, name)))
    config = load_config(tree / "newsletter.toml")
    for _ in range(warmup):
        build_module.build_issue(config, number)
    wholes: list[float] = []
    cpus: list[float] = []
    shares: dict[str, list[float]] = {}
    for _ in range(runs):
        gc.collect()
        spent.clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        build_module.build_issue(config, number)
        wholes.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        for name in STAGES:
            shares.setdefault(name, []).append(spent.get(name, 0.0) / max(cpus[-1], 1e-9))
    return {
        "build_ms": [w * 1000 for w in wholes],
        "build_cpu_ms": [c * 1000 for c in cpus],
        "stage_share": {name: statistics.median(values) for name, values in shares.items()},
        "stages_present": [name for name in STAGES if any(shares.get(name, []))],
    }


# ---------------------------------------------------------------- the parent


@contextlib.contextmanager
def base_worktree(rev: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="compare-build-"))
    tree = folder / "base"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def python_for(tree: Path, number: int) -> str:
    """This checkout's interpreter if ``tree``'s pipeline builds with it, else one made for ``tree``."""
    probe = f"from pipeline.issue.build import build_issue; from pipeline.config import load_config; build_issue(load_config('newsletter.toml'), {number})"
    here = sys.executable
    done = subprocess.run(
        [here, "-c", probe], cwd=tree, env=_env(tree), capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return here
    print(
        f"{tree.name}: does not build with this environment ({done.stderr.strip().splitlines()[-1:]});"
        " making its own .venv",
        file=sys.stderr,
    )
    subprocess.run(["make", "-C", str(tree), ".venv/.ready"], check=True, stdout=subprocess.DEVNULL)
    return str(tree / ".venv" / "bin" / "python")


def _env(tree: Path) -> dict[str, str]:
    # The checkout first on sys.path: ahead of the editable install of this checkout in the venv.
    # Bytecode is cached as on an editor's machine: with PYTHONDONTWRITEBYTECODE set (some CI images
    # and sandboxes set it), every run would compile the checkout's modules again, ~30 ms of each process.
    dropped = ("NEWSLETTER_CONFIG", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "PYTHONPATH": str(tree)}


def in_process(python: str, tree: Path, number: int, runs: int, warmup: int) -> dict[str, Any]:
    command = [python, str(Path(__file__).resolve()), "--child", str(tree), "--issue", str(number)]
    command += ["--runs", str(runs), "--warmup", str(warmup)]
    done = subprocess.run(command, cwd=tree, env=_env(tree), capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def console_script(tree: Path) -> str:
    """What ``newsletter`` runs in ``tree``: ``module:function``, as its pyproject.toml names it."""
    project = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return str(project["scripts"]["newsletter"])


def whole_process(python: str, tree: Path, number: int, runs: int) -> tuple[list[float], list[float]]:
    """``newsletter build N`` as the console script runs it, a fresh interpreter each time: wall and CPU ms."""
    module, _, function = console_script(tree).partition(":")
    command = [
        python,
        "-c",
        f"import sys; from {module} import {function}; sys.exit({function}())",
        "build",
        str(number),
    ]
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, cwd=tree, env=_env(tree), check=True, stdout=subprocess.DEVNULL)
        walls.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
    return walls, cpus


def compare(rev: str, number: int, rounds: int, runs: int, process_runs: int, warmup: int) -> dict[str, Any]:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with base_worktree(rev) as base_tree:
        sides = {"base": (base_tree, python_for(base_tree, number)), "head": (REPO, python_for(REPO, number))}
        builds: dict[str, list[float]] = {"base": [], "head": []}
        build_cpus: dict[str, list[float]] = {"base": [], "head": []}
        processes: dict[str, list[float]] = {"base": [], "head": []}
        process_cpus: dict[str, list[float]] = {"base": [], "head": []}
        shares: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for tree, python in sides.values():
            whole_process(python, tree, number, 1)  # untimed: writes each checkout's bytecode cache
        load_before = os.getloadavg()[0]
        for round_ in range(rounds):
            # Interleaved, alternating which goes first: drift in the machine's load hits both alike.
            order = ("base", "head") if round_ % 2 == 0 else ("head", "base")
            for side in order:
                tree, python = sides[side]
                result = in_process(python, tree, number, runs, warmup)
                builds[side] += result["build_ms"]
                build_cpus[side] += result["build_cpu_ms"]
                shares[side].append(result["stage_share"])
                walls, cpus = whole_process(python, tree, number, process_runs)
                processes[side] += walls
                process_cpus[side] += cpus
            print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)
        load_after = os.getloadavg()[0]
    summary: dict[str, Any] = {
        "base": rev,
        "head": head + (" (with uncommitted changes)" if dirty else ""),
        "issue": number,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load_after,
        "cores": os.cpu_count(),
    }
    for side in ("base", "head"):
        summary[side + "_build_ms"] = statistics.median(builds[side])
        summary[side + "_build_cpu_ms"] = statistics.median(build_cpus[side])
        summary[side + "_process_ms"] = statistics.median(processes[side])
        summary[side + "_process_cpu_ms"] = statistics.median(process_cpus[side])
        summary[side + "_stages"] = {
            name: statistics.median(r[name] for r in shares[side] if name in r)
            for name in STAGES
            if any(r.get(name) for r in shares[side])
        }
        summary[side + "_samples"] = {"build": len(builds[side]), "process": len(processes[side])}
    for measure in ("build", "build_cpu", "process", "process_cpu"):
        summary[measure + "_ratio"] = summary[f"head_{measure}_ms"] / summary[f"base_{measure}_ms"]
    return summary


def table(s: dict[str, Any]) -> str:
    lines = [
        f"issue {s['issue']}: head {s['head']} against base {s['base']}, {s['rounds']} interleaved rounds, "
        f"load average {s['load_before']:.1f} -> {s['load_after']:.1f} on {s['cores']} cores",
        "",
        f"{'':34}{'base':>12}{'head':>12}{'head/base':>12}",
        *(
            f"{label:34}{s[f'base_{key}_ms']:>10.1f}ms{s[f'head_{key}_ms']:>10.1f}ms{s[f'{key}_ratio']:>11.2f}x"
            for label, key in (
                ("in-process build, wall (median)", "build"),
                ("in-process build, CPU (median)", "build_cpu"),
                ("newsletter build, wall (median)", "process"),
                ("newsletter build, CPU (median)", "process_cpu"),
            )
        ),
        "",
        "CPU time is this process's (and its children's) own: on a busy machine, wall time also counts",
        "the waits for a core; compare the CPU ratios there.",
        "",
        "stage split (CPU share of the in-process build, median):",
    ]

    def cell(side: str, name: str) -> str:
        share = s[side + "_stages"].get(name)
        return f"{'-':>14}" if share is None else f"{share * s[side + '_build_cpu_ms']:>7.1f}ms {share:>4.0%}"

    for name in STAGES:
        if name in s["base_stages"] or name in s["head_stages"]:
            lines.append(f"  {name:32}{cell('base', name)}  {cell('head', name)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", default="0b06fa9", help="the base commit (default 0b06fa9)")
    parser.add_argument("--issue", type=int, default=2, help="issue number (default 2, the large sample)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--runs", type=int, default=10, help="timed in-process builds per round (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed builds first, per round (default 2)")
    parser.add_argument("--process-runs", type=int, default=4, help="`newsletter build` runs per round")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.issue, args.runs, args.warmup)))
        return 0
    result = compare(args.rev, args.issue, args.rounds, args.runs, args.process_runs, args.warmup)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
