"""Read, render and write one issue: ``build/<N>/email.html``, ``email.txt``, ``message.eml``."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.issue.errata import errata_for, errata_markdown, load_errata
from pipeline.issue.render import Rendered, render_issue, sample_recipient
from pipeline.issue.source import read_issue


@dataclass(frozen=True)
class Build:
    rendered: Rendered
    html: str
    """The HTML as a sample recipient gets it."""
    text: str
    errata_ids: list[int] = field(default_factory=list)
    """The errata this issue carries; marked announced when its campaign starts."""


def build_issue(config: Config, number: int, *, pinned: bool = False) -> Build:
    """Render issue ``number`` for the sample recipient.

    ``pinned``: the issue's campaign exists, so its content is fixed: it carries the errata it
    announced and no later ones. Whoever asks knows the campaign state (``send.campaign_state``);
    the source stage does not read the ledger.
    """
    issue = read_issue(config.paths.issues, number)
    carried = errata_for(load_errata(config), number, started=pinned)
    rendered = render_issue(config, issue, after_intro=[errata_markdown(config, carried)] if carried else [])
    html, text = rendered.personalise(sample_recipient(config))
    return Build(rendered, html, text, [e.id for e in carried])
