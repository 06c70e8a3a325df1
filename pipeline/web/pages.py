"""The subscriber web service's Jinja templates: the pages and the mails it sends, the newsletter's own
first (``<templates>/web``), the packaged ones for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup
from starlette.responses import HTMLResponse

from pipeline.config import Config
from pipeline.errors import ServeError
from pipeline.send.message import sender_address
from pipeline.web.security import csp_hash

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


class Pages:
    """The templates, rendered with what every page and mail of the service shares."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.templates = environment(config)
        css = self.templates.loader.get_source(self.templates, "page.css")[0]  # type: ignore[union-attr]
        self.css = Markup(css)
        self.style_hash = csp_hash(css)
        """The one style block, as the Content-Security-Policy allows it."""
        self.prefix = urlsplit(config.public_url).path.rstrip("/")
        """Where the service sits under public_url: form actions start with it."""
        self.contact = config.reply_to or sender_address(config)

    def render(self, template: str, **values: Any) -> str:
        context = {
            "newsletter": {
                "name": self.config.name,
                "language": self.config.language,
                "postal_address": self.config.postal_address,
            },
            "css": self.css,
            "prefix": self.prefix,
            "contact": self.contact,
            "confirm_hours": f"{self.config.serve.confirm_hours:g}",
            "email": "",
            "name": "",
            "error": "",
            "name_error": "",
            **values,
        }
        return self.templates.get_template(template).render(context)

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.render(template, **values), status_code=status)
