"""Robustness against real newsletters: 40 issues of This Week in Rust, 2013 to 2026.

The corpus lives outside the repo (``../shared/corpus/this-week-in-rust``) and
its text is never copied here: each file is converted at test time from its
Pelican front matter (``Title:``, ``Number:``, ``Date:`` lines, a blank line,
then Markdown) into an issue of ours in a throwaway newsletter folder, then
rendered twice: as written (raw HTML escaped, the default) and with
``allow_html: true``.

For each issue and mode: it renders, fits the HTML budget, loses no link in
the HTML or the plain text, the plain text fits 72 columns, and the checker
runs. With ``allow_html: true`` (what GitHub shows), every link and image equals
the one GitHub's own renderer (cmark-gfm, through ``cmarkgfm``) makes of the
same Markdown, but for the deliberate differences listed at the test. Run with ``-v`` (or
``CORPUS_REPORT=1``) to get a table of what the checker reports per issue.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cmarkgfm
import cmarkgfm.cmark
import pytest

from pipeline.check.content import Problem, check_rendered
from pipeline.config import Config, load_config
from pipeline.issue.markdown import Document, issue_url_resolver
from pipeline.issue.render import (
    Rendered,
    compile_mjml,
    render_issue,
    render_mjml,
    template_context,
)
from pipeline.issue.source import read_issue
from pipeline.issue.yaml12 import round_trip_yaml
from pipeline.send.message import html_size_as_sent, sample_as_sent

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "this-week-in-rust"

if not CORPUS.is_dir():
    pytest.skip(f"corpus not found at {CORPUS} (it is shared/, beside the repo)", allow_module_level=True)

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

FILES = sorted(p for p in CORPUS.iterdir() if p.is_file() and p.suffix in (".md", ".markdown"))
MODES = ("as_written", "allow_html")

# Known pipeline bugs this corpus shows. strict: the test fails once the bug is fixed, so the entry
# gets removed. Keyed by corpus file name.

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TEXT_REFERENCE = re.compile(r"^ *(?:> )*\[\d+\] (\S+)$", re.MULTILINE)


# ---------------------------------------------------------------- conversion


def convert(source: Path, index: int, *, allow_html: bool = False) -> tuple[int, str]:
    """A corpus file as an issue of ours: (number, file text).

    ``index`` (1-based position in the sorted corpus) numbers the files that have no ``Number:``.
    """
    text = source.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    head, blank, body = text.partition("\n\n")
    assert blank, f"{source.name}: no blank line after the metadata"
    meta: dict[str, str] = {}
    for line in head.split("\n"):
        key, colon, value = line.partition(":")
        assert colon, f"{source.name}: not a 'Key: value' metadata line: {line!r}"
        meta[key.strip().lower()] = value.strip()
    date = _DATE.search(meta["date"])
    assert date, f"{source.name}: no YYYY-MM-DD in Date: {meta['date']!r}"
    number = int(meta["number"]) if meta.get("number") else index
    front: dict[str, object] = {
        "number": number,
        "title": meta["title"],
        "date": dt.date.fromisoformat(date.group(0)),
    }
    if allow_html:
        front["allow_html"] = True
    # The pipeline's own YAML (1.2, ruamel); width: never fold a long title over two lines.
    writer = round_trip_yaml()
    writer.width = 1_000_000
    buffer = io.StringIO()
    writer.dump(front, buffer)
    dumped = buffer.getvalue()
    return number, f"---\n{dumped}---\n{body}"


def make_newsletter(root: Path) -> Config:
    """The repo's newsletter.toml, its templates by absolute path, everything else in ``root``."""
    (root / "issues").mkdir(parents=True)
    toml, count = re.subn(
        r"(?m)^templates\s*=.*$",
        lambda _: f"templates = {json.dumps(str(REPO / 'email_templates'))}",
        (REPO / "newsletter.toml").read_text(encoding="utf-8"),
    )
    assert count == 1, "newsletter.toml has no [paths] templates line to point at the repo's templates"
    (root / "newsletter.toml").write_text(toml, encoding="utf-8")
    return load_config(root / "newsletter.toml")


# ---------------------------------------------------------------- rendering, once per file and mode


@dataclass
class Result:
    config: Config
    rendered: Rendered
    template_hrefs: list[str]
    """Links the templates add around the body (archive, unsubscribe), for this issue."""

    @functools.cached_property
    def html_size(self) -> int:
        """The HTML part as sent (quoted-printable), what the clip budget counts."""
        return html_size_as_sent(sample_as_sent(self.config, self.rendered))

    @property
    def links(self) -> list[str]:
        return [link.href for link in self.rendered.document.links if not link.is_image]


