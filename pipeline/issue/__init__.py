"""The source stage: an issue file (with the errata recorded against earlier issues) read, parsed and rendered into email HTML and text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.issue.build import Build, build_issue
    from pipeline.issue.errata import Erratum, add_erratum, errata_for, load_errata, mark_announced
    from pipeline.issue.markdown import Document, Link, render_markdown
    from pipeline.issue.render import Rendered, render_issue
    from pipeline.issue.source import Issue, available_numbers, issue_path, parse_issue, read_issue

__all__ = [
    "Build",
    "Document",
    "Erratum",
    "Issue",
    "Link",
    "Rendered",
    "add_erratum",
    "available_numbers",
    "build_issue",
    "errata_for",
    "issue_path",
    "load_errata",
    "mark_announced",
    "parse_issue",
    "read_issue",
    "render_issue",
    "render_markdown",
]
__getattr__, __dir__ = lazy_exports(__name__, __all__, ("source", "errata", "markdown", "render", "build"))
