"""Attacks on the errata and issue sources: each is refused with one line naming where it is, and
changes nothing (issues, errata.yaml, the archive, the outbox).

The catalogue: what an editor may paste (a terminal colour code, a bidi override from a chat
window, a ``%%email%%`` placeholder, raw HTML) into ``errata add``, into ``errata.yaml`` by hand,
or into an issue; and what would otherwise happen is in each case's id.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.archive.test_archive import import_subscribers, ok, one_line_error, run
from tests.conftest import Newsletter
from tests.issue.test_errata import write_issue

pytestmark = pytest.mark.slow  # the console script in a subprocess

ERRATA = "issues/errata.yaml"
ENTRY = "- id: 1\n  issue: 1\n  recorded: 2026-11-03\n"

# (id, how the attack arrives, what it is, the one line expected on stderr; {line}: where it was put)
CATALOGUE = [
    # errata add: the --text and --replace arguments
    (
        "add-esc",
        "add",
        ("--text", "Fixed \x1b[31mred"),
        "error: --text: U+001B (escape) at character 7 is not allowed",
    ),
    ("add-c1-csi", "add", ("--text", "Fixed \x9b2J"), "error: --text: U+009B (csi) at character 7"),
    ("add-c1-nel", "add", ("--text", "Fixed\x85x"), "error: --text: U+0085 (next line) at character 6"),
    (
        "add-bidi-override",
        "add",
        ("--text", "Fixed \u202egnp.exe"),
        "error: --text: U+202E (right-to-left override)",
    ),
    ("add-bidi-isolate", "add", ("--text", "Fixed \u2067x"), "error: --text: U+2067 (right-to-left isolate)"),
    (
        "add-placeholder-email",
        "add",
        ("--text", "Sent to %%email%% by mistake"),
        "error: --text: '%%email%%' is a per-recipient placeholder",
    ),
    (
        "add-placeholder-unsub",
        "add",
        ("--text", "%%unsubscribe_url%%"),
        "error: --text: '%%unsubscribe_url%%' is a per-recipient placeholder",
    ),
    (
        "add-replace-script",
        "add",
        ("--text", "Fixed.", "--replace", "brief", "<script>alert(1)</script>"),
        "error: --replace NEW: raw HTML would change the archived page",
    ),
    (
        "add-replace-heading",
        "add",
        ("--text", "Fixed.", "--replace", "brief", "brief\n## Injected"),
        "error: --replace NEW: a line break would change the archived page",
    ),
    (
        "add-replace-placeholder",
        "add",
        ("--text", "Fixed.", "--replace", "brief", "%%email%%"),
        "error: --replace NEW: '%%email%%' is a per-recipient placeholder",
    ),
    (
        "stop-press-esc",
        "add",
        ("--text", "\x1b]8;;http://evil\x07", "--stop-press"),
        "error: --text: U+001B (escape) at character 1",
    ),
    # errata.yaml edited by hand: the next build stops, naming line and column
    (
        "file-escaped-esc",
        "file",
        '  text: "Fixed \\e[31mred"\n',
        f"error: {ERRATA}:6:9: entry 1: text: U+001B (escape)",
    ),
    (
        "file-escaped-c1",
        "file",
        '  text: "Fixed \\x9b"\n',
        f"error: {ERRATA}:6:9: entry 1: text: U+009B (csi)",
    ),
    (
        "file-escaped-bidi",
        "file",
        '  text: "Fixed \\u2066"\n',
        f"error: {ERRATA}:6:9: entry 1: text: U+2066 (left-to-right isolate)",
    ),
    (
        "file-literal-esc",
        "file",
        "  text: Fixed \x1b[31mred\n",
        f"error: {ERRATA}:6: YAML error: special characters are not allowed: U+001B",
    ),
    (
        "file-placeholder",
        "file",
        "  text: Dear %%email%%\n",
        f"error: {ERRATA}:6:9: entry 1: text: '%%email%%' is a per-recipient placeholder",
    ),
    (
        "file-replace-script",
        "file",
        "  text: Fixed.\n  replace: {old: brief, new: <script>x</script>}\n",
        f"error: {ERRATA}:7:",
    ),
    # an issue's body and front matter
    (
        "body-esc",
        "body",
        "News \x1b[2J here.\n",
        "error: issues/2.md:{line}:6: U+001B (escape) is not allowed in an issue; delete it",
    ),
    (
        "body-c1",
        "body",
        "News \x85 here.\n",
        "error: issues/2.md:{line}:6: U+0085 (next line) is not allowed",
    ),
    (
        "body-bidi",
        "body",
        "if admin \u202e }\u2066 {\n",
        "error: issues/2.md:{line}:10: U+202E (right-to-left override) is not allowed",
    ),
    (
        "title-bidi",
        "title",
        'title: "Issue \\u202e2"',
        "error: issues/2.md:3: title: must be a single line of text, without control characters",
    ),
]


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Newsletter:
    """Issue 1 sent (so errata may be recorded against it), issue 2 written, not sent."""
    from tests.support.newsletter import REPO

    root = tmp_path_factory.mktemp("attacks") / "letter"
    root.mkdir()
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    (root / "issues").mkdir()
    newsletter = Newsletter(root)
    import_subscribers(newsletter, 2)
    write_issue(newsletter, 1)
    write_issue(newsletter, 2)
    ok(run(newsletter, "send", "1"))
    return newsletter


def snapshot(root: Path) -> dict[str, bytes]:
    """What an attack must not change: the sources, the archive, the outbox, the builds."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in ("issues", "archive", "outbox", "build")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("kind", "attack", "expected"), [case[1:] for case in CATALOGUE], ids=[case[0] for case in CATALOGUE]
)
def test_attack_is_refused_in_one_line_and_changes_nothing(
    sent: Newsletter, tmp_path: Path, kind: str, attack: tuple[str, ...] | str, expected: str
) -> None:
    newsletter = Newsletter(tmp_path / "letter")
    shutil.copytree(sent.root, newsletter.root)
    root = newsletter.root
    if kind == "add":
        command: tuple[str, ...] = ("errata", "add", "1", *attack)
    else:
        assert isinstance(attack, str)
        if kind == "file":
            (root / ERRATA).write_text("# by hand\n# really\n" + ENTRY + attack, encoding="utf-8")
        elif kind == "body":
            source = root / "issues" / "2.md"
            text = source.read_text(encoding="utf-8")
            source.write_text(text + "\n" + attack, encoding="utf-8")
            # The attack's line: after the file's lines and the blank line that separates it.
            expected = expected.format(line=len(text.splitlines()) + 2)
        else:
            source = root / "issues" / "2.md"
            source.write_text(
                source.read_text(encoding="utf-8").replace("title: Issue 2", attack), encoding="utf-8"
            )
        command = ("build", "2")
    before = snapshot(root)
    line = one_line_error(run(newsletter, *command))
    assert line.startswith(expected), line
    assert snapshot(root) == before