class Corpus:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._factory = tmp_path_factory
        self._configs: dict[str, Config] = {}
        self._results: dict[tuple[str, str], Result] = {}
        self.problems: dict[tuple[str, str], list[Problem]] = {}

    def result(self, source: Path, mode: str) -> Result:
        key = (mode, source.name)
        if key not in self._results:
            if mode not in self._configs:
                self._configs[mode] = make_newsletter(self._factory.mktemp(f"corpus-{mode}"))
            config = self._configs[mode]
            number, text = convert(source, FILES.index(source) + 1, allow_html=mode == "allow_html")
            (config.paths.issues / f"{number}.md").write_text(text, encoding="utf-8")
            issue = read_issue(config.paths.issues, number)
            rendered = render_issue(config, issue)
            bare = template_context(config, issue, Document(sections=[]))
            template_hrefs = hrefs(compile_mjml(render_mjml(config.paths.templates, bare)))
            self._results[key] = Result(config, rendered, template_hrefs)
        return self._results[key]


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value or "" for name, value in attrs if name == "href")


def hrefs(document: str) -> list[str]:
    """Every ``<a href>`` of an HTML document, html-unescaped (HTMLParser decodes attribute values)."""
    parser = _Anchors()
    parser.feed(document)
    parser.close()
    return parser.hrefs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    collected = Corpus(tmp_path_factory)
    yield collected
    if request.config.getoption("verbose") > 0 or os.environ.get("CORPUS_REPORT"):
        _report(request, collected)


def _kind(message: str) -> str:
    """A checker message without the link's text and URL, to count problems by kind."""
    message = re.sub(r"^(link|image) ('.*?'|\".*?\"): ", "", message)
    return re.sub(r"(:|in|to|URL) (https?://|\[)\S.*$", r"\1 ...", message)[:70]


