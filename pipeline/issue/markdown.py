"""Markdown body -> HTML fragments, one per section, plus every link with its source line.

CommonMark with GitHub-style tables, strikethrough and autolinks. Raw HTML is
escaped unless the issue allows it. Relative URLs are made absolute against the
archive, because an inbox has no base URL to resolve them against.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from pipeline.issue.source import Issue

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A Markdown link or reference that did not parse and will show as raw brackets.
# \x00 stands for a backslash-escaped character: the editor meant those brackets.
_UNPARSED_LINK = re.compile(r"\[[^\]\x00\n]*\]\([^)\x00\n]*\)|\[[^\]\x00\n]+\]\[[^\]\x00\n]*\]")


@dataclass(frozen=True)
class Link:
    href: str
    text: str
    line: int
    """Line in the issue file where the link is written."""
    is_image: bool = False
    raw: str = ""
    """The target as written (before resolving against the archive), for suggestions that edit the source."""


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


@dataclass
class Document:
    sections: list[Section]
    links: list[Link] = field(default_factory=list)
    unparsed_links: list[UnparsedLink] = field(default_factory=list)
    escaped_html: list[UnparsedLink] = field(default_factory=list)
    """Raw HTML (not comments) shown as text because the issue does not allow HTML."""


def make_url_resolver(base_url: str, page_url: str) -> Callable[[str], str]:
    """Relative URLs resolve against the archive folder; bare fragments against the issue's page."""

    def resolve(url: str) -> str:
        if not url or _SCHEME.match(url) or url.startswith("//"):
            return url
        if url.startswith("#"):
            return page_url + url
        return urljoin(base_url + "/", url)

    return resolve


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
            return content
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
    md = MarkdownIt("commonmark", {"html": True, "linkify": True}, renderer_cls=_EmailRenderer)
    md.enable(["table", "strikethrough", "linkify"])
    # Speed: a 6,000-word issue has ~170 links; parsing each URL to normalise it costs ~10 ms.
    normalize = md.normalizeLink
    md.normalizeLink = lambda url: url if _ALREADY_NORMAL.match(url) else normalize(url)  # type: ignore[method-assign]
    # Speed: GitHub-style autolinks start with a scheme or "www."; text without either need not be scanned.
    linkify = md.linkify
    assert linkify is not None  # enabled above
    pretest = linkify.pretest
    linkify.pretest = lambda text: ("://" in text or "www." in text) and pretest(text)
    # Before text_join, so backslash-escaped brackets are still told apart from raw ones.
    md.core.ruler.before("text_join", "newsletter_links", _links_rule)
    return md


def _links_rule(state: StateCore) -> None:
    context: _Context = state.env["newsletter"]
    for block in state.tokens:
        if block.type == "inline" and block.children is not None:
            block.children = _gfm_autolinks_only(block.children)
            _visit_inline(block, context)
        elif block.type == "html_block" and not context.allow_html and not _COMMENT.match(block.content):
            line = context.body_line + (block.map[0] if block.map else 0)
            context.document.escaped_html.append(UnparsedLink(block.content.strip().split("\n")[0], line))


def _gfm_autolinks_only(children: list[Token]) -> list[Token]:
    """Linkify also links bare names like README.md; GitHub only links scheme URLs and www."""
    kept: list[Token] = []
    skip_close = 0
    for index, token in enumerate(children):
        if token.type == "link_open" and token.markup == "linkify":
            text = _link_text(children, index)
            if not re.match(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://|www\.|mailto:)", text):
                skip_close += 1
                continue
        elif token.type == "link_close" and token.markup == "linkify" and skip_close:
            skip_close -= 1
            continue
        kept.append(token)
    return kept


@dataclass
class _Context:
    lines: list[str]
    body_line: int
    resolve: Callable[[str], str]
    document: Document
    allow_html: bool


_PARSER = _parser()


def render_markdown(issue: Issue, resolve: Callable[[str], str]) -> Document:
    md = _PARSER
    document = Document(sections=[])
    env = {
        "newsletter": _Context(issue.body.split("\n"), issue.body_line, resolve, document, issue.allow_html)
    }
    tokens = md.parse(issue.body, env)
    document.sections = _split_sections(md, tokens, env)
    return document


def _visit_inline(block: Token, context: _Context) -> None:
    """Resolve URLs, record links with their lines, and find links that failed to parse."""
    lines, body_line, document = context.lines, context.body_line, context.document
    start, end = block.map if block.map else (0, 1)
    cursor = start
    plain: list[str] = []
    children = block.children or []
    for index, token in enumerate(children):
        if token.type in ("link_open", "image"):
            attr = "href" if token.type == "link_open" else "src"
            raw = str(token.attrs.get(attr, ""))
            if (
                token.markup == "linkify"
                and raw.startswith("http://")
                and not _link_text(children, index).startswith("http")
            ):
                # The editor wrote "www.example.org" with no scheme: prefer https, as browsers now do.
                raw = "https://" + raw.removeprefix("http://")
            token.attrs[attr] = context.resolve(raw)
            text = token.content if token.type == "image" else _link_text(children, index)
            cursor = _find_line(lines, cursor, end, (f"]({raw}", f"]({unquote(raw)}", unquote(raw), text))
            document.links.append(
                Link(str(token.attrs[attr]), text, body_line + cursor, token.type == "image", raw)
            )
        elif token.type == "text":
            plain.append(token.content)
        elif token.type == "text_special":
            plain.append("\x00")
        elif token.type in ("softbreak", "hardbreak"):
            plain.append("\n")
        elif token.type == "html_inline" and not context.allow_html and not _COMMENT.match(token.content):
            line = _find_line(lines, start, end, (token.content,))
            document.escaped_html.append(UnparsedLink(token.content, body_line + line))
    text = "".join(plain)
    for match in _UNPARSED_LINK.finditer(text):
        snippet = match.group(0)
        line = _find_line(lines, start, end, (snippet, snippet.split("](")[0]))
        document.unparsed_links.append(UnparsedLink(snippet, body_line + line))


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


def _split_sections(md: MarkdownIt, tokens: list[Token], env: EnvType) -> list[Section]:
    """Split at the top heading level the body uses, so each section becomes one MJML block."""
    levels = [int(t.tag[1]) for t in tokens if t.type == "heading_open" and t.level == 0]
    top = f"h{min(levels)}" if levels else None
    chunks: list[list[Token]] = [[]]
    for _index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == top and token.level == 0:
            chunks.append([])
        chunks[-1].append(token)
    sections = []
    for chunk in chunks:
        heading = ""
        if chunk and chunk[0].type == "heading_open":
            heading = "".join(c.content for c in chunk[1].children or [] if c.type in ("text", "code_inline"))
        start = next((t.map[0] for t in chunk if t.map), 0)
        level = int(top[1]) if top else 2
        sections.append(Section(heading, md.renderer.render(chunk, md.options, env), start, level))
    return sections
