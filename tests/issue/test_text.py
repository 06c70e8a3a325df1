"""The plain-text part, written from the Markdown tokens; and GFM's own spec examples for links."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import cmarkgfm
import cmarkgfm.cmark
import pytest

from pipeline.issue.markdown import make_url_resolver, render_body

BASE = "https://archive.example.org/tree/main"
resolve = make_url_resolver(BASE, BASE + "/3.md")


def text_of(body: str, allow_html: bool = False) -> str:
    return "\n\n".join(section.text for section in render_body(body, 1, allow_html, resolve).sections)


def test_paragraphs_wrap_at_72_and_their_links_follow_them() -> None:
    long_url = "https://example.org/" + "a-very-long-path-" * 6
    body = (
        "A first paragraph with [a link](https://one.example/x) and enough words to need wrapping "
        f"more than once, then [another]({long_url}) and the end.\n\nSecond [p](https://two.example).\n"
    )
    lines = text_of(body).split("\n")
    assert all(len(line) <= 72 or " " not in line.removeprefix("[2] ") for line in lines)
    first_blank = lines.index("")
    assert lines[first_blank - 2 : first_blank] == ["[1] https://one.example/x", f"[2] {long_url}"]
    assert "a link [1]" in " ".join(lines) and lines[-1] == "[3] https://two.example"


@pytest.mark.parametrize("after", [":", " (", ","])
def test_a_link_followed_by_punctuation_does_not_stop_the_wrapping(after: str) -> None:
    """html2text left such paragraphs unwrapped: lines of hundreds of characters."""
    words = "plenty of words in a sentence that goes on " * 6
    text = text_of(f"- [Tessel 1.19]({'https://blog.example.org/' + 'x' * 40}){after}{words}\n")
    assert max(len(line) for line in text.split("\n") if "https://" not in line) <= 72
    assert len(text.split("\n")) >= 5


def test_headings_lists_quotes_code_and_images() -> None:
    body = (
        "## News\n\n- one [a](https://a.example)\n- two ![logo](img/l.png)\n\n"
        "> quoted words\n\n```\ncode   stays\n```\n\n### Sub\n\n1. first\n2. second\n"
    )
    text = text_of(body)
    assert "News\n====" in text and "Sub\n---" in text
    assert "  - one a [1]\n    [1] https://a.example\n  - two [logo] [2]" in text
    assert f"[2] {BASE}/img/l.png" in text
    assert "> quoted words" in text and "    code   stays" in text
    assert "  1. first\n  2. second" in text


def test_bare_urls_and_addresses_are_written_once_as_themselves() -> None:
    text = text_of("See https://x.example/a, www.y.example and me@z.example.\n")
    assert text == "See https://x.example/a, https://www.y.example and me@z.example."


def test_tables_are_columns_or_label_lines_when_too_wide() -> None:
    narrow = text_of("| Name | Version |\n|---|--:|\n| [quill](https://q.example) | 0.9 |\n")
    assert narrow.split("\n")[:3] == ["Name       Version", "---------  -------", "quill [1]      0.9"]
    wide = text_of("| A | B |\n|---|---|\n| " + "word " * 12 + "| " + "more " * 10 + "|\n")
    assert wide.startswith("A: word word") and "\nB: more more" in wide
    assert all(len(line) <= 72 for line in wide.split("\n"))


def test_raw_html_is_text_in_the_text_part() -> None:
    assert text_of("Press <kbd>K</kbd>.\n") == "Press <kbd>K</kbd>."
    assert text_of("Press <kbd>K</kbd> &amp; <b>go</b>.\n", allow_html=True) == "Press K & go."
    # As the HTML part shows it: the tags GitHub's tagfilter disarms are text there.
    assert text_of("<script>track()</script>\n", allow_html=True) == "<script>track()</script>"


# ------------------------------------------------------------------ the GFM spec's own examples

_EXAMPLE = re.compile(r"^`{32} example(?: (\w+))?\n(.*?)^\.\n(.*?)^`{32}$", re.MULTILINE | re.DOTALL)


def _spec_dir(request: pytest.FixtureRequest) -> Path:
    """pytest's cache folder (the download is kept between runs), or a temporary one under `-p no:cacheprovider`."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("gfm-spec"))
    return Path(request.getfixturevalue("tmp_path_factory").mktemp("gfm-spec"))


