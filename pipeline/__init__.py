"""Newsletter publishing pipeline: Markdown issue -> responsive email -> subscribers -> archive.

The library behind the ``newsletter`` command, usable on its own::

    from pipeline import load_config, build_issue, check_issue, send_issue, SendOptions

    config = load_config("newsletter.toml")
    result = check_issue(config, 18)            # build + offline checks + links over HTTP
    summary = send_issue(config, result.build, SendOptions(), confirm=lambda *_: True)

Each stage is a package with its own ``__all__``: ``pipeline.issue`` (source and render),
``pipeline.check``, ``pipeline.send``, ``pipeline.archive``, with ``pipeline.audience``,
``pipeline.events`` and ``pipeline.web`` beside them; ``pipeline.errors`` draws the error tree.
Names are imported when first used, so ``import pipeline`` costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.archive.publish import publish_archive
    from pipeline.check.gate import CheckResult, check_issue
    from pipeline.config import Config, load_config
    from pipeline.errors import NewsletterError
    from pipeline.issue.build import Build, build_issue
    from pipeline.publish import SendOptions, send_issue, send_test, write_build

__version__ = "0.1.0"

__all__ = [
    "Build",
    "CheckResult",
    "Config",
    "NewsletterError",
    "SendOptions",
    "build_issue",
    "check_issue",
    "load_config",
    "publish_archive",
    "send_issue",
    "send_test",
    "write_build",
]
__getattr__, __dir__ = lazy_exports(
    __name__, __all__, ("config", "errors", "issue.build", "check.gate", "publish", "archive.publish")
)
