"""Writing files so that a reader, or a crash, never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> Path:
    temporary = _written_beside(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_new(path: Path, data: bytes) -> Path:
    """Write a file that must not exist yet: FileExistsError if it does, even if it appears meanwhile
    (a hard link never replaces a file); a crash leaves nothing half-written under its name."""
    temporary = _written_beside(path, data)
    try:
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _written_beside(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file in ``path``'s folder (same file system: rename and link work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def display_path(path: Path) -> str:
    """A path as the editor would type it: relative to where they stand, when it is below."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
