"""What Linux's /proc says about a process: for waiting on a process state instead of sleeping."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def pending_signals(pid: int) -> set[int]:
    """Signals sent to ``pid`` that it has not yet taken (thread and process-wide); empty if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return set()
    mask = 0
    for line in text.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask |= int(line.split()[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a killed child is a zombie until its parent reaps it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def holders(path: Path) -> list[int]:
    """Processes that have ``path`` open (any file descriptor), other than this one."""
    target = os.path.realpath(path)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") == target:
                    found.append(int(name))
                    break
            except OSError:
                continue
    return found


__all__ = ["holders", "is_running", "pending_signals", "signal"]
