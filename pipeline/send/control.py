"""Who may send an issue, and when a send must stop: the per-issue lock and the stop signals."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import CampaignError


@contextmanager
def campaign_lock(state_dir: Path, issue: int, kind: str = "") -> Iterator[None]:
    """One sender per issue (and ``kind``: "stop-press") at a time; the OS drops the lock if the process dies."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = _lock_path(state_dir, issue, kind)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CampaignError(
                f"issue {issue}{' ' + kind if kind else ''} is being sent by another process; "
                f"`newsletter status {issue}` shows its progress"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # no pid: `status` knows nobody is sending


def _lock_path(state_dir: Path, issue: int, kind: str) -> Path:
    return state_dir / f"send-{issue}{'-' + kind if kind else ''}.lock"


def is_locked(state_dir: Path, issue: int, kind: str = "") -> bool:
    """Whether a send of ``issue`` is running, without touching the lock (a starting send must get it)."""
    try:
        pid = int(_lock_path(state_dir, issue, kind).read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_stop_signals(signals: tuple[signal.Signals, ...], first: Callable[[], None]) -> Callable[[], None]:
    """On the first of ``signals``, call ``first`` (on the main thread, between two bytecodes: it
    must take no lock); on the second, end the process at once, as a crash would: committed rows
    stand, rows in flight are "unknown". Returns what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in signals}
    stopping = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            os.write(2, b"\nstopped at once; run `newsletter send` again to resume\n")
            os._exit(130)
        stopping = True
        first()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        if stopping:
            # Stopping already: the process is on its way out, and a second Ctrl-C that lands while
            # it prints the summary must still mean "now", not a KeyboardInterrupt.
            return
        for sig, action in previous.items():
            signal.signal(sig, action)

    return restore
