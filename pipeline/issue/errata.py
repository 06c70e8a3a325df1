"""Corrections to sent issues, kept in ``issues/errata.yaml`` (git-tracked, editable by hand).

An erratum is pending until an issue is sent with it; from then on it belongs
to that issue (``announced_in``), so a rebuild or a resume shows the same
section and no later issue repeats it. An erratum sent as a stop press (a
correction mailed at once to the issue's readers) is announced by that mail:
``stop_press`` holds its date, and no issue carries it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import html
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ruamel.yaml.comments import CommentedSeq

from pipeline.config import Config
from pipeline.errors import ErrataError
from pipeline.files import write_atomically
from pipeline.issue.yaml12 import YamlProblem, load_yaml, round_trip_yaml
from pipeline.text_rules import FORBIDDEN_CONTROL, describe_character

ERRATA_FILE = "errata.yaml"
FIELDS = ("id", "issue", "recorded", "text", "replace", "announced_in", "stop_press")
HEADER = (
    "# Corrections to issues already sent. `newsletter errata add N --text ...` appends here;\n"
    "# you may edit entries by hand. `announced_in` is set when an issue is sent with the entry.\n"
)
# Anything shaped like a per-recipient placeholder (%%email%%): the send step would fill it in
# with each subscriber's own values, so an erratum could print every reader's address.
_PLACEHOLDER_SHAPED = re.compile(r"%%\w+%%")
_RAW_HTML = re.compile(r"<[A-Za-z!?/]")


@dataclass(frozen=True)
class Erratum:
    id: int
    issue: int
    recorded: dt.date
    text: str
    replace_old: str = ""
    replace_new: str = ""
    announced_in: int | None = None
    stop_press: dt.date | None = None
    """When the correction was mailed to the issue's readers (a stop press), if it was."""

    @property
    def pending(self) -> bool:
        """Not announced yet, by an issue or by a stop press."""
        return self.announced_in is None and self.stop_press is None

    def as_yaml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.id,
            "issue": self.issue,
            "recorded": self.recorded,
            "text": self.text,
        }
        if self.replace_old:
            entry["replace"] = {"old": self.replace_old, "new": self.replace_new}
        if self.announced_in is not None:
            entry["announced_in"] = self.announced_in
        if self.stop_press is not None:
            entry["stop_press"] = self.stop_press
        return entry


def errata_path(config: Config) -> Path:
    return config.paths.issues / ERRATA_FILE


