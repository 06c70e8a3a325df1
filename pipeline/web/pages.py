"""The subscriber web service's Jinja templates: the pages and the mails it sends, the newsletter's own
first (``<templates>/web``), the packaged ones for the rest."""

from __future__ import annotations

from pathlib import Path

import jinja2

from pipeline.config import Config
from pipeline.errors import ServeError

PACKAGED_TEMPLATES = Path(__file__).resolve().parents[1] / "email_templates" / "web"
PAGES = (
    "signup.html",
    "check_inbox.html",
    "confirm.html",
    "confirmed.html",
    "confirm_expired.html",
    "confirm_stale.html",
    "confirm_refused.html",
    "link_invalid.html",
    "unsubscribe.html",
    "unsubscribed.html",
    "rate_limited.html",
    "not_found.html",
    "confirm_email.txt",
    "confirm_email.html",
    "already_email.txt",
    "already_email.html",
)


def environment(config: Config) -> jinja2.Environment:
    """The newsletter's own web templates first (``<templates>/web``), the packaged ones for the rest."""
    environment = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(config.paths.templates / "web"),
                jinja2.FileSystemLoader(PACKAGED_TEMPLATES),
            ]
        ),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    for name in (*PAGES, "page.css"):  # a broken template stops the start, not a visitor's request
        try:
            environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise ServeError(
                f"{error.filename or name}:{error.lineno}: template error: {error.message}"
            ) from None
        except jinja2.TemplateNotFound:
            raise ServeError(f"{config.paths.templates / 'web'}: template not found: {name}") from None
    return environment
