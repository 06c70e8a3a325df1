from __future__ import annotations

import email
import re
import tempfile
from email import policy
from pathlib import Path
from typing import Any

import jinja2
import pytest

from pipeline.issue import render
from pipeline.issue.build import build_issue
from pipeline.issue.render import TEXT_TEMPLATE, render_issue, render_text, sample_recipient
from pipeline.issue.source import read_issue
from pipeline.publish import write_build
from pipeline.send.message import html_size_as_sent, sample_as_sent
from tests.conftest import REPO, Newsletter


def test_html_is_inlined_responsive_and_self_contained(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Intro [a](https://example.org/a).\n\n## News\n\n- item\n", preheader="Peek")
    html = build_issue(newsletter.config(), 1).html
    assert html.startswith("<!doctype html>")
    head, body = html.split("<body", 1)
    # Media queries stay in a style block, with !important kept for the phone layout.
    assert "@media only screen and (max-width: 480px)" in head and "!important" in head
    # Everything else is inlined: an <a> carries its colour itself.
    assert re.search(r'<a href="https://example.org/a" style="[^"]*color:#0a58ca', body)
    assert "fonts.googleapis" not in html and "<link" not in html
    assert "Peek" in body.split("<h1", 1)[0]  # the preheader comes first in the inbox preview
    assert '<meta name="viewport"' in head


def test_sections_are_compact_mjml_blocks(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Intro.\n\n## A\n\na\n\n## B\n\nb\n\n## C\n\nc\n")
    config = newsletter.config()
    rendered = render_issue(config, read_issue(config.paths.issues, 1))
    # header + one body section + footer, whatever the number of headings
    assert rendered.mjml.split("<mj-body", 1)[1].count("<mj-section") == 3
    assert rendered.mjml.count('<mj-text css-class="content">') == 4


def test_after_intro_blocks_go_after_the_opening_text(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Opening words.\n\n## News\n\nnews\n")
    config = newsletter.config()
    rendered = render_issue(
        config, read_issue(config.paths.issues, 1), after_intro=["## Errata\n\n[fix](1.md)\n"]
    )
    for output in (rendered.html, rendered.text):
        assert output.index("Opening words") < output.index("Errata") < output.index("News")
    # Markdown, parsed like the body: its relative link resolves against the archive in both parts.
    assert (
        f'href="{config.archive_url(1)}"' in rendered.html and f"[1] {config.archive_url(1)}" in rendered.text
    )


def test_recipient_values_are_filled_and_escaped(newsletter: Newsletter) -> None:
    newsletter.write_issue(1)
    config = newsletter.config()
    rendered = render_issue(config, read_issue(config.paths.issues, 1))
    assert "%%unsubscribe_url%%" in rendered.html and "%%email%%" in rendered.text
    html, text = rendered.personalise(
        {"email": "o'neil&co@example.org", "unsubscribe_url": "https://u.example/t?a=1&b=2"}
    )
    assert 'href="https://u.example/t?a=1&amp;b=2"' in html
    assert "o&#x27;neil&amp;co@example.org" in html
    assert "Unsubscribe: https://u.example/t?a=1&b=2" in text
    assert "o'neil&co@example.org\nsubscribed" in text
    assert "%%" not in html + text


def test_text_part_is_wrapped_and_keeps_every_link(newsletter: Newsletter) -> None:
    long_url = "https://example.org/" + "segment/" * 20
    newsletter.write_issue(
        1,
        f"{'word ' * 80}\n\n[first](https://example.org/1) and [long]({long_url}) and https://example.org/bare\n",
    )
    text = build_issue(newsletter.config(), 1).text
    for url in ("https://example.org/1", long_url, "https://example.org/bare"):
        assert url in text
    assert all(len(line) <= 72 or "http" in line for line in text.splitlines())


def test_message_eml_is_complete_multipart_utf8(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Caf\u00e9 \u2014 \u30ab\u30cb\n", subject="'Ol\u00e1 #1'")
    config = newsletter.config()
    written = write_build(config, build_issue(config, 1))
    assert sorted(written) == ["email.html", "email.txt", "message.eml"]
    raw = written["message.eml"].read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == "Ol\u00e1 #1"
    assert message["From"] == "Crate Notes <editor@example.org>"
    assert message["To"] == sample_recipient(config)["email"]
    assert message["Date"] and message["Message-ID"].endswith("@example.org>")
    assert message.get_content_type() == "multipart/alternative"
    text_part, html_part = message.iter_parts()
    assert text_part.get_content_type() == "text/plain" and html_part.get_content_type() == "text/html"
    assert text_part.get_content_charset() == html_part.get_content_charset() == "utf-8"
    assert "Caf\u00e9 \u2014 \u30ab\u30cb" in text_part.get_content()
    assert html_part.get_content().replace("\r\n", "\n").rstrip("\n") == written["email.html"].read_text(
        encoding="utf-8"
    )


def test_template_error_names_the_template(newsletter: Newsletter) -> None:
    import pytest

    from pipeline.errors import RenderError

    newsletter.write_issue(1)
    (newsletter.root / "email_templates" / "header.mjml.j2").write_text("{% if %}\n")
    with pytest.raises(RenderError, match=r"header.mjml.j2:1: template error"):
        build_issue(newsletter.config(), 1)


def test_repo_samples_render() -> None:
    from pipeline.config import load_config

    config = load_config(REPO / "newsletter.toml")
    for path in sorted(config.paths.issues.glob("*.md")):
        build = build_issue(config, int(path.stem))
        assert html_size_as_sent(sample_as_sent(config, build.rendered)) < config.max_html_bytes


def test_long_hyphenated_urls_are_never_broken_in_the_text_part(newsletter: Newsletter) -> None:
    url = "https://blog.example.org/2026/11/30/more-on-closures-and-the-borrow-checker-in-practice/"
    newsletter.write_issue(1, f"- [{url}]({url})\n- words words words words words words words {url}\n")
    text = build_issue(newsletter.config(), 1).text
    assert text.count(url) >= 2


def test_tables_sit_in_a_fixed_layout_frame_in_the_email_only(newsletter: Newsletter) -> None:
    # The frame keeps a wide table from widening the email's column (see frame_tables); the
    # text part and the Markdown HTML (also the archive feed's) have no use for a layout table.
    newsletter.write_issue(
        1, "Intro.\n\n| Benchmark | Before | After |\n|---|---|---|\n| check | 41 s | 28 s |\n\nAfter.\n"
    )
    config = newsletter.config()
    rendered = render_issue(config, read_issue(config.paths.issues, 1))
    frame = re.search(r'<table class="table-frame"[^>]*>', rendered.html)
    assert frame and 'width="100%"' in frame.group() and "table-layout:fixed" in frame.group()
    after = rendered.html[frame.end() :]
    assert re.match(r'<tbody><tr><td><div class="table-wrap" style="overflow-x:auto', after)
    # The frame's cell is not styled as a data cell; the data cells still are.
    assert re.search(r"<td[^>]*border:1px solid #d0d7de[^>]*>check</td>", rendered.html)
    assert after.index("</table></div></td></tr></tbody></table>") < after.index("After.")
    assert "table-frame" not in "".join(section.html for section in rendered.document.sections)
    assert "table-frame" not in rendered.text and "check" in rendered.text


# --- compiled templates are kept between runs --------------------------------------------------


def _count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    compiled: list[str] = []
    compile_template = jinja2.Environment.compile

    def counting(
        self: jinja2.Environment, source: Any, name: str | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        compiled.append(str(name))
        return compile_template(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    return compiled


def test_a_template_compiled_once_is_read_back_and_an_edited_one_compiled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the cache's folder is in there
    (tmp_path / "tmp").mkdir()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / TEXT_TEMPLATE).write_text("first {{ word }}\n", encoding="utf-8")
    compiled = _count_compiles(monkeypatch)
    render._environment.cache_clear()  # each step as a new process would see it
    assert render_text(templates, {"word": "run"}) == "first run\n"
    assert compiled == [TEXT_TEMPLATE]
    assert list((tmp_path / "tmp").glob("_jinja2-cache-*/__jinja2_*.cache")), "nothing was cached"

    render._environment.cache_clear()
    assert render_text(templates, {"word": "again"}) == "first again\n"
    assert compiled == [TEXT_TEMPLATE], "the cached template was compiled again"

    (templates / TEXT_TEMPLATE).write_text("edited {{ word }}\n", encoding="utf-8")
    render._environment.cache_clear()
    assert render_text(templates, {"word": "text"}) == "edited text\n"
    assert compiled == [TEXT_TEMPLATE, TEXT_TEMPLATE]
    render._environment.cache_clear()


def test_a_cache_that_cannot_be_made_or_written_is_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))  # the cache's folder cannot be made in a file
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / TEXT_TEMPLATE).write_text("still {{ word }}\n", encoding="utf-8")
    render._environment.cache_clear()
    assert render_text(templates, {"word": "renders"}) == "still renders\n"
    render._environment.cache_clear()

    # The folder vanishes between reading and writing (cleaned up, or the disk is full): no error.
    cache = render._BytecodeCache(str(tmp_path / "vanished"))
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), bytecode_cache=cache)
    environment.keep_trailing_newline = True
    assert environment.get_template(TEXT_TEMPLATE).render(word="renders") == "still renders\n"
    assert not (tmp_path / "vanished").exists()
