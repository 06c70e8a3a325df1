"""Corrections as the archive shows them: the errata an archived issue carries, and those made to it."""

from __future__ import annotations

from urllib.parse import quote

from pipeline.config import Config
from pipeline.issue.errata import Erratum, archive_text, errata_markdown

__all__ = ["archive_text", "correction_note", "corrections_of", "errata_markdown"]


def corrections_of(errata: list[Erratum], number: int) -> list[Erratum]:
    """Announced corrections to issue ``number``, for its archived copy."""
    return [e for e in errata if e.issue == number and not e.pending]


def correction_note(config: Config, erratum: Erratum) -> str:
    """How the archived issue's Corrections section tells where a correction was announced."""
    if erratum.stop_press is not None:
        return f"mailed to this issue's readers as a stop press on {erratum.stop_press.isoformat()}"
    number = erratum.announced_in or 0
    return f"announced in [issue {number}]({quote(config.archive_name(number))})"
