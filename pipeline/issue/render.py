"""Issue -> email: Markdown fragments -> Jinja2 -> MJML -> HTML -> inlined CSS, plus plain text.

The plain text comes from the same parse as the HTML fragments (``markdown.py``, ``text.py``).

Per-recipient values are left as ``%%name%%`` placeholders, so an issue is
rendered once and personalised per subscriber by plain substitution.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import mjml
from lxml import etree
from markupsafe import Markup

from pipeline._lazy import import_deferring
from pipeline.config import Config
from pipeline.errors import RenderError
from pipeline.issue.markdown import (
    Document,
    issue_url_resolver,
    render_body,
    render_markdown,
)
from pipeline.issue.source import Issue

RECIPIENT_FIELDS = ("email", "unsubscribe_url")
PLACEHOLDER = re.compile(r"%%(" + "|".join(RECIPIENT_FIELDS) + r")%%")
HTML_TEMPLATE = "issue.mjml.j2"
TEXT_TEMPLATE = "email.txt.j2"
INLINE_CSS = "email.css"


@dataclass(frozen=True)
class Rendered:
    issue: Issue
    document: Document
    mjml: str
    html: str
    """Final HTML with ``%%field%%`` placeholders for the recipient."""
    text: str

    def personalise(self, recipient: Mapping[str, str]) -> tuple[str, str]:
        """The (html, text) one recipient gets."""
        return (
            fill_placeholders(self.html, recipient, escape=True),
            fill_placeholders(self.text, recipient, escape=False),
        )


def fill_placeholders(template: str, recipient: Mapping[str, str], *, escape: bool) -> str:
    def value(match: re.Match[str]) -> str:
        raw = recipient[match.group(1)]
        return html.escape(raw) if escape else raw

    return PLACEHOLDER.sub(value, template)


def sample_recipient(config: Config) -> dict[str, str]:
    """What a build shows where a subscriber's own values will go."""
    return {"email": "reader@example.org", "unsubscribe_url": f"{config.public_url}/unsubscribe/SAMPLE-TOKEN"}


def render_issue(config: Config, issue: Issue, after_intro: Sequence[str] = ()) -> Rendered:
    """Render ``issue``; ``after_intro`` holds Markdown blocks (errata) placed after the opening text."""
    document = markdown_stage(config, issue)
    resolve = issue_url_resolver(config, issue)
    inserted = [render_body(block, 0, False, resolve) for block in after_intro]
    context = template_context(config, issue, document, inserted)
    source = render_mjml(config.paths.templates, context)
    return Rendered(
        issue=issue,
        document=document,
        mjml=source,
        # <wbr> after inlining: lxml's HTML parser does not know it is a void element.
        html=break_long_link_texts(
            inline_css(
                frame_tables(parse_html(compile_mjml(source))), inline_stylesheet(config.paths.templates)
            )
        ),
        text=render_text(config.paths.templates, context),
    )


def markdown_stage(config: Config, issue: Issue) -> Document:
    return render_markdown(issue, issue_url_resolver(config, issue))


def template_context(
    config: Config, issue: Issue, document: Document, after_intro: Sequence[Document] = ()
) -> dict[str, Any]:
    sections = [{"heading": section.heading, "html": Markup(section.html)} for section in document.sections]
    blocks = [Markup("".join(s.html for s in block.sections)) for block in after_intro]
    body_html = [section["html"] for section in sections]
    body_html[1:1] = blocks
    body_text = [section.text for section in document.sections]
    body_text[1:1] = [section.text for block in after_intro for section in block.sections]
    return {
        "newsletter": {
            "name": config.name,
            "postal_address": config.postal_address,
            "language": config.language,
            "archive_base_url": config.archive_base_url,
        },
        "issue": {
            "number": issue.number,
            "title": issue.title,
            "subject": issue.subject,
            "preheader": issue.preheader or default_preheader(document),
            "author": issue.author,
            "date": issue.date,
            "date_text": f"{issue.date:%d %B %Y}".lstrip("0"),
            "archive_url": config.archive_url(issue.number),
        },
        "sections": sections,
        "after_intro": blocks,
        "body_html": Markup("\n".join(body_html)),
        "body_text": "\n\n".join(text for text in body_text if text),
        "recipient": {field: f"%%{field}%%" for field in RECIPIENT_FIELDS},
    }


