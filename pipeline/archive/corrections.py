"""Corrections as the archive shows them: the errata an archived issue carries, and those made to it."""

from __future__ import annotations

from urllib.parse import quote

from pipeline.config import Config
from pipeline.issue.errata import Erratum


def corrections_of(errata: list[Erratum], number: int) -> list[Erratum]:
    """Announced corrections to issue ``number``, for its archived copy."""
    return [e for e in errata if e.issue == number and e.announced_in is not None]


def errata_markdown(config: Config, carried: list[Erratum], heading: str = "##") -> str:
    items = "\n".join(
        f"- In [issue {e.issue}]({quote(config.archive_name(e.issue))}): {e.text}" for e in carried
    )
    return f"{heading} Errata\n\n{items}\n"
