"""The ``subscribers`` commands as the editor runs them (real processes), and the faults of the machine
they meet: one line on stderr, a non-zero exit, nothing changed, never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.db import DB_NAME
from tests.support.cli import one_line, run_cli, start_cli, wait_for
from tests.support.newsletter import Newsletter

pytestmark = pytest.mark.slow


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """``paths`` read-only for this user: by mode, or for root (whom modes do not stop) by the immutable
    attribute."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in paths}
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    assert chattr, "root runs these tests: making a file read-only for root needs chattr (e2fsprogs)"
    subprocess.run([chattr, "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, paths)], check=True)


def rows(newsletter: Newsletter) -> list[tuple[object, ...]]:
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    try:
        return [tuple(r) for r in db.execute("SELECT email, name, status FROM subscribers ORDER BY id")]
    finally:
        db.close()


def test_a_read_only_database_is_one_line_and_changes_nothing(newsletter: Newsletter) -> None:
    assert run_cli(newsletter.root, "subscribers", "add", "a@example.org").returncode == 0
    state = newsletter.root / "state"
    before = rows(newsletter)
    with read_only(state / DB_NAME):
        added = run_cli(newsletter.root, "subscribers", "add", "b@example.org")
        assert added.returncode == 2
        assert "read-only" in one_line(added.stderr) and "writable" in added.stderr
        csv_file = newsletter.root / "list.csv"
        csv_file.write_text("email\nc@example.org\nd@example.org\n", encoding="utf-8")
        imported = run_cli(newsletter.root, "subscribers", "import", str(csv_file))
        assert imported.returncode == 2
        assert "import stopped at line 2" in one_line(imported.stderr)
    with read_only(state / DB_NAME, state):  # not even its -wal and -shm files can be made
        added = run_cli(newsletter.root, "subscribers", "add", "b@example.org")
        assert added.returncode == 2
        assert "writable" in one_line(added.stderr)
        counted = run_cli(newsletter.root, "subscribers", "count")  # reading needs no writing
        assert counted.returncode == 0 and "total                1" in counted.stdout
    assert rows(newsletter) == before


@pytest.mark.parametrize("number", [str(2**63), str(2**64 + 1), "1000001"])
def test_an_issue_number_out_of_range_is_one_line(newsletter: Newsletter, number: str) -> None:
    for command in (["status", number], ["build", number], ["links", number]):
        result = run_cli(newsletter.root, *command)
        # click's usage error: the usage line, then the one line saying what is wrong.
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"Invalid value for 'N': {number} is not in the range 1<=x<=1000000." in result.stderr


def test_import_names_the_line_and_field_of_a_control_character_and_lists_nothing_raw(
    newsletter: Newsletter,
) -> None:
    csv_file = newsletter.root / "list.csv"
    csv_file.write_text(
        'email,name\nok@example.org,Ok\neve@example.org,"Eve\x1b]0;owned\x07"\n', encoding="utf-8"
    )
    result = run_cli(newsletter.root, "subscribers", "import", str(csv_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "1 added, 0 updated, 0 unchanged, 0 skipped, 1 rejected",
        "  line 3: rejected: eve@example.org: name contains the control character U+001B (escape) at character 4",
    ]
    refused = run_cli(newsletter.root, "subscribers", "add", "eve@example.org", "--name", "Eve\u202e")
    assert refused.returncode == 2
    assert one_line(refused.stderr).endswith(
        "name contains the control character U+202E (right-to-left override) at character 4"
    )
    # A name stored before the rule (written straight into the database) is listed escaped, not obeyed.
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    db.execute("UPDATE subscribers SET name = 'Old\x1b[2J'")
    db.commit()
    db.close()
    listed = run_cli(newsletter.root, "subscribers", "list")
    assert "\x1b" not in listed.stdout and "Old\\x1b[2J" in listed.stdout


def test_an_interrupted_import_says_how_far_it_got_and_running_it_again_finishes(
    newsletter: Newsletter,
) -> None:
    rows = 20_000
    csv_file = newsletter.root / "big.csv"
    csv_file.write_text("email\n" + "".join(f"r{n}@example.org\n" for n in range(rows)), encoding="utf-8")
    importer = start_cli(newsletter.root, "subscribers", "import", str(csv_file))
    database = newsletter.root / "state" / DB_NAME

    def imported() -> int:
        if not database.exists():
            return 0
        db = sqlite3.connect(database, timeout=30)
        try:
            return int(db.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0])
        except sqlite3.OperationalError:  # the importer has not made the table yet
            return 0
        finally:
            db.close()

    wait_for(lambda: imported() > 0, "the first batch", importer)
    importer.send_signal(signal.SIGINT)  # what Ctrl-C does
    _, stderr = importer.communicate(timeout=60)
    assert importer.returncode == 2
    found = re.fullmatch(
        r"error: big\.csv: import stopped at line (\d+): interrupted; lines up to (\d+) are imported: "
        r"run the same import again to finish",
        one_line(stderr),
    )
    assert found, stderr
    stored = imported()
    assert int(found.group(2)) == stored + 1 == int(found.group(1)) - 1  # line 1 is the header
    again = run_cli(newsletter.root, "subscribers", "import", str(csv_file))
    assert (
        again.stdout.splitlines()[0]
        == f"{rows - stored} added, 0 updated, {stored} unchanged, 0 skipped, 0 rejected"
    )
