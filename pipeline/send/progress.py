"""The campaign's progress bar (rich): sent and failed counts, rate, ETA."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from pipeline.send.delivery import Outcome


class ProgressBar:
    def __init__(self, label: str) -> None:
        self.console = Console(stderr=True)
        self.label = label
        self.sent = 0
        self.failed = 0
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sent {task.fields[sent]:,}  failed {task.fields[failed]:,}  {task.fields[rate]}/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not sys.stderr.isatty(),
        )
        self._task: TaskID | None = None

    def start(self, total: int, done: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(
            self.label, total=total, completed=done, sent=0, failed=0, rate="0"
        )

    def advance(self, outcome: Outcome) -> None:
        if outcome.kind == "sent":
            self.sent += 1
        elif outcome.kind in ("failed", "fatal"):
            self.failed += 1
        if self._task is None:
            return
        advance = 1 if outcome.kind in ("sent", "failed", "skipped") else 0
        self._progress.update(self._task, advance=advance, sent=self.sent, failed=self.failed)
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, rate=f"{speed:.0f}" if speed else "…")

    def finish(self) -> None:
        self._progress.stop()
