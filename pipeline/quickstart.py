"""``newsletter init DIR``: start a newsletter of one's own in an empty folder, as ``mkdocs new`` does
for a site. The folder gets a ``newsletter.toml`` from the editor's answers, a first issue, an empty
``issues/errata.yaml``, a copy of the package's default templates (theirs to edit), a ``.gitignore``
and a ``Makefile`` with the everyday commands; ``newsletter build 1`` works there straight away.

The default templates are the repository's ``email_templates/``: a wheel carries them as
``pipeline/_defaults/email_templates`` (``setup.py`` copies them in at build time), a source checkout
or an editable install reads them where they are. So there is one copy to edit.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.config import CONFIG_NAME, KEYS, Invalid
from pipeline.errors import QuickstartError
from pipeline.files import write_new
from pipeline.issue.errata import ERRATA_FILE, HEADER
from pipeline.issue.source import issue_path

PACKAGED_TEMPLATES = Path(__file__).parent / "_defaults" / "email_templates"
CHECKOUT_TEMPLATES = Path(__file__).resolve().parent.parent / "email_templates"
_GITHUB = re.compile(
    r"^(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)([\w.-]+)/([\w.-]+?)(?:\.git)?/?$"
)


def default_templates() -> Path:
    """The package's own templates: inside the installed package, or beside it in a checkout."""
    for folder in (PACKAGED_TEMPLATES, CHECKOUT_TEMPLATES):
        if (folder / "issue.mjml.j2").is_file():
            return folder
    raise QuickstartError(
        f"the default templates are missing from the installed package ({PACKAGED_TEMPLATES}): reinstall it"
    )


@dataclass(frozen=True)
class Answers:
    """What ``init`` asks the editor (each field's option and question are in :data:`QUESTIONS`)."""

    name: str
    sender: str
    postal_address: str
    public_url: str
    archive_remote: str = ""
    archive_url: str = ""
    """Where the archive is read; empty: derived from a GitHub remote, else public_url + /archive."""


QUESTIONS = {
    "name": ("--name", "newsletter.name", "Newsletter name"),
    "sender": ("--from", "newsletter.from", "Sender, as 'Name <address>'"),
    "postal_address": (
        "--postal-address",
        "newsletter.postal_address",
        "Postal address (printed in every issue)",
    ),
    "public_url": ("--public-url", "newsletter.public_url", "Public URL of the sign-up pages (https://...)"),
    "archive_remote": ("--archive-remote", "archive.remote", "Archive git remote (empty: keep it local)"),
    "archive_url": (
        "--archive-url",
        "newsletter.archive_base_url",
        "Where the archive is read (https://...)",
    ),
}
OPTIONAL = ("archive_remote", "archive_url")


def check_answer(field: str, value: str) -> str:
    """The answer as newsletter.toml will hold it, checked as loading the config will check it."""
    flag, location, _ = QUESTIONS[field]
    value = value.strip()
    if not value:
        if field in OPTIONAL:
            return ""
        raise QuickstartError(f"{flag} must not be empty")
    spec = next(k for k in KEYS if k.location == location)
    try:
        checked = spec.check(value) if spec.check else value
    except Invalid as invalid:
        raise QuickstartError(f"{flag} {invalid}") from None
    return str(checked)


def archive_url_for(remote: str, public_url: str) -> str:
    """Where a reader browses the archive: a GitHub remote's page, or the public site's /archive."""
    match = _GITHUB.match(remote)
    if match:
        return f"https://github.com/{match.group(1)}/{match.group(2)}/blob/main"
    return f"{public_url.rstrip('/')}/archive"


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string: quotes, backslashes and control characters escaped.
    return json.dumps(value, ensure_ascii=False)


def config_text(answers: Answers) -> str:
    archive_url = answers.archive_url or archive_url_for(answers.archive_remote, answers.public_url)
    return f"""\
# {answers.name}: configuration. `newsletter config show` prints every key, its value and its source.
# Relative paths resolve against this file's folder.

[newsletter]
name = {_toml(answers.name)}
from = {_toml(answers.sender)}
postal_address = {_toml(answers.postal_address)}
public_url = {_toml(answers.public_url)}      # the sign-up and unsubscribe pages (`newsletter serve`)
archive_base_url = {_toml(archive_url)}  # where readers browse the archive
# send_day = "monday"                  # `newsletter new` dates the next issue on this weekday
# title_pattern = "{{name}} #{{number}}"  # the title `newsletter new` gives an issue

[archive]
remote = {_toml(answers.archive_remote)}  # git URL or path of a bare repository; empty: local only
branch = "main"

[transport]
# "maildir" writes every message into outbox/ (open it in a mail client); "smtp" or "ses" sends for real.
kind = "maildir"
"""


