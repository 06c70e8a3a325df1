"""``newsletter preview``: a real server on 127.0.0.1, a temp newsletter, files edited under it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.preview import PreviewServer, Snapshot, render_page
from tests.conftest import REPO
from tests.support.browser import CHROMIUM, require_chromium

DEADLINE = 10.0
"""Seconds a rebuild may take to show up; a generous ceiling, the poll returns as soon as it does."""


@pytest.fixture
def letter(tmp_path: Path) -> Path:
    shutil.copy(REPO / "newsletter.toml", tmp_path / "newsletter.toml")
    shutil.copytree(REPO / "email_templates", tmp_path / "email_templates")
    (tmp_path / "issues").mkdir()
    shutil.copy(REPO / "issues" / "1.md", tmp_path / "issues" / "1.md")
    return tmp_path


@pytest.fixture
def server(letter: Path) -> Iterator[PreviewServer]:
    preview = PreviewServer(load_config(letter / "newsletter.toml"), 1, port=0, poll_seconds=0.05)
    preview.start()
    yield preview
    preview.stop()


def fetch(server: PreviewServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=5) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def version(server: PreviewServer) -> int:
    return int(fetch(server, "/version")[1])


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "the preview did not rebuild in time"
        time.sleep(0.05)


def edit(path: Path, old: str, new: str) -> None:
    """Save in place, as most editors do: the preview may see the file empty, half-way through the save."""
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_serves_on_localhost_with_a_url(server: PreviewServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/"
    assert server.port != 0


def test_index_shows_both_widths_the_text_subject_and_budget(server: PreviewServer) -> None:
    status, page = fetch(server, "/")
    assert status == 200
    assert 'src="/email.html' in page
    assert 'width="375"' in page and 'width="640"' in page
    assert "<pre" in page and "a weekly round-up of what" in page  # the plain text, in the page
    assert "Crate Notes #1: hello, world (and a registry that never sleeps)" in page
    assert "of the 102,000-byte budget" in page
    assert "No problems found." in page


def test_email_html_and_text_are_the_build(server: PreviewServer) -> None:
    status, email = fetch(server, "/email.html")
    assert status == 200
    assert email.lower().startswith("<!doctype html>")
    assert "reader@example.org" in email  # sample-recipient values are filled in
    assert "%%" not in email
    status, text = fetch(server, "/email.txt")
    assert status == 200
    assert text.startswith("Crate Notes #1: hello, world")
    assert fetch(server, "/nope")[0] == 404


def test_editing_the_issue_rebuilds_and_bumps_the_version(server: PreviewServer, letter: Path) -> None:
    before = version(server)
    edit(letter / "issues" / "1.md", "thank you. See you next week.", "thank you, edited reader.")
    wait_for(lambda: version(server) > before)
    assert "edited reader" in fetch(server, "/email.html")[1]
    assert "edited reader" in fetch(server, "/")[1]
    assert f'data-version="{version(server)}"' in fetch(server, "/")[1]


def test_a_broken_issue_shows_the_error_then_recovers(server: PreviewServer, letter: Path) -> None:
    issue = letter / "issues" / "1.md"
    good = issue.read_text(encoding="utf-8")
    issue.write_text(good.replace("---\n", "", 1), encoding="utf-8")  # no front matter any more
    wait_for(lambda: "must start with YAML front matter" in fetch(server, "/")[1])
    status, page = fetch(server, "/")
    assert status == 200
    assert "<iframe" not in page
    assert fetch(server, "/email.html")[0] == 503

    broken_version = version(server)
    issue.write_text(good.replace("See you next week.", "See you soon."), encoding="utf-8")
    wait_for(lambda: version(server) > broken_version)
    page = fetch(server, "/")[1]
    assert "<iframe" in page and "front matter" not in page
    assert "See you soon." in fetch(server, "/email.html")[1]


def test_a_template_change_rebuilds(server: PreviewServer, letter: Path) -> None:
    footer = letter / "email_templates" / "footer.mjml.j2"
    footer.write_text(footer.read_text(encoding="utf-8") + "\n<!-- unused -->\n", encoding="utf-8")
    text = letter / "email_templates" / "email.txt.j2"
    text.write_text(text.read_text(encoding="utf-8") + "Printed on recycled electrons.\n", encoding="utf-8")
    wait_for(lambda: "recycled electrons" in fetch(server, "/email.txt")[1])


def test_a_broken_template_shows_the_error(server: PreviewServer, letter: Path) -> None:
    template = letter / "email_templates" / "email.txt.j2"
    good = template.read_text(encoding="utf-8")
    template.write_text(good + "{% if %}\n", encoding="utf-8")
    wait_for(lambda: "template error" in fetch(server, "/")[1])
    template.write_text(good, encoding="utf-8")
    wait_for(lambda: "<iframe" in fetch(server, "/")[1])


def test_a_config_change_reloads_the_config(server: PreviewServer, letter: Path) -> None:
    config = letter / "newsletter.toml"
    edit(config, "max_html_bytes = 102000", "max_html_bytes = 1000")
    wait_for(lambda: "of the 1,000-byte budget" in fetch(server, "/")[1])
    page = fetch(server, "/")[1]
    assert 'class="over"' in page
    assert 'class="error"' in page and "over the budget of 1,000" in page  # check's problem, listed

    edit(config, "max_html_bytes = 1000", "max_html_bytes = 'many'")
    # Wait for the error itself: a save caught half-written shows another config error for a moment.
    wait_for(lambda: "newsletter.toml: check.max_html_bytes" in fetch(server, "/")[1])  # the config error
    assert "<iframe" not in fetch(server, "/")[1]  # shown instead of the issue
    edit(config, "max_html_bytes = 'many'", "max_html_bytes = 102000")
    wait_for(lambda: "of the 102,000-byte budget" in fetch(server, "/")[1])


def test_a_save_that_keeps_mtime_size_and_inode_is_seen(server: PreviewServer, letter: Path) -> None:
    # Where timestamps come from a clock tick (FAT: 2 s), two quick saves of the same length look alike
    # to stat: only the content tells them apart. Replaying the first save's mtime makes that happen here.
    config = letter / "newsletter.toml"
    edit(config, "max_html_bytes = 102000", "max_html_bytes = 'many'")  # as long as before
    wait_for(lambda: "newsletter.toml: check.max_html_bytes" in fetch(server, "/")[1])
    first = config.stat()
    edit(config, "max_html_bytes = 'many'", "max_html_bytes = 102000")
    os.utime(config, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert (config.stat().st_size, config.stat().st_ino) == (first.st_size, first.st_ino)
    wait_for(lambda: "of the 102,000-byte budget" in fetch(server, "/")[1])


def test_unchanged_output_does_not_reload_the_page(server: PreviewServer, letter: Path) -> None:
    before = version(server)
    # Count the rebuilds the watcher does, so the check below follows one instead of a guessed pause.
    rebuilds = 0
    rebuild = server.rebuild

    def counted() -> None:
        nonlocal rebuilds
        rebuild()
        rebuilds += 1

    server.rebuild = counted  # type: ignore[method-assign]
    (letter / "email_templates" / ".footer.mjml.j2.swp").write_bytes(b"editor state")
    issue = letter / "issues" / "1.md"
    issue.write_text(issue.read_text(encoding="utf-8"), encoding="utf-8")  # saved, not changed
    wait_for(lambda: rebuilds >= 1)  # the watcher saw the save and rebuilt: the page could have changed
    assert version(server) == before


def test_the_page_escapes_what_it_shows(letter: Path) -> None:
    config = load_config(letter / "newsletter.toml")
    page = render_page(1, Snapshot(version=2, config=config, error="<script>alert(1)</script> & co"))
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    page = render_page(
        1,
        Snapshot(
            version=3,
            config=config,
            subject="<b>bold</b>",
            html="<p>x</p>",
            text="a < b & </pre>",
            problems=(("warning", "1.md:3: warning: <img> has no alt"),),
        ),
    )
    assert "<b>bold" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "a &lt; b &amp; &lt;/pre&gt;" in page
    assert "&lt;img&gt; has no alt" in page


@pytest.mark.slow  # the console script in a subprocess
def test_cli_prints_the_url_and_exits_cleanly_on_ctrl_c(letter: Path) -> None:
    command = [
        sys.executable,
        "-X",
        "faulthandler",
        "-c",
        "from pipeline.cli import main; main()",
        "--config",
    ]
    command += [str(letter / "newsletter.toml"), "preview", "1", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Previewing issue 1 at http://127.0.0.1:")
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "version", timeout=10) as response:
            assert response.read() == b"1"
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)  # a loaded machine builds slowly
        except subprocess.TimeoutExpired:
            # Say where it hangs: the signal state the kernel holds, then every thread's stack.
            status = Path(f"/proc/{process.pid}/status").read_text()
            signals = [line for line in status.splitlines() if line.startswith(("Sig", "ShdPnd"))]
            process.send_signal(signal.SIGABRT)
            _, stderr = process.communicate(timeout=30)
            ours = [
                line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Sig")
            ]
            pytest.fail(f"no exit 30 s after Ctrl-C; child {signals}, pytest {ours}\n{stderr}")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr  # (seen once as exit 1 under xdist: the message says why)
    assert "Traceback" not in stderr


@pytest.mark.browser
def test_the_page_reloads_itself_in_a_browser(server: PreviewServer, letter: Path) -> None:
    import playwright.sync_api as sync_api  # a declared test dependency: missing is a failure

    require_chromium()
    chromium = CHROMIUM
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url)
            widths = [frame.evaluate("innerWidth") for frame in page.frames[1:]]
            assert widths == [375, 640]
            shown = page.evaluate("document.body.dataset.version")
            edit(letter / "issues" / "1.md", "See you next week.", "See you on reload.")
            page.wait_for_function(f"document.body.dataset.version !== '{shown}'", timeout=DEADLINE * 1000)
            assert "See you on reload." in page.inner_text("#text")
        finally:
            browser.close()
