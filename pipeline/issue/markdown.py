"""Markdown body -> one parse -> HTML fragments and plain text, one per section, and every link.

CommonMark with GitHub's tables, strikethrough, autolinks (``gfm.py``) and tagfilter, so the email
links what GitHub links in the archive copy. Raw HTML is escaped unless the issue allows it; allowed,
the tags GitHub filters (``<script>``, ``<style>``, ...) are still escaped. Relative URLs are made
absolute, because an inbox has no base URL: pages against the archive, images against the archive's
raw files (a GitHub ``/blob/`` page of an image is an HTML page, not an image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urljoin

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from pipeline.config import Config
from pipeline.issue.gfm import AUTOLINK_MARKUP, FILTERED_TAG, enable_gfm_autolinks, tagfilter
from pipeline.issue.source import Issue
from pipeline.issue.text import TextWriter

LinkKind = Literal["link", "image", "autolink", "email"]

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A Markdown link or reference that did not parse and will show as raw brackets.
# \x00 stands for a backslash-escaped character: the editor meant those brackets.
_UNPARSED_LINK = re.compile(r"\[[^\]\x00\n]*\]\([^)\x00\n]*\)|\[[^\]\x00\n]+\]\[[^\]\x00\n]*\]")


@dataclass(frozen=True)
class Link:
    href: str
    text: str
    """The link's text; an image's alt text."""
    line: int
    """Line in the issue file where the link is written."""
    kind: LinkKind = "link"
    """``link`` ([text](url)), ``image``, ``autolink`` (a bare or <bracketed> URL), ``email`` (an address)."""
    raw: str = ""
    """The target as written (before resolving against the archive), for suggestions that edit the source."""
    relative: bool = False
    """Written as a relative URL (``17.md``, ``img/a.png``, ``/docs``, ``#news``) and resolved here."""
    cut: str = ""
    """For a bare URL: what GFM's autolink rule left out of it at its end that readers then see as
    text right after it (the ``_`` of ``https://x.org/a_``), for ``check`` to judge."""

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


@dataclass(frozen=True)
class UnparsedLink:
    markdown: str
    line: int


@dataclass(frozen=True)
class Section:
    heading: str
    """Plain text of the section's heading; empty for the opening text before the first heading."""
    html: str
    start: int = 0
    """Index in the body's lines where the section begins."""
    level: int = 2
    """Heading level of the body's top-level sections (2 for '##')."""
    text: str = ""
    """The section as plain text (see ``text.py``), its links as references after each paragraph."""


@dataclass
class Document:
    sections: list[Section]
    links: list[Link] = field(default_factory=list)
    unparsed_links: list[UnparsedLink] = field(default_factory=list)
    escaped_html: list[UnparsedLink] = field(default_factory=list)
    """Raw HTML (not comments) shown as text because the issue does not allow HTML."""
    filtered_html: list[UnparsedLink] = field(default_factory=list)
    """Tags GitHub's tagfilter disarms (``<script>``, ...), shown as text although HTML is allowed."""


# A GitHub file URL: https://github.com/OWNER/REPO/blob/BRANCH/folder (the branch: one path segment).
_GITHUB_BLOB = re.compile(r"^(https://github\.com/[^/]+/[^/]+/blob/[^/]+)(/.*)?$")
_GITHUB_RAW = re.compile(r"^(https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+)(/.*)?$")


def is_relative(url: str) -> bool:
    return bool(url) and not _SCHEME.match(url) and not url.startswith("//")


@dataclass(frozen=True)
class UrlResolver:
    """Makes the relative URLs of an issue absolute, as GitHub does in the archive copy.

    Links resolve against the archive folder (``base_url``), bare fragments against the issue's own
    page; images against ``raw_base_url``, where the files themselves are served. A root-relative
    ``/path`` starts at the repository's root on a GitHub URL (GitHub's rule), at the host otherwise.
    """

    base_url: str
    page_url: str
    raw_base_url: str = ""

    def link(self, url: str) -> str:
        return self._resolve(url, self.base_url)

    def image(self, url: str) -> str:
        return self._resolve(url, self.raw_base_url or self.base_url)

    def _resolve(self, url: str, base: str) -> str:
        if not is_relative(url):
            return url
        if url.startswith("#"):
            return self.page_url + url
        root = _GITHUB_BLOB.match(base) or _GITHUB_RAW.match(base)
        if url.startswith("/") and root:
            return root.group(1) + url
        return urljoin(base + "/", url)


def issue_url_resolver(config: Config, issue: Issue) -> UrlResolver:
    """How issue ``issue``'s links resolve: page links against its archive page, images against the raw base."""
    return make_url_resolver(config.archive_base_url, config.archive_url(issue.number), config.raw_base_url)


def make_url_resolver(base_url: str, page_url: str, raw_base_url: str = "") -> UrlResolver:
    return UrlResolver(base_url, page_url, raw_base_url)


_COMMENT = re.compile(r"^\s*<!--.*?-->\s*$", re.DOTALL)


class _EmailRenderer(RendererHTML):
    """Wraps tables so a wide one scrolls; passes raw HTML only when the issue allows it.

    Otherwise raw HTML is shown as text, except comments: those are the editor's
    notes to themselves, never meant for readers.
    """

    def html_block(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        return self._raw_html(tokens[idx].content, env)

    def html_inline(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        return self._raw_html(tokens[idx].content, env)

    @staticmethod
    def _raw_html(content: str, env: EnvType) -> str:
        if env["newsletter"].allow_html:
            return tagfilter(content)
        if _COMMENT.match(content):
            return ""
        return escapeHtml(content)

    def table_open(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        return '<div class="table-wrap">' + self.renderToken(tokens, idx, options, env)

    def table_close(self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        return self.renderToken(tokens, idx, options, env) + "</div>\n"


# A URL made only of characters that need no escaping, with a lower-case ASCII host:
# normalising it is the identity (checked against every URL of the test corpus).
_ALREADY_NORMAL = re.compile(
    r"^(?:[a-z][a-z0-9+.-]*://[a-z0-9.-]*(?::\d+)?)?(?:[A-Za-z0-9;/?:@&=+$,\-_.!~*'()#]|%[0-9A-Fa-f]{2})*$"
)


def _parser() -> MarkdownIt:
    # Raw HTML is always parsed, so comments are recognised; the renderer decides what to do with it.
    md = MarkdownIt("commonmark", {"html": True}, renderer_cls=_EmailRenderer)
    md.enable(["table", "strikethrough"])
    enable_gfm_autolinks(md)
    # Speed: a 6,000-word issue has ~170 links; parsing each URL to normalise it costs ~10 ms.
    normalize = md.normalizeLink
    md.normalizeLink = lambda url: url if _ALREADY_NORMAL.match(url) else normalize(url)  # type: ignore[method-assign]
    # Before text_join, so backslash-escaped brackets are still told apart from raw ones.
    md.core.ruler.before("text_join", "newsletter_unparsed", _unparsed_rule)
    md.core.ruler.push("newsletter_links", _links_rule)
    return md


@dataclass
class _Context:
    lines: list[str]
    body_line: int
    resolve: UrlResolver
    document: Document
    allow_html: bool


def render_markdown(issue: Issue, resolve: UrlResolver, *, with_text: bool = True) -> Document:
    """``with_text=False``: no plain text (the archive's uses want the HTML, the links or the sections)."""
    return render_body(issue.body, issue.body_line, issue.allow_html, resolve, with_text=with_text)


def render_body(
    body: str, body_line: int, allow_html: bool, resolve: UrlResolver, *, with_text: bool = True
) -> Document:
    """Parse ``body`` (which starts on file line ``body_line``) once; render its sections as HTML and text."""
    md = _PARSER
    document = Document(sections=[])
    env = {"newsletter": _Context(body.split("\n"), body_line, resolve, document, allow_html)}
    tokens = md.parse(body, env)
    document.sections = _split_sections(md, tokens, env, allow_html, with_text)
    return document


def _unparsed_rule(state: StateCore) -> None:
    """Find Markdown links that failed to parse and raw HTML that is shown as text."""
    context: _Context = state.env["newsletter"]
    for block in state.tokens:
        if block.type == "inline" and block.children is not None:
            _find_unparsed(block, context)
        elif block.type == "html_block":
            _record_raw_html(block.content, context, block.map[0] if block.map else 0)


def _record_raw_html(content: str, context: _Context, line: int) -> None:
    if _COMMENT.match(content):
        return
    line = context.body_line + line
    if not context.allow_html:
        first = content.strip().split("\n")[0]
        context.document.escaped_html.append(UnparsedLink(first, line))
        return
    for match in FILTERED_TAG.finditer(content):
        offset = content.count("\n", 0, match.start())
        context.document.filtered_html.append(UnparsedLink(f"<{match.group(1)}>", line + offset))


def _find_unparsed(block: Token, context: _Context) -> None:
    lines, body_line, document = context.lines, context.body_line, context.document
    start, end = block.map if block.map else (0, 1)
    plain: list[str] = []
    for token in block.children or []:
        if token.type == "text":
            plain.append(token.content)
        elif token.type == "text_special":
            plain.append("\x00")
        elif token.type in ("softbreak", "hardbreak"):
            plain.append("\n")
        elif token.type == "html_inline" and not _COMMENT.match(token.content):
            if context.allow_html and not FILTERED_TAG.search(token.content):
                continue
            line = _find_line(lines, start, end, (token.content,))
            target = document.filtered_html if context.allow_html else document.escaped_html
            target.append(UnparsedLink(token.content, body_line + line))
    text = "".join(plain)
    for match in _UNPARSED_LINK.finditer(text):
        snippet = match.group(0)
        line = _find_line(lines, start, end, (snippet, snippet.split("](")[0]))
        document.unparsed_links.append(UnparsedLink(snippet, body_line + line))


def _links_rule(state: StateCore) -> None:
    """Resolve URLs and record every link with its kind and line."""
    context: _Context = state.env["newsletter"]
    for block in state.tokens:
        if block.type == "inline" and block.children is not None:
            _visit_links(block, context)


def _visit_links(block: Token, context: _Context) -> None:
    lines, body_line, document = context.lines, context.body_line, context.document
    start, end = block.map if block.map else (0, 1)
    cursor = start
    children = block.children or []
    for index, token in enumerate(children):
        if token.type not in ("link_open", "image"):
            continue
        image = token.type == "image"
        attr = "src" if image else "href"
        raw = str(token.attrs.get(attr, ""))
        token.attrs[attr] = context.resolve.image(raw) if image else context.resolve.link(raw)
        text = token.content if image else _link_text(children, index)
        kind: LinkKind = "image" if image else "link"
        cut = ""
        if token.info == "auto":
            kind = "email" if raw.startswith("mailto:") and not text.startswith("mailto:") else "autolink"
            if token.markup == AUTOLINK_MARKUP:
                cut = _cut_after(children, index)
        cursor = _find_line(lines, cursor, end, (f"]({raw}", f"]({unquote(raw)}", unquote(raw), text))
        document.links.append(
            Link(
                str(token.attrs[attr]),
                text,
                body_line + cursor,
                kind=kind,
                raw=raw,
                relative=is_relative(raw),
                cut=cut,
            )
        )


def _cut_after(children: list[Token], open_index: int) -> str:
    """The characters right after a bare URL that GFM's trailing-punctuation rule may have cut off."""
    depth = 0
    for position in range(open_index, len(children)):
        depth += children[position].nesting if children[position].type.startswith("link") else 0
        if depth == 0:
            following = children[position + 1] if position + 1 < len(children) else None
            if following is not None and following.type == "text":
                match = re.match(r"[?!.,:*_~'\");]+", following.content)
                return match.group(0) if match else ""
            return ""
    return ""


def _link_text(children: list[Token], open_index: int) -> str:
    parts: list[str] = []
    depth = 0
    for token in children[open_index:]:
        if token.type == "link_open":
            depth += 1
        elif token.type == "link_close":
            depth -= 1
            if depth == 0:
                break
        elif token.type in ("text", "text_special", "code_inline", "image"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _find_line(lines: list[str], start: int, end: int, needles: tuple[str, ...]) -> int:
    for needle in needles:
        if not needle:
            continue
        for number in range(start, min(end, len(lines))):
            if needle in lines[number]:
                return number
    return start


def _split_sections(
    md: MarkdownIt, tokens: list[Token], env: EnvType, allow_html: bool, with_text: bool
) -> list[Section]:
    """Split at the top heading level the body uses, so each section becomes one MJML block."""
    levels = [int(t.tag[1]) for t in tokens if t.type == "heading_open" and t.level == 0]
    top = f"h{min(levels)}" if levels else None
    chunks: list[list[Token]] = [[]]
    for token in tokens:
        if token.type == "heading_open" and token.tag == top and token.level == 0:
            chunks.append([])
        chunks[-1].append(token)
    level = int(top[1]) if top else 2
    sections = []
    for chunk in chunks:
        heading = ""
        if chunk and chunk[0].type == "heading_open":
            heading = "".join(c.content for c in chunk[1].children or [] if c.type in ("text", "code_inline"))
        start = next((t.map[0] for t in chunk if t.map), 0)
        html = md.renderer.render(chunk, md.options, env)
        text = TextWriter(allow_html, level).write(chunk) if with_text else ""
        sections.append(Section(heading, html, start, level, text))
    return sections


_PARSER = _parser()
