"""The archive stage: each sent issue as Markdown for GitHub, with an index and an Atom feed, corrected by its errata and pushed to a git remote."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.archive.corrections import corrections_of
    from pipeline.archive.markdown import Entry, archive_issue, archived_documents, atom_feed, write_index
    from pipeline.archive.mirror import SyncResult, sync_archive
    from pipeline.archive.publish import publish_archive

__all__ = [
    "Entry",
    "SyncResult",
    "archive_issue",
    "archived_documents",
    "atom_feed",
    "corrections_of",
    "publish_archive",
    "sync_archive",
    "write_index",
]
__getattr__, __dir__ = lazy_exports(__name__, __all__, ("markdown", "corrections", "mirror", "publish"))
