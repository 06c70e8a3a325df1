"""Publish the archive: write the issue's Markdown (and the copies its errata corrected), push it."""

from __future__ import annotations

from pipeline.archive.markdown import archive_issue
from pipeline.archive.mirror import sync_archive
from pipeline.config import Config


def publish_archive(config: Config, number: int) -> str:
    """Write the issue (and those its errata corrected) into the archive and push it."""
    written = archive_issue(config, number)
    result = sync_archive(config, f"Archive issue {number}")
    where = f"{len(written)} file(s) in {config.paths.archive}"
    if result is None:
        return f"{where} (archive.remote not set: local only)"
    target = f"{config.archive_remote} ({config.archive_branch})"
    pushed = f"pushed to {target}" if result.pushed else f"{target} already up to date"
    merged = "; merged the changes made there" if result.merged_remote else ""
    return f"{where}, {pushed}{merged}"
