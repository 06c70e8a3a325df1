"""Corrections as the archive shows them: the errata an archived issue carries, and those made to it."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

from pipeline.config import Config
from pipeline.issue.errata import Erratum

_BLOCK_START = re.compile(r"^(\d+)([.)])")


def corrections_of(errata: list[Erratum], number: int) -> list[Erratum]:
    """Announced corrections to issue ``number``, for its archived copy."""
    return [e for e in errata if e.issue == number and not e.pending]


def correction_note(config: Config, erratum: Erratum) -> str:
    """How the archived issue's Corrections section tells where a correction was announced."""
    if erratum.stop_press is not None:
        return f"mailed to this issue's readers as a stop press on {erratum.stop_press.isoformat()}"
    number = erratum.announced_in or 0
    return f"announced in [issue {number}]({quote(config.archive_name(number))})"


def archive_text(text: str) -> str:
    """An erratum's text as one line of the archive's Markdown, unable to change the page around it.

    Line breaks become spaces (no heading, rule, quote or table can start), HTML is escaped (no
    ``<script>``, no ``<!--`` hiding the rest of the page), and a first character that could open
    a block (``#``, ``>``, ``-``, ``1.``) is escaped; inline Markdown (emphasis, links) still works.
    """
    one_line = " ".join(text.split())
    escaped = html.escape(one_line, quote=False)
    if escaped[:1] in "#>-+*=|[`~_:\\" and escaped:
        return "\\" + escaped
    return _BLOCK_START.sub(r"\1\\\2", escaped)


def errata_markdown(config: Config, carried: list[Erratum], heading: str = "##") -> str:
    items = "\n".join(
        f"- In [issue {e.issue}]({quote(config.archive_name(e.issue))}): {archive_text(e.text)}"
        for e in carried
    )
    return f"{heading} Errata\n\n{items}\n"
