"""Corrections to sent issues, kept in ``issues/errata.yaml`` (git-tracked, editable by hand).

An erratum is pending until an issue is sent with it; from then on it belongs
to that issue (``announced_in``), so a rebuild or a resume shows the same
section and no later issue repeats it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import html
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ruamel.yaml.comments import CommentedSeq

from pipeline.config import Config
from pipeline.errors import ErrataError
from pipeline.files import write_atomically

ERRATA_FILE = "errata.yaml"
FIELDS = ("id", "issue", "recorded", "text", "replace", "announced_in")
HEADER = (
    "# Corrections to issues already sent. `newsletter errata add N --text ...` appends here;\n"
    "# you may edit entries by hand. `announced_in` is set when an issue is sent with the entry.\n"
)


@dataclass(frozen=True)
class Erratum:
    id: int
    issue: int
    recorded: dt.date
    text: str
    replace_old: str = ""
    replace_new: str = ""
    announced_in: int | None = None

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
        return entry


def errata_path(config: Config) -> Path:
    return config.paths.issues / ERRATA_FILE


def load_errata(config: Config) -> list[Erratum]:
    path = errata_path(config)
    if not path.exists():
        return []
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else "?"
        raise ErrataError(f"{path}:{line}: YAML error: {error.problem}") from None
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as error:
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


def _entry(path: Path, index: int, item: Any) -> Erratum:
    def fail(message: str) -> ErrataError:
        has_id = isinstance(item, dict) and "id" in item
        name = f"entry {item['id']}" if has_id else f"entry number {index} in the list"
        return ErrataError(f"{path}: {name}: {message}")

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
    recorded = item.get("recorded")
    if isinstance(recorded, dt.datetime) or not isinstance(recorded, dt.date):
        raise fail("recorded must be a date (YYYY-MM-DD)")
    announced = item.get("announced_in")
    if announced is not None and (
        isinstance(announced, bool) or not isinstance(announced, int) or announced <= item["issue"]
    ):
        raise fail("announced_in must be the number of a later issue")
    old = new = ""
    if "replace" in item:
        replace = item["replace"]
        if (
            not isinstance(replace, dict)
            or set(replace) != {"old", "new"}
            or not all(isinstance(v, str) for v in replace.values())
            or not replace["old"]
        ):
            raise fail("replace must be a mapping with non-empty 'old' and a string 'new'")
        old, new = replace["old"], replace["new"]
    return Erratum(item["id"], item["issue"], recorded, item["text"].strip(), old, new, announced)


@contextmanager
def _locked(config: Config) -> Iterator[None]:
    """One writer at a time: an `errata add` racing a campaign start must not lose an entry."""
    config.paths.state.mkdir(parents=True, exist_ok=True)
    with (config.paths.state / "errata.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _edit(config: Config, change: Callable[[CommentedSeq], None]) -> None:
    """Change the file in place, round trip: the editor's comments and layout survive."""
    # Imported here: only writing needs the round-trip parser, and it costs every build ~40 ms to load.
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    path = errata_path(config)
    yaml_rt = YAML()
    yaml_rt.width = 100
    exists = path.exists()
    data = yaml_rt.load(path.read_text(encoding="utf-8")) if exists else None
    if data is None:
        data = CommentedSeq()
    change(data)
    buffer = io.StringIO()
    yaml_rt.dump(data, buffer)
    text = buffer.getvalue() if exists else HEADER + buffer.getvalue()
    write_atomically(path, text.encode("utf-8"))


def add_erratum(
    config: Config, issue: int, text: str, replace: tuple[str, str] | None, source_body: str
) -> Erratum:
    if not text.strip():
        raise ErrataError("--text must not be empty")
    if replace and replace[0] not in source_body:
        raise ErrataError(f"--replace: {replace[0]!r} does not occur in issue {issue}")
    with _locked(config):
        errata = load_errata(config)
        erratum = Erratum(
            id=max((e.id for e in errata), default=0) + 1,
            issue=issue,
            recorded=dt.date.today(),
            text=text.strip(),
            replace_old=replace[0] if replace else "",
            replace_new=replace[1] if replace else "",
        )
        _edit(config, lambda data: data.append(erratum.as_yaml()))
    return erratum


def errata_for(errata: list[Erratum], number: int, *, started: bool) -> list[Erratum]:
    """What issue ``number`` carries: what it announced, plus, until it is sent, every pending one."""
    carried = [e for e in errata if e.announced_in == number]
    if not started:
        carried += [e for e in errata if e.announced_in is None and e.issue < number]
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


def errata_html(config: Config, carried: list[Erratum]) -> str:
    """The Errata section of an email, slotted in after the opening text."""
    items = "".join(
        f'<li>In <a href="{html.escape(config.archive_url(e.issue))}">issue {e.issue}</a>: {html.escape(e.text)}</li>'
        for e in carried
    )
    return f"<h2>Errata</h2>\n<ul>{items}</ul>\n"
