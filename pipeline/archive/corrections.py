"""Corrections as the archive shows them: the errata an archived issue carries, and those made to it."""

from __future__ import annotations

from pipeline.issue.errata import Erratum, errata_markdown

__all__ = ["corrections_of", "errata_markdown"]


def corrections_of(errata: list[Erratum], number: int) -> list[Erratum]:
    """Announced corrections to issue ``number``, for its archived copy."""
    return [e for e in errata if e.issue == number and e.announced_in is not None]