@lru_cache(maxsize=8)
def _environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=jinja2.select_autoescape(enabled_extensions=("mjml.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        bytecode_cache=_bytecode_cache(),
    )


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's cache of compiled templates, in its per-user folder of the temp directory.

    Compiling the templates costs each ``newsletter build`` about 7 ms; the cache keeps them
    compiled between runs, keyed by template and checked against its source, so an edited
    template is compiled again. A cache that cannot be written (disk full, read-only) is no cache.
    """

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return _BytecodeCache()
    except (OSError, RuntimeError):  # no safe folder of our own in the temp directory
        return None


def _render_template(templates: Path, name: str, context: dict[str, Any]) -> str:
    try:
        return _environment(templates).get_template(name).render(context)
    except jinja2.TemplateSyntaxError as error:
        raise RenderError(
            f"{templates / (error.name or name)}:{error.lineno}: template error: {error.message}"
        ) from None
    except jinja2.TemplateNotFound as error:
        raise RenderError(f"{templates}: template not found: {error.name}") from None
    except jinja2.UndefinedError as error:
        raise RenderError(f"{templates / name}: {error.message}") from None


def render_mjml(templates: Path, context: dict[str, Any]) -> str:
    return _render_template(templates, HTML_TEMPLATE, context)


def compile_mjml(source: str) -> str:
    try:
        # fonts={}: no Google Fonts <link>; the font stack is system fonts only.
        return mjml.mjml2html(source, fonts={})
    except ValueError as error:
        raise RenderError(f"MJML error: {error}") from None


_TABLE_WRAP = "//div[contains(concat(' ', normalize-space(@class), ' '), ' table-wrap ')]"


def parse_html(document: str) -> etree._Element:
    """MJML's HTML as a tree: framing the tables and inlining the CSS share one parse."""
    return etree.fromstring(document.strip(), etree.HTMLParser())


def frame_tables(root: etree._Element) -> etree._Element:
    """Put each table's scroller (``div.table-wrap``) in a one-cell ``table-layout: fixed`` frame.

    A scroller alone does not keep a wide table off a phone: the email's column is itself a
    table cell, a table cell is never narrower than its content's min-content width, and the
    content of a scroller counts in that. So a table a few pixels too wide for the phone (say,
    because the fallback font is wider than the one the issue was checked with) widened the
    whole email, and the phone zoomed out. A fixed-layout table takes its width from its own
    ``width``, never from its content (with no column widths its min-content is zero), so the
    frame gives the scroller exactly the column's width and the table scrolls inside it. Fixed
    layout is CSS 2 plus HTML attributes, which mail clients keep, unlike ``contain`` or
    ``width: 0; min-width: 100%`` tricks that webmail may drop (leaving a zero-width box).

    Only the email gets the frame: the text part and the archive's feed read the same Markdown
    HTML, and a layout table would only be noise there.
    """
    for wrap in root.xpath(_TABLE_WRAP):
        frame = etree.Element(
            "table",
            {
                "class": "table-frame",
                "role": "presentation",
                "width": "100%",  # Outlook reads the attribute, not the style
                "cellpadding": "0",
                "cellspacing": "0",
                "border": "0",
            },
        )
        cell = etree.SubElement(etree.SubElement(etree.SubElement(frame, "tbody"), "tr"), "td")
        frame.tail, wrap.tail = wrap.tail, None  # the text after the scroller stays after the frame
        wrap.addprevious(frame)
        cell.append(wrap)
    return root


_PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)")
PREHEADER_MAX = 140  # characters: about what the longest inbox previews show


def default_preheader(document: Document) -> str:
    """The issue's first sentence, for the inbox preview when the issue gives no ``preheader``.

    Without one, clients preview the masthead ("Crate Notes Crate Notes #18 7 December ...").
    """
    for section in document.sections:
        found = _PARAGRAPH.search(section.html)
        if found is None:
            continue
        text = " ".join(html.unescape(_TAG.sub("", found.group(1))).split())
        sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
        if len(sentence) > PREHEADER_MAX:
            sentence = sentence[:PREHEADER_MAX].rsplit(" ", 1)[0] + "…"
        return sentence
    return ""


# A link whose text is plain text (no markup inside), with at least one word too long for a phone line.
PHONE_LINE = 36  # characters of body text on a 375 px phone at 16 px, with room to spare
_LINK_TEXT = re.compile(rf"(<a\b[^>]*>)([^<]*[^<\s]{{{PHONE_LINE},}}[^<]*)(</a>)")
# After a slash (not between the two of "https://"), and after the query's ? = & and a #.
_BREAK_AFTER = re.compile(r"(?<=[=&?#])|(?<=/)(?!/)")
_CHUNK = 30  # a stretch with no break point longer than this gets one anyway


