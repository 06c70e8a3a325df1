"""The public archive, end to end: the real ``newsletter`` command, a real bare git repository as the remote.

Tests marked ``xfail(strict=True)`` pin down bugs found while writing these tests;
each reason says what is wrong. When a bug is fixed its test passes, strict xfail
turns that into a failure, and the marker should be removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import feedparser  # type: ignore[import-untyped]
import pytest
from markdown_it import MarkdownIt

from tests.conftest import Newsletter
from tests.support.cli import clean_env, run_cli

NEWSLETTER = Path(sys.executable).with_name("newsletter")
ATOM = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
# Our own git commands: no user or system configuration, a fixed identity.
GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Other Editor",
    "GIT_AUTHOR_EMAIL": "other@example.org",
    "GIT_COMMITTER_NAME": "Other Editor",
    "GIT_COMMITTER_EMAIL": "other@example.org",
    "LC_ALL": "C",
}

BODY_1 = """\
Welcome to *issue one* — with a hard line break \x20
right here, an escaped \\[bracket\\], `code`, and an émoji 🎉.

## News

- A [link with a query](https://example.org/news?a=1&b=2).
- Teh quick fix landed in [the tracker](https://example.org/tracker).

| Project | Version |
|---|---|
| ferrule | 1.42.0 |

```python
# a comment inside code, not a heading
print("hello")
```

## And finally

See you next week.
"""

BODY_2 = """\
The second issue opens here.

## News

Nothing new under the sun.
"""

pytestmark = pytest.mark.slow  # the console script and real git repositories


# --- helpers ---------------------------------------------------------------------------------


def cli_env(newsletter: Newsletter) -> dict[str, str]:
    """The editor's environment, minus any git configuration of this machine (HOME is an empty folder)."""
    home = newsletter.root.parent / "home"
    home.mkdir(exist_ok=True)
    return clean_env({"HOME": str(home), "NEWSLETTER_SECRET": "test-secret-0123456789abcdef"})


def run(newsletter: Newsletter, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script as the editor runs it, in the newsletter's folder."""
    return run_cli(newsletter.root, *args, env=cli_env(newsletter))


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A failure the editor can read: non-zero exit, exactly one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result


def set_config(newsletter: Newsletter, section: str, key: str, value: str | float) -> None:
    """Set ``key`` in ``[section]`` of the newsletter's config (the line must exist, or the section is added)."""
    text = newsletter.config_path.read_text(encoding="utf-8")
    literal = json.dumps(value)
    pattern = re.compile(
        rf"(^\[{re.escape(section)}\]\n(?:(?!\[).*\n)*?){re.escape(key)} = [^\n]*\n", re.MULTILINE
    )
    if pattern.search(text):
        text = pattern.sub(lambda m: f"{m.group(1)}{key} = {literal}\n", text, count=1)
    elif f"[{section}]\n" in text:
        text = text.replace(f"[{section}]\n", f"[{section}]\n{key} = {literal}\n", 1)
    else:
        text += f"\n[{section}]\n{key} = {literal}\n"
    newsletter.config_path.write_text(text, encoding="utf-8")
    config = newsletter.config()  # the edited file must still be a valid config
    assert config.path == newsletter.config_path


def source_body(path: Path) -> str:
    """The Markdown body of an issue file exactly as written: everything after the front matter."""
    text = path.read_bytes().decode("utf-8")
    assert text.startswith("---\n")
    return text.split("\n---\n", 1)[1]


def archive_dir(newsletter: Newsletter) -> Path:
    return newsletter.root / "archive"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def index_links(folder: Path) -> list[tuple[str, str]]:
    """(link text, href) of every link in the index, as a Markdown renderer sees them."""
    md = MarkdownIt("commonmark").enable("table")
    links = []
    for block in md.parse((folder / "README.md").read_text(encoding="utf-8")):
        children = block.children or []
        for index, token in enumerate(children):
            if token.type == "link_open":
                closing = next(i for i in range(index, len(children)) if children[i].type == "link_close")
                text = "".join(
                    t.content for t in children[index + 1 : closing] if t.type in ("text", "code_inline")
                )
                links.append((text, str(token.attrs["href"])))
    return links


def check_index(folder: Path, expected: list[tuple[int, str, str, str]]) -> None:
    """The index lists (number, date, title, file), newest first, and every link in it resolves."""
    readme = (folder / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \[#(\d+)\]\(([^)]*)\) \| (\S+) \| (.*) \|$", readme, re.MULTILINE)
    assert [(int(n), date, title, name) for n, name, date, title in rows] == expected, readme
    links = index_links(folder)
    issue_links = [(text, href) for text, href in links if text.startswith("#")]
    assert issue_links == [(f"#{n}", name) for n, _, _, name in expected], readme
    for text, href in links:
        if text == "Atom feed":
            # Absolute, at the raw file: a feed reader given GitHub's /blob/ page would get HTML.
            assert href.startswith("https://") and href.endswith("/feed.xml"), href
            assert (folder / "feed.xml").is_file()
            continue
        assert not urlsplit(href).scheme, href
        assert (folder / unquote(href)).is_file(), f"index link {text!r} -> {href!r} does not resolve"


def check_feed(folder: Path, expected: dict[str, str]) -> dict[str, str]:
    """Validate archive/feed.xml (structure and feedparser); ``expected`` maps file name -> title.

    Returns file name -> entry id.
    """
    data = (folder / "feed.xml").read_bytes()
    root = ET.fromstring(data)
    assert root.tag == f"{ATOM}feed"

    def single(parent: ET.Element, tag: str) -> str:
        found = parent.findall(f"{ATOM}{tag}")
        assert len(found) == 1, f"{parent.tag} must have exactly one {tag}, has {len(found)}"
        assert (found[0].text or "").strip(), f"{parent.tag}/{tag} is empty"
        return found[0].text or ""

    single(root, "id")
    single(root, "title")
    assert RFC3339.match(single(root, "updated"))
    entries = root.findall(f"{ATOM}entry")
    feed_has_author = bool(root.findall(f"{ATOM}author/{ATOM}name"))
    ids: dict[str, str] = {}
    for entry in entries:
        entry_id = single(entry, "id")
        assert re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$", entry_id), entry_id  # an IRI
        single(entry, "title")
        assert RFC3339.match(single(entry, "updated"))
        links = entry.findall(f"{ATOM}link")
        assert links and all(link.get("href") for link in links)
        assert feed_has_author or entry.findall(f"{ATOM}author/{ATOM}name"), "atom:author is required"
        content = entry.find(f"{ATOM}content")
        assert content is not None and content.get("type") == "html" and content.text
        name = unquote(urlsplit(links[0].get("href", "")).path.rsplit("/", 1)[-1])
        ids[name] = entry_id
    assert len(set(ids.values())) == len(entries), "entry ids must be unique"

    parsed = feedparser.parse(data)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert len(parsed.entries) == len(expected) == len(entries)
    for item in parsed.entries:
        name = unquote(urlsplit(item.link).path.rsplit("/", 1)[-1])
        assert item.title == expected[name]
        assert item.id == ids[name]
        assert item.content[0].type == "text/html"
        assert "<p>" in item.content[0].value and "<h1>" in item.content[0].value
    return ids


@pytest.fixture
def remote(tmp_path: Path, newsletter: Newsletter) -> Path:
    """A bare repository on this machine as archive.remote, given as a path relative to the config's folder.

    It refuses non-fast-forward updates and deletions, so any force push would fail loudly.
    """
    bare = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", str(bare))
    git("-C", str(bare), "config", "receive.denyNonFastForwards", "true")
    git("-C", str(bare), "config", "receive.denyDeletes", "true")
    set_config(newsletter, "archive", "remote", "../remote.git")
    assert newsletter.config().archive_remote == str(bare)
    return bare


def remote_head(bare: Path) -> str:
    return git(
        "-C", str(bare), "rev-parse", "--verify", "--quiet", "refs/heads/main", check=False
    ).stdout.strip()


def commit_count(repository: Path, ref: str = "--all") -> int:
    return int(git("-C", str(repository), "rev-list", "--count", ref).stdout)


def clone(bare: Path, destination: Path) -> Path:
    git("clone", "--quiet", "--branch", "main", str(bare), str(destination))
    return destination


def log_pushes(bare: Path) -> Path:
    """A post-receive hook that records every push that updated a ref."""
    log = bare.parent / "pushes.log"
    hook = bare / "hooks" / "post-receive"
    hook.write_text(f"#!/bin/sh\ncat >> '{log}'\n", encoding="utf-8")
    hook.chmod(0o755)
    return log


def mirror(newsletter: Newsletter) -> Path:
    return newsletter.root / "state" / "archive-mirror"


# --- the archive files -----------------------------------------------------------------------


def test_archive_writes_issue_index_and_feed(newsletter: Newsletter) -> None:
    source = newsletter.write_issue(1, BODY_1, title='"First: the beginning"', author="Ada Example")
    source_bytes = source.read_bytes()
    result = ok(run(newsletter, "archive", "1"))
    assert "archived: 3 file(s)" in result.stdout and "local only" in result.stdout
    folder = archive_dir(newsletter)
    assert sorted(p.name for p in folder.iterdir()) == ["1.md", "README.md", "feed.xml"]

    archived = (folder / "1.md").read_bytes().decode("utf-8")
    meta_line, rest = archived.split("\n", 1)
    meta = json.loads(re.fullmatch(r"<!-- newsletter-archive: (\{.*\}) -->", meta_line).group(1))  # type: ignore[union-attr]
    assert meta == {
        "number": 1,
        "title": "First: the beginning",
        "date": "2026-11-23",
        "updated": "2026-11-23",
    }
    # Title, date (and author), then the body byte for byte as the editor wrote it.
    assert (
        rest
        == "\n# First: the beginning\n\n*23 November 2026 · Ada Example*\n\n"
        + source_body(source).strip()
        + "\n"
    )
    assert "hard line break  \nright here" in archived and "\\[bracket\\]" in archived
    assert source.read_bytes() == source_bytes

    check_index(folder, [(1, "2026-11-23", "First: the beginning", "1.md")])
    ids = check_feed(folder, {"1.md": "First: the beginning"})
    feed_id = ET.fromstring((folder / "feed.xml").read_bytes()).findtext(f"{ATOM}id")
    content = feedparser.parse((folder / "feed.xml").read_bytes()).entries[0].content[0].value
    assert "<table>" in content and 'href="https://example.org/news?a=1&amp;b=2"' in content
    # The feed names itself at its raw file, where a feed reader gets XML, not GitHub's page around it.
    raw_feed = f"{newsletter.config().raw_base_url}/feed.xml"
    root_links = ET.fromstring((folder / "feed.xml").read_bytes()).findall(f"{ATOM}link")
    assert [link.get("href") for link in root_links if link.get("rel") == "self"] == [raw_feed]
    assert ("Atom feed", raw_feed) in index_links(folder)

    # Archiving again changes nothing, byte for byte.
    before = snapshot(folder)
    ok(run(newsletter, "archive", "1"))
    assert snapshot(folder) == before

    # A second issue: newest first in the index, its own entry; issue 1's id and the feed's id do not move.
    newsletter.write_issue(2, BODY_2, title='"Pipes | bars"', date="2026-11-30")
    ok(run(newsletter, "archive", "2"))
    assert (folder / "1.md").read_bytes() == before["1.md"]
    check_index(
        folder,
        [(2, "2026-11-30", "Pipes \\| bars", "2.md"), (1, "2026-11-23", "First: the beginning", "1.md")],
    )
    ids2 = check_feed(folder, {"1.md": "First: the beginning", "2.md": "Pipes | bars"})
    assert ids2["1.md"] == ids["1.md"]
    assert ET.fromstring((folder / "feed.xml").read_bytes()).findtext(f"{ATOM}id") == feed_id
    entries = feedparser.parse((folder / "feed.xml").read_bytes()).entries
    assert [e.title for e in entries] == ["Pipes | bars", "First: the beginning"]


def test_archive_of_a_missing_issue_is_a_clear_error(newsletter: Newsletter) -> None:
    line = one_line_error(run(newsletter, "archive", "7"))
    assert "issues/7.md: no such issue" in line
    assert not archive_dir(newsletter).exists()


def test_filename_pattern_names_files_and_index_links(newsletter: Newsletter) -> None:
    set_config(newsletter, "archive", "filename", "NL{number}.md")
    newsletter.write_issue(1, BODY_1)
    newsletter.write_issue(2, BODY_2, date="2026-11-30")
    ok(run(newsletter, "archive", "1"))
    ok(run(newsletter, "archive", "2"))
    folder = archive_dir(newsletter)
    assert sorted(p.name for p in folder.iterdir()) == ["NL1.md", "NL2.md", "README.md", "feed.xml"]
    check_index(folder, [(2, "2026-11-30", "Issue 2", "NL2.md"), (1, "2026-11-23", "Issue 1", "NL1.md")])
    ids = check_feed(folder, {"NL1.md": "Issue 1", "NL2.md": "Issue 2"})
    assert all("NL" not in entry_id for entry_id in ids.values()), "ids must not depend on the file name"
    links = [e.link for e in feedparser.parse((folder / "feed.xml").read_bytes()).entries]
    base = newsletter.config().archive_base_url
    assert links == [f"{base}/NL2.md", f"{base}/NL1.md"]


def test_filename_pattern_with_a_space_still_links(newsletter: Newsletter) -> None:
    set_config(newsletter, "archive", "filename", "Issue {number}.md")
    newsletter.write_issue(1, BODY_1)
    ok(run(newsletter, "archive", "1"))
    folder = archive_dir(newsletter)
    assert (folder / "Issue 1.md").exists()
    links = index_links(folder)
    assert [text for text, _ in links if text.startswith("#")] == ["#1"], (folder / "README.md").read_text()
    for text, href in links:
        if text != "Atom feed":  # the feed is linked at its raw URL
            assert (folder / unquote(href)).is_file(), href


def test_filename_pattern_with_another_extension_is_refused(newsletter: Newsletter) -> None:
    # The archive is Markdown for GitHub: a name GitHub would not render, or the index would miss, is refused.
    text = newsletter.config_path.read_text()
    newsletter.config_path.write_text(
        text.replace('filename = "{number}.md"', 'filename = "{number}.markdown"')
    )
    newsletter.write_issue(1, BODY_1)
    result = run(newsletter, "archive", "1")
    assert (
        result.returncode == 2 and "archive.filename must" in result.stderr and "end in .md" in result.stderr
    )
    assert not archive_dir(newsletter).joinpath("1.markdown").exists()


def test_feed_ids_survive_backfilling_an_older_issue(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, BODY_1, date="2026-12-28")
    newsletter.write_issue(2, BODY_2, date="2027-01-04")
    ok(run(newsletter, "archive", "2"))
    first = check_feed(archive_dir(newsletter), {"2.md": "Issue 2"})
    ok(run(newsletter, "archive", "1"))
    second = check_feed(archive_dir(newsletter), {"1.md": "Issue 1", "2.md": "Issue 2"})
    assert second["2.md"] == first["2.md"]


def test_feed_with_capitalised_host(newsletter: Newsletter) -> None:
    set_config(newsletter, "newsletter", "archive_base_url", "https://GitHub.com/example/archive/blob/main")
    newsletter.write_issue(1, BODY_1)
    result = run(newsletter, "archive", "1")
    assert "Traceback" not in result.stderr, result.stderr
    ok(result)


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_title_with_comment_terminator_keeps_metadata_hidden(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, BODY_1, title='"Rust --> WASM"')
    ok(run(newsletter, "archive", "1"))
    html = MarkdownIt("commonmark", {"html": True}).render(
        (archive_dir(newsletter) / "1.md").read_text(encoding="utf-8")
    )
    parser = _VisibleText()
    parser.feed(html.split("<h1>", 1)[0])
    assert "".join(parser.text).strip() == ""


# --- the git mirror --------------------------------------------------------------------------


def test_mirror_pushes_and_a_second_run_changes_nothing(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    pushes = log_pushes(remote)
    newsletter.write_issue(1, BODY_1)
    result = ok(run(newsletter, "archive", "1"))
    assert f"pushed to {remote} (main)" in result.stdout
    checkout = clone(remote, tmp_path / "check")
    folder = archive_dir(newsletter)
    for name in ("1.md", "README.md", "feed.xml"):
        assert (checkout / name).read_bytes() == (folder / name).read_bytes()
    head, count = remote_head(remote), commit_count(remote)
    mirror_count = commit_count(mirror(newsletter), "HEAD")
    assert count == 1 and pushes.read_text().count("\n") == 1
    local = snapshot(folder)

    result = ok(run(newsletter, "archive", "1"))
    assert "already up to date" in result.stdout
    assert remote_head(remote) == head and commit_count(remote) == count
    assert commit_count(mirror(newsletter), "HEAD") == mirror_count, "no new commit, even locally"
    assert pushes.read_text().count("\n") == 1, "nothing was pushed"
    assert snapshot(folder) == local
    assert git("-C", str(mirror(newsletter)), "status", "--porcelain").stdout == ""


def _remote_moves_ahead(newsletter: Newsletter, remote: Path, tmp_path: Path) -> str:
    """Issue 1 is archived and pushed; then someone fixes a typo in 1.md and adds a LICENSE on the remote."""
    newsletter.write_issue(1, BODY_1)
    ok(run(newsletter, "archive", "1"))
    other = clone(remote, tmp_path / "other")
    text = (other / "1.md").read_text(encoding="utf-8")
    assert text.count("Teh quick fix") == 1
    (other / "1.md").write_text(text.replace("Teh quick fix", "The quick fix"), encoding="utf-8")
    (other / "LICENSE").write_text("CC BY 4.0\n", encoding="utf-8")
    git("-C", str(other), "add", "-A")
    git("-C", str(other), "commit", "--quiet", "-m", "Fix a typo, add a licence")
    git("-C", str(other), "push", "--quiet", "origin", "main")
    return remote_head(remote)


def test_mirror_integrates_changes_made_on_the_remote(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    theirs = _remote_moves_ahead(newsletter, remote, tmp_path)
    newsletter.write_issue(2, BODY_2, date="2026-11-30")
    result = ok(run(newsletter, "archive", "2"))
    assert f"pushed to {remote}" in result.stdout and "merged the changes made there" in result.stdout

    # Never a force push: the other editor's commit is in the remote's history, under ours.
    assert git("-C", str(remote), "merge-base", "--is-ancestor", theirs, "main", check=False).returncode == 0
    # (the feed, rebuilt from the merged files, then carries their fix too: one more commit)
    assert "Archive issue 2" in git("-C", str(remote), "log", "-3", "--format=%s", "main").stdout.splitlines()
    checkout = clone(remote, tmp_path / "check")
    folder = archive_dir(newsletter)
    # The remote keeps its typo fix and LICENSE, and gets issue 2 ...
    assert "The quick fix" in (checkout / "1.md").read_text(encoding="utf-8")
    assert "Teh quick fix" not in (checkout / "1.md").read_text(encoding="utf-8")
    assert (checkout / "LICENSE").read_text(encoding="utf-8") == "CC BY 4.0\n"
    assert (checkout / "2.md").read_bytes() == (folder / "2.md").read_bytes()
    check_index(checkout, [(2, "2026-11-30", "Issue 2", "2.md"), (1, "2026-11-23", "Issue 1", "1.md")])
    # ... while the local archive folder stays the pipeline's own output: the fix lives on the
    # remote, merged, and survives re-archiving (next test).
    assert "Teh quick fix" in (folder / "1.md").read_text(encoding="utf-8")


def test_typo_fix_made_on_the_remote_survives_re_archiving(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    _remote_moves_ahead(newsletter, remote, tmp_path)
    newsletter.write_issue(2, BODY_2, date="2026-11-30")
    ok(run(newsletter, "archive", "2"))
    ok(run(newsletter, "archive", "1"))
    checkout = clone(remote, tmp_path / "check")
    assert "The quick fix" in (checkout / "1.md").read_text(encoding="utf-8")


def _conflict(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """The remote changes issue 1's title line while the editor retitles issue 1 and archives it again."""
    newsletter.write_issue(1, BODY_1)
    ok(run(newsletter, "archive", "1"))
    other = clone(remote, tmp_path / "other")
    text = (other / "1.md").read_text(encoding="utf-8")
    (other / "1.md").write_text(
        text.replace("\n# Issue 1\n", "\n# Issue 1 (fixed upstream)\n"), encoding="utf-8"
    )
    git("-C", str(other), "commit", "--quiet", "-am", "Better title")
    git("-C", str(other), "push", "--quiet", "origin", "main")
    theirs = remote_head(remote)
    newsletter.write_issue(1, BODY_1, title='"Issue one, retitled"')
    return theirs, run(newsletter, "archive", "1")


def test_mirror_conflict_is_a_clear_error_and_loses_nothing(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    theirs, result = _conflict(newsletter, remote, tmp_path)
    line = one_line_error(result)
    assert result.returncode == 2
    assert "conflict" in line and "1.md" in line and "nothing was pushed" in line
    assert "state/archive-mirror" in line

    # The remote is untouched ...
    assert remote_head(remote) == theirs and commit_count(remote) == 2
    assert "# Issue 1 (fixed upstream)" in git("-C", str(remote), "show", "main:1.md").stdout
    # ... the editor's new version is still in the archive folder and committed in the mirror,
    # on the branch of generated output the message tells them to merge ...
    assert "\n# Issue one, retitled\n" in (archive_dir(newsletter) / "1.md").read_text(encoding="utf-8")
    assert "git merge newsletter-generated" in line
    assert (
        "\n# Issue one, retitled\n"
        in git("-C", str(mirror(newsletter)), "show", "newsletter-generated:1.md").stdout
    )
    # ... and the mirror is not left in the middle of a merge.
    dot_git = mirror(newsletter) / ".git"
    assert not (dot_git / "MERGE_HEAD").exists() and not (dot_git / "rebase-merge").exists()

    # Running it again says the same and still pushes nothing.
    assert one_line_error(run(newsletter, "archive", "1")) == line
    assert remote_head(remote) == theirs


def test_conflict_advice_git_pull_works(newsletter: Newsletter, remote: Path, tmp_path: Path) -> None:
    _, result = _conflict(newsletter, remote, tmp_path)
    one_line_error(result)
    pull = git("-C", str(mirror(newsletter)), "pull", check=False)
    merging = (mirror(newsletter) / ".git" / "MERGE_HEAD").exists() or (
        mirror(newsletter) / ".git" / "rebase-merge"
    ).exists()
    assert pull.returncode == 0 or merging, pull.stderr


def test_hand_merged_conflict_survives_the_next_archive_run(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    _, result = _conflict(newsletter, remote, tmp_path)
    one_line_error(result)
    work = mirror(newsletter)
    # As the message says: merge the generated branch by hand, fix, commit, push.
    git("-C", str(work), "merge", "newsletter-generated", check=False)
    assert "1.md" in git("-C", str(work), "diff", "--name-only", "--diff-filter=U").stdout
    text = (work / "1.md").read_text(encoding="utf-8")
    merged = re.sub(
        r"<<<<<<< [^\n]*\n.*?>>>>>>> [^\n]*\n",
        "# Issue one, retitled (fixed upstream)\n",
        text,
        flags=re.DOTALL,
    )
    (work / "1.md").write_text(merged, encoding="utf-8")
    git("-C", str(work), "commit", "--quiet", "-am", "Merge the remote's title fix")
    git("-C", str(work), "push", "--quiet", "origin", "HEAD:main")

    ok(run(newsletter, "archive", "1"))  # "then run `newsletter archive` again"
    assert "# Issue one, retitled (fixed upstream)" in git("-C", str(remote), "show", "main:1.md").stdout


def test_two_machines_archiving_different_issues_keep_a_complete_index(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    laptop = Newsletter(tmp_path / "laptop")
    laptop.root.mkdir()
    shutil.copy(newsletter.config_path, laptop.config_path)
    shutil.copytree(newsletter.root / "email_templates", laptop.root / "email_templates")
    (laptop.root / "issues").mkdir()
    newsletter.write_issue(1, BODY_1)
    laptop.write_issue(2, BODY_2, date="2026-11-30")
    ok(run(newsletter, "archive", "1"))
    ok(run(laptop, "archive", "2"))
    checkout = clone(remote, tmp_path / "check")
    assert (checkout / "1.md").exists() and (checkout / "2.md").exists()
    check_index(checkout, [(2, "2026-11-30", "Issue 2", "2.md"), (1, "2026-11-23", "Issue 1", "1.md")])


def _refuse_pushes(bare: Path) -> Path:
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are frozen for maintenance' >&2\nexit 1\n", encoding="utf-8")
    hook.chmod(0o755)
    return hook


def test_refused_push_is_a_clear_error_and_the_next_run_pushes(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    hook = _refuse_pushes(remote)
    newsletter.write_issue(1, BODY_1)
    line = one_line_error(run(newsletter, "archive", "1"))
    assert "refused the push to main" in line and "nothing was lost" in line
    assert remote_head(remote) == ""
    assert (archive_dir(newsletter) / "1.md").exists()

    hook.unlink()
    result = ok(run(newsletter, "archive", "1"))
    assert "pushed" in result.stdout
    checkout = clone(remote, tmp_path / "check")
    assert (checkout / "1.md").read_bytes() == (archive_dir(newsletter) / "1.md").read_bytes()
    assert commit_count(remote) == 1


def test_refused_push_error_gives_the_remote_reason(newsletter: Newsletter, remote: Path) -> None:
    _refuse_pushes(remote)
    newsletter.write_issue(1, BODY_1)
    line = one_line_error(run(newsletter, "archive", "1"))
    assert "pushes are frozen for maintenance" in line or "declined" in line


def test_unreachable_remote_is_a_clear_error(newsletter: Newsletter, tmp_path: Path) -> None:
    set_config(newsletter, "archive", "remote", str(tmp_path / "missing.git"))
    newsletter.write_issue(1, BODY_1)
    line = one_line_error(run(newsletter, "archive", "1"))
    assert "cannot reach the archive repository" in line
    assert (archive_dir(newsletter) / "1.md").exists(), "the local archive is written even so"


def test_unreachable_remote_error_names_the_remote_or_the_cause(
    newsletter: Newsletter, tmp_path: Path
) -> None:
    set_config(newsletter, "archive", "remote", str(tmp_path / "missing.git"))
    newsletter.write_issue(1, BODY_1)
    line = one_line_error(run(newsletter, "archive", "1"))
    assert "missing.git" in line or "does not appear to be a git repository" in line, line


# --- archiving after a campaign --------------------------------------------------------------


def import_subscribers(newsletter: Newsletter, count: int = 3) -> None:
    csv = newsletter.root / "subscribers.csv"
    csv.write_text(
        "email,name\n" + "".join(f"reader{i}@example.org,Reader {i}\n" for i in range(count)),
        encoding="utf-8",
    )
    result = ok(run(newsletter, "subscribers", "import", str(csv)))
    assert f"{count} added" in result.stdout


def test_send_archives_and_pushes_when_the_campaign_is_complete(
    newsletter: Newsletter, remote: Path, tmp_path: Path
) -> None:
    import_subscribers(newsletter)
    newsletter.write_issue(1, BODY_1)
    result = ok(run(newsletter, "send", "1"))
    assert "3 sent, 0 failed" in result.stdout and "issue 1: campaign complete" in result.stdout
    assert f"archived: 3 file(s) in {archive_dir(newsletter)}, pushed to {remote} (main)" in result.stdout
    assert len(list((newsletter.root / "outbox" / "new").iterdir())) == 3
    folder = archive_dir(newsletter)
    assert source_body(newsletter.root / "issues" / "1.md").strip() in (folder / "1.md").read_text(
        encoding="utf-8"
    )
    checkout = clone(remote, tmp_path / "check")
    assert (checkout / "1.md").read_bytes() == (folder / "1.md").read_bytes()
    check_index(checkout, [(1, "2026-11-23", "Issue 1", "1.md")])


def test_send_without_a_remote_archives_locally(newsletter: Newsletter) -> None:
    import_subscribers(newsletter, 2)
    newsletter.write_issue(1, BODY_1)
    result = ok(run(newsletter, "send", "1"))
    assert "archive.remote not set: local only" in result.stdout
    assert (archive_dir(newsletter) / "1.md").exists()
    assert not mirror(newsletter).exists()


def test_send_whose_archive_push_fails_can_be_archived_later(newsletter: Newsletter, remote: Path) -> None:
    hook = _refuse_pushes(remote)
    import_subscribers(newsletter)
    newsletter.write_issue(1, BODY_1)
    line = one_line_error(run(newsletter, "send", "1"))
    assert "refused the push" in line
    assert "issue 1: done, 3/3 handled" in ok(run(newsletter, "status", "1")).stdout
    hook.unlink()
    assert "pushed" in ok(run(newsletter, "archive", "1")).stdout
    assert remote_head(remote)


def test_send_whose_archive_push_fails_says_the_issue_was_sent(newsletter: Newsletter, remote: Path) -> None:
    hook = _refuse_pushes(remote)
    import_subscribers(newsletter)
    newsletter.write_issue(1, BODY_1)
    result = run(newsletter, "send", "1")
    assert result.returncode != 0
    assert "campaign complete" in result.stdout or "was sent" in result.stderr, (result.stdout, result.stderr)
    hook.unlink()
    again = run(newsletter, "send", "1")
    assert "pushed" in again.stdout, "a second `send` should finish the archiving it could not do"
