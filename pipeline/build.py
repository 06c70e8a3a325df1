"""Read, render and write one issue: ``build/<N>/email.html``, ``email.txt``, ``message.eml``."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .check import Problem, check_rendered
from .config import Config
from .message import build_message, message_bytes
from .render import Rendered, render_issue, sample_recipient
from .source import read_issue


@dataclass(frozen=True)
class Build:
    rendered: Rendered
    html: str
    """The HTML as a sample recipient gets it."""
    text: str
    eml: bytes

    @property
    def html_size(self) -> int:
        return len(self.html.encode("utf-8"))


def build_issue(config: Config, number: int, now: dt.datetime | None = None) -> Build:
    issue = read_issue(config.paths.issues, number)
    rendered = render_issue(config, issue)
    recipient = sample_recipient(config)
    html, text = rendered.personalise(recipient)
    message = build_message(
        config,
        to=recipient["email"],
        subject=issue.subject,
        html=html,
        text=text,
        date=now or dt.datetime.now(dt.UTC),
    )
    return Build(rendered, html, text, message_bytes(message))


def check_build(config: Config, build: Build) -> list[Problem]:
    return check_rendered(build.rendered, build.html_size, config.max_html_bytes)


def write_build(config: Config, build: Build) -> dict[str, Path]:
    """Write the three files, each atomically: a reader never sees half a file."""
    folder = config.paths.build / str(build.rendered.issue.number)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {
        "email.html": build.html.encode("utf-8"),
        "email.txt": build.text.encode("utf-8"),
        "message.eml": build.eml,
    }
    written = {}
    for name, data in outputs.items():
        written[name] = write_atomically(folder / name, data)
    return written


def write_atomically(path: Path, data: bytes) -> Path:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