def _gfm_spec(cache: Path) -> str:
    """The GFM spec (CC-BY-SA, so never copied into this repository): marko's sdist ships it.

    cmark-gfm's own sdist on PyPI (cmarkgfm) leaves its test folder out.
    """
    spec = cache / "gfm-spec.txt"
    if not spec.exists():
        cache.mkdir(parents=True, exist_ok=True)
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "marko==2.2.4",
                "-d",
                str(cache),
                "-q",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        archives = sorted(cache.glob("marko-*.tar.gz"))
        if download.returncode or not archives:
            pytest.skip(
                f"could not download marko's sdist for the GFM spec: {download.stderr.strip()[-200:]}"
            )
        with tarfile.open(archives[0]) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("tests/spec/gfm.txt"))
            extracted = archive.extractfile(member)
            assert extracted is not None
            spec.write_bytes(extracted.read())
    return spec.read_text(encoding="utf-8")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [value or "" for name, value in attrs if name == "href"]


def _hrefs(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.links


def test_gfm_spec_autolink_examples(request: pytest.FixtureRequest) -> None:
    spec = _gfm_spec(_spec_dir(request))
    examples = [(m.group(2), m.group(3)) for m in _EXAMPLE.finditer(spec) if m.group(1) == "autolink"]
    assert len(examples) >= 10, "the spec's autolink examples were not found"
    differ = []
    for markdown, expected in examples:
        source = markdown.replace("→", "\t")
        document = render_body(
            source, 1, False, make_url_resolver("https://a.example", "https://a.example/1")
        )
        ours = [link.href for link in document.links]
        # The one deliberate difference: a bare www. link gets https://, as browsers now do.
        theirs = [re.sub(r"^http://www\.", "https://www.", href) for href in _hrefs(expected)]
        if ours != theirs:
            differ.append((source, ours, theirs))
    assert not differ, differ


def test_gfm_spec_tagfilter_example(request: pytest.FixtureRequest) -> None:
    spec = _gfm_spec(_spec_dir(request))
    [(markdown, expected)] = [
        (m.group(2), m.group(3)) for m in _EXAMPLE.finditer(spec) if m.group(1) == "tagfilter"
    ]
    html = "".join(s.html for s in render_body(markdown, 1, True, resolve).sections)
    assert html == expected


@pytest.mark.parametrize("extension", ["table", "strikethrough"])
def test_gfm_spec_table_and_strikethrough_examples(request: pytest.FixtureRequest, extension: str) -> None:
    """Same HTML as the spec, up to how it is spelled: the email wraps a table in a scroller, aligns
    cells with a style (mail clients keep it) and strikes through with <s>."""
    spec = _gfm_spec(_spec_dir(request))
    examples = [(m.group(2), m.group(3)) for m in _EXAMPLE.finditer(spec) if m.group(1) == extension]
    assert examples, f"the spec's {extension} examples were not found"
    for markdown, expected in examples:
        html = "".join(s.html for s in render_body(markdown.replace("→", "\t"), 1, True, resolve).sections)
        html = html.replace('<div class="table-wrap">', "").replace("</table>\n</div>", "</table>")
        html = re.sub(r' style="text-align:(\w+)"', r' align="\1"', html)
        html = html.replace("<s>", "<del>").replace("</s>", "</del>")
        assert html == expected, markdown


# Pieces that meet at the edges of GFM's autolink rules; joined at random into short lines below.
_PIECES = (
    *("https://", "http://", "www.", "ftp://", "mailto:", "x@y.org", "a", "b.org", ".com", "e.x"),
    *("_", "*", "(", ")", ".", ",", ":", ";", "&amp;", "&", "?", "!", "'", '"', " ", "-", "/"),
    *("[", "]", "`", "\\", "#", "Foo_(bar)"),
)


def test_links_equal_githubs_on_generated_text() -> None:
    """GitHub's renderer (cmarkgfm) as the oracle on 5,000 generated lines, all of them its edge cases.

    Left out: the listed deliberate differences (a no-break space; a second '@'; a '::' after a host,
    which markdown-it's URL normaliser shortens).
    """
    generator = random.Random(20261202)
    checked, differ = 0, []
    while checked < 5000:
        line = "".join(generator.choice(_PIECES) for _ in range(generator.randint(2, 12)))
        if line.count("@") > 1 or "::" in line:
            continue
        checked += 1
        options = cmarkgfm.cmark.Options.CMARK_OPT_UNSAFE
        theirs = [resolve.link(h) for h in _hrefs(cmarkgfm.github_flavored_markdown_to_html(line, options))]
        ours = [link.href for link in render_body(line, 1, True, resolve).links if not link.is_image]
        # A bare www. gets https:// (GitHub: http://); an http://www. the line spells out stays so on both.
        theirs, ours = (
            [re.sub(r"^http://www", "https://www", href) for href in hrefs] for hrefs in (theirs, ours)
        )
        if ours != theirs:
            differ.append((line, ours, theirs))
    assert not differ, f"{len(differ)} lines linked differently, e.g. {differ[:3]}"