def break_long_link_texts(document: str) -> str:
    """Give long link texts (URLs shown as text) places to break: ``<wbr>`` after ``/``, ``=``, ``&``...

    ``overflow-wrap``/``word-break`` would do it, but Yahoo and Windows Mail ignore them, and a
    140-character URL then pushes a phone's layout sideways. ``<wbr>`` is plain HTML that every
    client keeps; a stretch that still has no break point gets one every ``_CHUNK`` characters.
    """

    def add_breaks(match: re.Match[str]) -> str:
        text = html.unescape(match.group(2))
        pieces: list[str] = []
        for word in re.split(r"(\s+)", text):
            if len(word) < PHONE_LINE:
                pieces.append(html.escape(word, quote=False))
                continue
            chunks = [
                part[start : start + _CHUNK]
                for part in _BREAK_AFTER.split(word)
                for start in range(0, len(part), _CHUNK)
            ]
            pieces.append("<wbr>".join(html.escape(chunk, quote=False) for chunk in chunks if chunk))
        return match.group(1) + "".join(pieces) + match.group(3)

    return _LINK_TEXT.sub(add_breaks, document)


def inline_stylesheet(templates: Path) -> str:
    try:
        return (templates / INLINE_CSS).read_text(encoding="utf-8")
    except OSError as error:
        raise RenderError(f"{templates / INLINE_CSS}: cannot read: {error.strerror}") from None


@lru_cache(maxsize=1)
def _premailer() -> ModuleType:
    """premailer, imported when a build first inlines CSS (lxml and cssutils: only rendering needs them).

    Its ``import requests`` is deferred: requests only fetches remote stylesheets, which
    ``allow_network=False`` forbids, and importing it costs a fifth of ``newsletter build``.
    """
    premailer = import_deferring("premailer", ["requests"])
    # premailer checks every style attribute against cssutils' CSS profiles even with
    # disable_validation (merge_style.csstext_to_pairs's default), and the verdict only feeds log
    # lines it silences. Without profiles there is nothing to check: compiling their patterns cost
    # each `newsletter build` ~10 ms. The inlined output is the same (the golden files say so).
    import cssutils

    cssutils.profile.removeProfile(all=True)
    return premailer


def inline_css(root: etree._Element, stylesheet: str) -> str:
    """Put ``stylesheet`` on each element with premailer; the document's own style blocks stay as they are.

    The head's blocks (MJML's resets, ``head.css``: the phone layout's media queries and dark
    mode) are marked ``data-premailer="ignore"``, so premailer neither inlines nor drops them:
    inlining MJML's ``p {margin:13px 0}`` on every paragraph would cost kilobytes of the 102 KB
    budget, and media queries cannot be inlined at all. A style attribute already on an element
    (MJML's) wins over the stylesheet.

    premailer is the inliner the specification fixes. css-inline was measured faster (about
    1.6 ms against premailer's 9 to 15 ms for the large sample issue, bench/README.md) and
    not adopted.
    """
    for style in root.iter("style"):
        style.set("data-premailer", "ignore")
    inliner = _premailer().Premailer(
        root,
        css_text=stylesheet,
        allow_network=False,
        strip_important=False,  # the phone layout's media queries rely on !important
        keep_style_tags=False,
        remove_classes=False,  # media queries and dark mode select by class
        disable_validation=True,
        # premailer copies CSS sizes into attributes: `img {height: auto}` would become height="auto",
        # which is invalid HTML (the attribute takes pixels) and some clients read as 0.
        disable_basic_attributes=["height"],
        disable_leftover_css=True,  # nothing is left over: media queries live in the head's own style blocks
        cssutils_logging_level=logging.CRITICAL,
    )
    inliner.transform()  # given a tree, premailer changes it in place
    for style in root.iter("style"):  # premailer passes over a style with a media attribute untouched
        style.attrib.pop("data-premailer", None)
    # The root element, then one doctype before it: without one, clients use quirks mode.
    return "<!doctype html>\n" + str(etree.tostring(root, method="html", encoding="unicode"))


def render_text(templates: Path, context: dict[str, Any]) -> str:
    return _render_template(templates, TEXT_TEMPLATE, context)