def load_errata(config: Config) -> list[Erratum]:
    path = errata_path(config)
    if not path.exists():
        return []
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except YamlProblem as error:
        raise ErrataError(f"{path}:{error.line or '?'}: YAML error: {error.message}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ErrataError(f"{path}: cannot read: {error}") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ErrataError(f"{path}: must be a list of entries ('- id: 1 ...')")
    errata = [_entry(path, index, item) for index, item in enumerate(raw, start=1)]
    seen: set[int] = set()
    for erratum in errata:
        if erratum.id in seen:
            raise ErrataError(f"{path}: entry {erratum.id}: duplicate id")
        seen.add(erratum.id)
    return errata


def text_problem(value: str, *, replacing: str | None = None) -> str | None:
    """Why ``value`` may not be an erratum's text (or, ``replacing`` the old text, its new one), or None.

    Errata reach every later email and the archive: a control character breaks every later
    build, a placeholder would be filled with each reader's own address, and raw HTML or a
    line break in a replacement would change the archived page's structure.
    """
    found = FORBIDDEN_CONTROL.search(value)
    if found:
        return (
            f"{describe_character(found.group())} at character {found.start() + 1} is not allowed; delete it"
        )
    placeholder = _PLACEHOLDER_SHAPED.search(value)
    if placeholder:
        return (
            f"{placeholder.group()!r} is a per-recipient placeholder and would be filled with each "
            "reader's own values; write it differently"
        )
    if replacing is not None and _RAW_HTML.search(value):
        return "raw HTML would change the archived page; write it as text"
    if replacing is not None and "\n" in value and "\n" not in replacing:
        return "a line break would change the archived page; keep it on one line"
    return None


def _entry(path: Path, index: int, item: Any) -> Erratum:
    def fail(message: str, where: tuple[int, int] | None = None) -> ErrataError:
        has_id = isinstance(item, dict) and "id" in item
        name = f"entry {item['id']}" if has_id else f"entry number {index} in the list"
        at = f"{path}:{where[0] + 1}:{where[1] + 1}" if where else str(path)
        return ErrataError(f"{at}: {name}: {message}")

    if not isinstance(item, dict):
        raise fail("must be a mapping with id, issue, recorded, text")
    for key in item:
        if key not in FIELDS:
            raise fail(f"unknown field {key!r} (known: {', '.join(FIELDS)})")
    for key in ("id", "issue"):
        if isinstance(item.get(key), bool) or not isinstance(item.get(key), int) or item[key] < 1:
            raise fail(f"{key} must be a positive whole number")
    if not isinstance(item.get("text"), str) or not item["text"].strip():
        raise fail("text must be a non-empty string")
    problem = text_problem(item["text"])
    if problem:
        raise fail(f"text: {problem}", _value_position(item, "text"))
    recorded = item.get("recorded")
    if isinstance(recorded, dt.datetime) or not isinstance(recorded, dt.date):
        raise fail("recorded must be a date (YYYY-MM-DD)")
    announced = item.get("announced_in")
    if announced is not None and (
        isinstance(announced, bool) or not isinstance(announced, int) or announced <= item["issue"]
    ):
        raise fail("announced_in must be the number of a later issue")
    stop_press = item.get("stop_press")
    if stop_press is not None and (
        isinstance(stop_press, dt.datetime) or not isinstance(stop_press, dt.date)
    ):
        raise fail("stop_press must be the date the correction was mailed (YYYY-MM-DD)")
    old = new = ""
    if "replace" in item:
        replace = item["replace"]
        if (
            not isinstance(replace, dict)
            or set(replace) != {"old", "new"}
            or not all(isinstance(v, str) for v in replace.values())
            or not replace["old"]
        ):
            raise fail("replace must be a mapping with non-empty 'old' and a string 'new' (quote them)")
        old, new = str(replace["old"]), str(replace["new"])
        for key, value, replacing in (("old", old, None), ("new", new, old)):
            problem = text_problem(value, replacing=replacing)
            if problem:
                raise fail(f"replace {key}: {problem}", _value_position(replace, key))
    return Erratum(
        int(item["id"]), int(item["issue"]), recorded, item["text"].strip(), old, new, announced, stop_press
    )


def _value_position(mapping: Any, key: str) -> tuple[int, int] | None:
    """Where ``key``'s value starts in the file (0-based line, column), as ruamel recorded it."""
    try:
        line, column = mapping.lc.value(key)
        return int(line), int(column)
    except (AttributeError, KeyError, TypeError):
        return None


@contextmanager
def _locked(config: Config) -> Iterator[None]:
    """One writer at a time: an `errata add` racing a campaign start must not lose an entry."""
    config.paths.state.mkdir(parents=True, exist_ok=True)
    with (config.paths.state / "errata.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _edit(config: Config, change: Callable[[CommentedSeq], None]) -> None:
    """Change the file in place, round trip: the editor's comments and layout survive."""
    path = errata_path(config)
    yaml_rt = round_trip_yaml()
    loaded = yaml_rt.load(path.read_text(encoding="utf-8")) if path.exists() else None
    data = CommentedSeq() if loaded is None else loaded
    change(data)
    buffer = io.StringIO()
    yaml_rt.dump(data, buffer)
    # A new file, or one with comments only (as `newsletter init` writes it): the header goes first.
    text = HEADER + buffer.getvalue() if loaded is None else buffer.getvalue()
    write_atomically(path, text.encode("utf-8"))


def check_request(text: str, replace: tuple[str, str] | None, issue: int, source_body: str) -> None:
    """Refuse an ``errata add`` request that could not be recorded, before anything is done."""
    if not text.strip():
        raise ErrataError("--text must not be empty")
    for option, value, replacing in (
        ("--text", text, None),
        *(
            (("--replace OLD", replace[0], None), ("--replace NEW", replace[1], replace[0]))
            if replace
            else ()
        ),
    ):
        problem = text_problem(value, replacing=replacing)
        if problem:
            raise ErrataError(f"{option}: {problem}")
    if replace and replace[0] not in source_body:
        raise ErrataError(f"--replace: {replace[0]!r} does not occur in issue {issue}")


def new_erratum(
    errata: list[Erratum],
    issue: int,
    text: str,
    replace: tuple[str, str] | None,
    stop_press: dt.date | None = None,
) -> Erratum:
    """The erratum ``errata add`` would record next (recorded today), not written yet."""
    return Erratum(
        id=max((e.id for e in errata), default=0) + 1,
        issue=issue,
        recorded=dt.date.today(),
        text=text.strip(),
        replace_old=replace[0] if replace else "",
        replace_new=replace[1] if replace else "",
        stop_press=stop_press,
    )


def add_erratum(
    config: Config,
    issue: int,
    text: str,
    replace: tuple[str, str] | None,
    source_body: str,
    *,
    stop_press: dt.date | None = None,
) -> Erratum:
    check_request(text, replace, issue, source_body)
    with _locked(config):
        erratum = new_erratum(load_errata(config), issue, text, replace, stop_press)
        _edit(config, lambda data: data.append(erratum.as_yaml()))
    return erratum


def errata_for(errata: list[Erratum], number: int, *, started: bool) -> list[Erratum]:
    """What issue ``number`` carries: what it announced, plus, until it is sent, every pending one."""
    carried = [e for e in errata if e.announced_in == number]
    if not started:
        carried += [e for e in errata if e.pending and e.issue < number]
    return carried


def mark_announced(config: Config, number: int, ids: list[int]) -> None:
    if not ids:
        return
    wanted = set(ids)

    def mark(data: CommentedSeq) -> None:
        for item in data:
            if isinstance(item, dict) and item.get("id") in wanted and item.get("announced_in") is None:
                item["announced_in"] = number

    with _locked(config):
        load_errata(config)  # refuse to edit a file that does not validate
        _edit(config, mark)


_BLOCK_START = re.compile(r"^(\d+)([.)])")


def archive_text(text: str) -> str:
    """An erratum's text as one line of Markdown, unable to change the page around it.

    Line breaks become spaces (no heading, rule, quote or table can start), HTML is escaped (no
    ``<script>``, no ``<!--`` hiding the rest of the page), and a first character that could open
    a block (``#``, ``>``, ``-``, ``1.``) is escaped; inline Markdown (emphasis, links) still works.
    """
    one_line = " ".join(text.split())
    escaped = html.escape(one_line, quote=False)
    if escaped[:1] in "#>-+*=|[`~_:\\" and escaped:
        return "\\" + escaped
    return _BLOCK_START.sub(r"\1\\\2", escaped)


def errata_markdown(config: Config, carried: list[Erratum], heading: str = "##") -> str:
    """The Errata section, in the email and in the archive copy alike (the links are relative to the
    archive, as an archived issue's own links are; the email resolves them against it)."""
    items = "\n".join(
        f"- In [issue {e.issue}]({quote(config.archive_name(e.issue))}): {archive_text(e.text)}"
        for e in carried
    )
    return f"{heading} Errata\n\n{items}\n"
