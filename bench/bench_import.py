"""How long a big `subscribers import` keeps other writers waiting.

    .venv/bin/python bench/bench_import.py                  # 200,000 rows
    .venv/bin/python bench/bench_import.py --rows 1200000
    .venv/bin/python bench/bench_import.py --pipeline /path/to/an/older/checkout   # the "before" figure

An importer process (``import_csv`` on a fresh state database, as ``newsletter subscribers import``
runs it) imports a CSV of ``--rows`` new addresses. Meanwhile this process plays the web service's
unsubscribe: every 50 ms a write transaction of one row, on its own connection with the same 30 s busy
timeout ``open_db`` sets, timing how long it waited for the write lock. The longest wait is the longest
the import held the lock. ``--pipeline`` runs the importer from another checkout (e.g. one before
batched imports), whose schema this script does not touch: the probe uses plain sqlite3.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTER = (
    "import sys; from pathlib import Path; from pipeline.db import open_db;"
    " from pipeline.audience.subscribers import import_csv;"
    " r = import_csv(open_db(Path(sys.argv[1])), Path(sys.argv[2])); print(r.added, r.unchanged)"
)


def run_importer(pipeline: Path, state: Path, csv_file: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(pipeline.resolve())}
    return subprocess.Popen(
        [sys.executable, "-c", IMPORTER, str(state), str(csv_file)],
        env=env,
        cwd=state.parent,  # not this checkout: `python -c` imports from its working folder first
        stdout=subprocess.PIPE,
        text=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pipeline", type=Path, default=REPO, help="checkout whose pipeline imports")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        state, small, big = Path(folder) / "state", Path(folder) / "probe.csv", Path(folder) / "big.csv"
        small.write_text("email\nprobe@example.org\n", encoding="utf-8")
        big.write_text(
            "email,name\n" + "".join(f"reader{n}@example.org,Reader {n}\n" for n in range(args.rows)),
            encoding="utf-8",
        )
        if run_importer(args.pipeline, state, small).wait() != 0:
            sys.exit("the importer failed on a one-row file")
        probe = sqlite3.connect(state / "newsletter.sqlite3", timeout=30, isolation_level=None)
        load = os.getloadavg()[0]
        started = time.monotonic()
        importer = run_importer(args.pipeline, state, big)
        waits: list[float] = []
        timeouts = 0
        while importer.poll() is None:
            before = time.monotonic()
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked for longer than the 30 s timeout: what users met
                waits.append(time.monotonic() - before)
                timeouts += 1
                continue
            waits.append(time.monotonic() - before)
            probe.execute("UPDATE subscribers SET name = name WHERE email = 'probe@example.org'")
            probe.execute("COMMIT")
            time.sleep(0.05)
        took = time.monotonic() - started
        if importer.returncode != 0:
            sys.exit("the importer failed")
        waits.sort()
        print(f"pipeline: {args.pipeline}")
        print(
            f"rows: {args.rows:,}; import took {took:.1f} s ({args.rows / took:,.0f} rows/s); load before {load:.1f}"
        )
        print(
            f"write-lock waits ({len(waits)} probes): longest {waits[-1] * 1000:,.0f} ms,"
            f" p99 {waits[int(len(waits) * 0.99)] * 1000:,.0f} ms, median {statistics.median(waits) * 1000:,.1f} ms;"
            f" {timeouts} gave up after 30 s with 'database is locked'"
        )


if __name__ == "__main__":
    main()
