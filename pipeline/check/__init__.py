"""The send gate: what would break an issue in an inbox (offline checks, links over HTTP), and the archive's link report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.check.content import Problem, check_rendered
    from pipeline.check.gate import CheckResult, check_build, check_issue
    from pipeline.check.links import LinkResult, check_urls
    from pipeline.check.report import check_archive_links, check_issue_links

__all__ = [
    "CheckResult",
    "LinkResult",
    "Problem",
    "check_archive_links",
    "check_build",
    "check_issue",
    "check_issue_links",
    "check_rendered",
    "check_urls",
]
__getattr__, __dir__ = lazy_exports(__name__, __all__, ("content", "gate", "links", "report"))