def first_issue_text(name: str, today: dt.date) -> str:
    title = f"{name} #1"
    return f"""\
---
number: 1
title: {_toml(title)}
date: {today.isoformat()}
---

Welcome to the first issue of {name}. This opening note is where you say what
the newsletter is about and what readers can expect from it.

## News

- [A link worth reading](https://example.org/) and a line on why it matters.

## And finally

Replies reach the editor: tell us what we missed.
"""


MAKEFILE = """\
# The everyday commands; `newsletter --help` lists them all. ISSUE defaults to 1: make build ISSUE=2
NEWSLETTER ?= newsletter
ISSUE ?= 1

.DEFAULT_GOAL := help
.PHONY: help new build check preview send status serve welcome

help: ## List the targets
\t@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\\n", $$1, $$2}'

new: ## Start the next issue: issues/<next number>.md, dated and with the last issue's sections
\t$(NEWSLETTER) new

build: ## Render issue ISSUE into build/ISSUE/ (email.html, email.txt, message.eml)
\t$(NEWSLETTER) build $(ISSUE)

check: ## Validate issue ISSUE and its links; fail on what would break it in an inbox
\t$(NEWSLETTER) check $(ISSUE)

preview: ## Serve issue ISSUE on 127.0.0.1:8000, reloading on every save
\t$(NEWSLETTER) preview $(ISSUE)

send: ## Check issue ISSUE, then send it to every active subscriber
\t$(NEWSLETTER) send $(ISSUE)

status: ## The progress of issue ISSUE's campaign
\t$(NEWSLETTER) status $(ISSUE)

serve: ## The subscriber web service: sign-up, confirmation, unsubscribe
\t$(NEWSLETTER) serve

welcome: ## Send a test copy of the welcome mail: make welcome TO=you@example.org
\t@test -n "$(TO)" || { echo 'usage: make welcome TO=address'; exit 2; }
\t$(NEWSLETTER) welcome --to "$(TO)"
"""

GITIGNORE = "build/\nstate/\noutbox/\n"


def planned_files(answers: Answers, today: dt.date) -> dict[Path, bytes]:
    """Every file of the new folder, relative to it, with its content."""
    files = {
        Path(CONFIG_NAME): config_text(answers),
        issue_path(Path("issues"), 1): first_issue_text(answers.name, today),
        Path("issues") / ERRATA_FILE: HEADER,
        Path("Makefile"): MAKEFILE,
        Path(".gitignore"): GITIGNORE,
    }
    planned = {path: text.encode("utf-8") for path, text in files.items()}
    templates = default_templates()
    for source in sorted(templates.rglob("*")):
        relative = source.relative_to(templates)
        if source.is_file() and not any(
            part.startswith(".") or part == "__pycache__" for part in relative.parts
        ):
            planned[Path("email_templates") / relative] = source.read_bytes()
    return planned


def init_newsletter(
    folder: Path, answers: Answers, *, force: bool = False, today: dt.date | None = None
) -> tuple[list[Path], list[Path]]:
    """Write the new newsletter into ``folder``; returns the files written and those kept as they were.

    A folder with anything in it is refused unless ``force``; even then no file is overwritten."""
    answers = Answers(
        **{spec.name: check_answer(spec.name, getattr(answers, spec.name)) for spec in fields(Answers)}
    )
    if folder.exists() and not folder.is_dir():
        raise QuickstartError(f"{folder}: not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise QuickstartError(
            f"{folder}: the folder is not empty; --force adds the missing files (it never overwrites one)"
        )
    planned = planned_files(answers, today or dt.date.today())
    tomllib.loads(planned[Path(CONFIG_NAME)].decode("utf-8"))  # a quoting bug must not reach the editor
    written, kept = [], []
    for relative, data in planned.items():
        try:
            written.append(write_new(folder / relative, data))
        except FileExistsError:
            kept.append(folder / relative)
    return written, kept