def _report(request: pytest.FixtureRequest, corpus: Corpus) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not corpus.problems:
        return
    lines = ["", "checker results on the corpus (errors / warnings; most frequent messages):"]
    for mode in MODES:
        for source in FILES:
            problems = corpus.problems.get((mode, source.name))
            if problems is None:
                continue
            errors = sum(p.severity == "error" for p in problems)
            kinds = Counter(_kind(p.message) for p in problems)
            common = "; ".join(f"{n}x {kind}" for kind, n in kinds.most_common(2))
            lines.append(f"  {mode:10} {source.name[:10]} {errors:2} / {len(problems) - errors:2}  {common}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in lines:
            reporter.write_line(line)


file_param = pytest.mark.parametrize("source", FILES, ids=[p.name[:10] for p in FILES])
mode_param = pytest.mark.parametrize("mode", MODES)


# ---------------------------------------------------------------- tests


def test_corpus_is_there_and_numbers_are_distinct() -> None:
    assert len(FILES) >= 40, f"expected the 40 corpus files in {CORPUS}, found {len(FILES)}"
    numbers = [convert(source, index)[0] for index, source in enumerate(FILES, 1)]
    assert len(set(numbers)) == len(numbers), f"two corpus files would get the same number: {numbers}"


def test_conversion_keeps_awkward_titles_intact(tmp_path: Path) -> None:
    """Titles with YAML-significant characters survive the round trip (and no corpus text is needed)."""
    config = make_newsletter(tmp_path)
    title = "This Week in Rust #7: 'quotes', \"more\": [brackets] & {braces} - 🦀 " + "long " * 30
    source = tmp_path / "pelican.md"
    source.write_text(f"Title: {title}\nDate: 2020-02-03 10:00\nCategory: x\n\nBody.\n", encoding="utf-8")
    number, text = convert(source, 7)
    (config.paths.issues / f"{number}.md").write_text(text, encoding="utf-8")
    issue = read_issue(config.paths.issues, number)
    assert (issue.number, issue.title, issue.date) == (7, title.strip(), dt.date(2020, 2, 3))


@mode_param
@file_param
def test_renders_within_the_html_budget(corpus: Corpus, source: Path, mode: str) -> None:
    result = corpus.result(source, mode)
    assert result.rendered.html.startswith("<!doctype html>") and result.rendered.text.strip()
    over = result.html_size - result.config.max_html_bytes
    assert over <= 0, (
        f"{source.name}: the HTML part is {result.html_size:,} bytes as sent, {over:,} over the "
        f"{result.config.max_html_bytes:,}-byte budget"
    )


@mode_param
@file_param
def test_every_link_reaches_the_html(corpus: Corpus, source: Path, mode: str) -> None:
    result = corpus.result(source, mode)
    found = hrefs(result.rendered.html)
    missing = [href for href in result.links if href not in found]
    assert not missing, f"{len(missing)} links lost in the HTML, e.g. {missing[:3]}"
    # Same links, as many times each: the body's links plus the templates' own, nothing dropped or added.
    expected = Counter(result.links) + Counter(result.template_hrefs)
    assert Counter(found) == expected, (
        f"link counts differ: only in the HTML {dict(Counter(found) - expected)}, "
        f"missing from it {dict(expected - Counter(found))}"
    )


@mode_param
@file_param
def test_every_link_reaches_the_text(corpus: Corpus, source: Path, mode: str) -> None:
    result = corpus.result(source, mode)
    text = result.rendered.text
    # An empty href is not a link a reader can follow; the checker reports it as an error.
    # An address is written as itself (mail programs link it), without its mailto:.
    wanted = {href.removeprefix("mailto:") for href in result.links if href}
    missing = sorted(href for href in wanted if href not in text)
    assert not missing, f"{len(missing)} link targets not in the plain text, e.g. {missing[:3]}"
    # Every reference line names a link of the issue, nothing else.
    extra = (
        set(_TEXT_REFERENCE.findall(text)) - wanted - {link.href for link in result.rendered.document.links}
    )
    assert not extra, f"references to no link of the issue: {sorted(extra)[:3]}"


@mode_param
@file_param
def test_text_lines_fit_72_columns(corpus: Corpus, source: Path, mode: str) -> None:
    """Longer only when the line is one word (a URL, a reference to one) or code, kept as written."""
    result = corpus.result(source, mode)
    code = {
        line
        for block in re.findall(r"```.*?```", result.rendered.issue.body, re.DOTALL)
        for line in block.split("\n")
    }
    long = [
        line
        for line in result.rendered.text.split("\n")
        if len(line) > 72
        and len(re.sub(r"^[ >]*(?:(?:- |\d+\. )|\[\d+\] )?", "", line).split()) > 1
        and line.strip() not in {c.strip() for c in code}
        and not line.startswith("    ")
    ]
    assert not long, f"{len(long)} lines over 72 columns, e.g. {long[:2]}"


# What the email deliberately links differently from GitHub's rendering of the same Markdown:
# - a bare www. link: https:// (GitHub: http://);
# - relative links and images: made absolute (pages against the archive, images against its raw files);
# - a URL before a no-break space ends there (GitHub runs it on and keeps a trailing "_").
def _as_the_email_links(url: str, text: str, image: bool, result: Result) -> str:
    if not image and url == "http://" + text and text.startswith("www."):
        url = "https://" + text
    resolve = issue_url_resolver(result.config, result.rendered.issue)
    return unquote(resolve.image(url) if image else resolve.link(url))


class _Targets(HTMLParser):
    """(href or src, link text, is an image) of every link and image of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[list[object]] = []
        self._open: list[object] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and "href" in values:
            self._open = [values["href"] or "", "", False]
            self.found.append(self._open)
        elif tag == "img":
            self.found.append([values.get("src") or "", "", True])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1] = str(self._open[1]) + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._open = None


def _targets(html: str) -> list[list[object]]:
    parser = _Targets()
    parser.feed(html)
    return parser.found


@file_param
def test_links_equal_githubs(corpus: Corpus, source: Path) -> None:
    """GitHub's renderer (cmark-gfm) as the oracle: the same links and images, in the same order."""
    result = corpus.result(source, "allow_html")
    body = result.rendered.issue.body
    github = cmarkgfm.github_flavored_markdown_to_html(body, options=cmarkgfm.cmark.Options.CMARK_OPT_UNSAFE)
    theirs = [_as_the_email_links(str(u), str(t), bool(i), result) for u, t, i in _targets(github)]
    html = "".join(section.html for section in result.rendered.document.sections)
    ours = [unquote(str(u)) for u, _, _ in _targets(html)]
    assert ours == theirs, next(
        (
            f"link {n}: ours {a!r}, GitHub's {b!r}"
            for n, (a, b) in enumerate(zip(ours, theirs, strict=False))
            if a != b
        ),
        f"{len(ours)} links, GitHub has {len(theirs)}",
    )


@mode_param
@file_param
def test_checker_runs(corpus: Corpus, source: Path, mode: str) -> None:
    result = corpus.result(source, mode)
    issue = result.rendered.issue
    problems = check_rendered(result.rendered, result.html_size, result.config.max_html_bytes)
    corpus.problems[(mode, source.name)] = problems
    last_line = issue.body_line + issue.body.count("\n")
    for problem in problems:
        assert problem.severity in ("error", "warning")
        assert problem.line == 0 or issue.body_line <= problem.line <= last_line, problem
        assert problem.message.strip()
    # The budget is tested above; the checker must agree with it.
    assert not any("over the budget" in p.message for p in problems)
