"""Golden files: the exact HTML and text each sample issue renders to, and the exact bytes of one
message (``message.eml``: :class:`MessageTemplate`'s quoted-printable splicing, headers and all).

``make golden`` (``python -m tests.golden``) rewrites them after an intended
change; review the diff before committing, it is what subscribers will see.
"""

from __future__ import annotations

import datetime as dt
import email.generator
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from pipeline.config import load_config
from pipeline.issue.render import Rendered, render_issue
from pipeline.issue.source import available_numbers, read_issue
from pipeline.send.message import MessageTemplate, recipient_for

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"


def sample_numbers() -> list[int]:
    return available_numbers(load_config(REPO / "newsletter.toml").paths.issues)


def render_outputs(number: int) -> dict[str, str]:
    config = load_config(REPO / "newsletter.toml")
    rendered = render_issue(config, read_issue(config.paths.issues, number))
    return {f"{number}.html": rendered.html, f"{number}.txt": rendered.text}


# The one message of message.eml: a small fixed issue (non-ASCII, a line longer than quoted-printable's
# 76 characters, characters that must be escaped in HTML, a link) to a fixed recipient, date and id.
MESSAGE_NAME = "message.eml"
MESSAGE_ISSUE = """\
---
number: 7
title: "Golden: ünïcödé & <angle> brackets"
date: 2026-11-23
---

Hello [there](https://example.org/path?a=1&b=2), a first paragraph with a € sign and a line long enough \
that quoted-printable must break it with a soft line break somewhere in the middle of it.

= signs, tabs\tand trailing spaces\x20\x20\x20
stay as they were.
"""
MESSAGE_SECRET = b"golden-secret-0123456789abcdefgh"
MESSAGE_DATE = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)
MESSAGE_ID = "<nl7-c1-s42@example.org>"
MESSAGE_BOUNDARY = "===============golden-boundary=="


@contextmanager
def fixed_boundary() -> Iterator[None]:
    """The MIME boundary is random (email.generator); fixed here, so the bytes can be compared."""
    with mock.patch.object(email.generator.Generator, "_make_boundary", return_value=MESSAGE_BOUNDARY):
        yield


def golden_rendered() -> Rendered:
    config = load_config(REPO / "newsletter.toml")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "7.md").write_text(MESSAGE_ISSUE, encoding="utf-8")
        return render_issue(config, read_issue(Path(folder), 7))


def golden_message() -> tuple[bytes, Rendered, dict[str, str]]:
    """message.eml's bytes, built as a campaign builds each message; the rendered issue; the recipient."""
    config = load_config(REPO / "newsletter.toml")
    rendered = golden_rendered()
    recipient = recipient_for(config, MESSAGE_SECRET, 42, "reader@example.org", "Zoë Ñuñez", MESSAGE_ID)
    with fixed_boundary():
        template = MessageTemplate(config, rendered)
    return template.build(recipient, MESSAGE_DATE), rendered, recipient.values()


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for stale in GOLDEN.glob("*.*"):
        stale.unlink()
    for number in sample_numbers():
        for name, content in render_outputs(number).items():
            (GOLDEN / name).write_text(content, encoding="utf-8")
            print(f"wrote {(GOLDEN / name).relative_to(REPO)}")
    (GOLDEN / MESSAGE_NAME).write_bytes(golden_message()[0])
    print(f"wrote {(GOLDEN / MESSAGE_NAME).relative_to(REPO)}")


if __name__ == "__main__":
    main()
