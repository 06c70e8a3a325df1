"""Markdown tokens -> the plain-text part: written for people who read their mail as plain text.

From the same tokens as the HTML (one parse), never from the HTML. Lines are wrapped at 72
columns and never inside a word, so a URL is never broken (a line is longer only when one word is).
Headings are underlined, list items and quotes indented, code kept as it is, tables laid out as
aligned columns (or, when too wide, one "header: value" line per cell).

Links: a link whose text is its own address is written as the address. Any other link keeps its
words, marked ``[n]``, and the addresses follow as ``[n] URL`` lines right after the paragraph, list
item, quote or table they belong to, so the URL stays next to the words it belongs to (not in a pile
at the end of the email) and 100-character URLs do not break up the sentences. Numbers restart
in each section of the email. Images are ``[alt text]`` with their address as a reference.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from markdown_it.token import Token

from pipeline.issue.gfm import FILTERED_TAG

WIDTH = 72
_GLUE = "\x00"  # joins a link's last word to its [n] while wrapping; becomes a space after
_TAG = re.compile(r"<[^>]*>")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


@dataclass
class _References:
    """The links of the block being written, to list after it."""

    next_number: int = 1
    pending: list[tuple[int, str]] = field(default_factory=list)

    def add(self, url: str) -> int:
        for number, known in self.pending:
            if known == url:
                return number
        number = self.next_number
        self.next_number += 1
        self.pending.append((number, url))
        return number

    def flush(self) -> list[str]:
        lines = [f"[{number}] {url}" for number, url in self.pending]
        self.pending = []
        return lines


def _same_address(text: str, href: str) -> bool:
    """Whether a link's text already tells the reader its address (then no reference is needed)."""
    text = text.strip()
    return text == href or "mailto:" + text == href or text.removesuffix("/") == href.removesuffix("/")


def _wrap(text: str, width: int) -> list[str]:
    """Greedy wrapping at spaces (not at no-break spaces, never inside a word); a word longer than
    the line gets a line of its own. (textwrap does the same, four times slower.)"""
    width = max(width, 20)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            if not word:
                continue
            if not current:
                current = word
            elif len(current) + 1 + len(word) <= width:
                current += " " + word
            else:
                lines.append(current.replace(_GLUE, " "))
                current = word
        lines.append(current.replace(_GLUE, " "))
    return lines


class TextWriter:
    """Writes one section's tokens as plain text; ``allow_html`` as the issue says."""

    def __init__(self, allow_html: bool, top_level: int) -> None:
        self.allow_html = allow_html
        self.top_level = top_level
        self.references = _References()

    def write(self, tokens: Sequence[Token]) -> str:
        lines = self._blocks(tokens, 0, len(tokens), WIDTH, top=True)
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(line.rstrip() for line in lines)

    # ------------------------------------------------------------------ blocks

    def _blocks(self, tokens: Sequence[Token], start: int, end: int, width: int, *, top: bool) -> list[str]:
        """The blocks in ``tokens[start:end]``, each followed by a blank line; at the top level
        (``top``), each block's link references come right after it."""
        lines: list[str] = []
        index = start
        while index < end:
            close = _closing(tokens, index)
            block = self._block(tokens, index, close, width)
            if block is not None:
                lines += block
                if top:
                    lines += self.references.flush()
                lines.append("")
            index = close + 1
        return lines

    def _block(self, tokens: Sequence[Token], index: int, close: int, width: int) -> list[str] | None:
        token = tokens[index]
        kind = token.type
        if kind == "paragraph_open":
            return _wrap(self._inline(tokens[index + 1]), width)
        if kind == "heading_open":
            title = self._inline(tokens[index + 1]).replace(_GLUE, " ").replace("\n", " ")
            underline = "=" if int(token.tag[1]) <= self.top_level else "-"
            return [*_wrap(title, width), underline * min(len(title), width)]
        if kind in ("bullet_list_open", "ordered_list_open"):
            return self._list(tokens, index, close, width)
        if kind == "blockquote_open":
            inner = self._blocks(tokens, index + 1, close, width - 2, top=False)
            inner += self.references.flush()
            while inner and not inner[-1]:
                inner.pop()
            return [("> " + line) if line else ">" for line in inner]
        if kind in ("fence", "code_block"):
            return ["    " + line for line in token.content.rstrip("\n").split("\n")]
        if kind == "hr":
            return ["* * *"]
        if kind == "table_open":
            return self._table(tokens, index, close, width)
        if kind == "html_block":
            text = self._raw_html(token.content).strip("\n")
            return _wrap(text, width) if text.strip() else None
        return None

    def _list(self, tokens: Sequence[Token], index: int, close: int, width: int) -> list[str]:
        ordered = tokens[index].type == "ordered_list_open"
        number = int(tokens[index].attrs.get("start", 1) or 1)
        # markdown-it hides the paragraphs of a tight list (no blank lines between its items).
        tight = index + 2 < close and tokens[index + 2].hidden
        lines: list[str] = []
        item = index + 1
        while item < close:
            item_close = _closing(tokens, item)
            marker = f"{number}. " if ordered else "- "
            indent = " " * len(marker)
            inner = self._blocks(tokens, item + 1, item_close, width - 2 - len(marker), top=False)
            if _is_top_list(tokens, index):
                inner += self.references.flush()
            while inner and not inner[-1]:
                inner.pop()
            if tight:
                inner = [line for line in inner if line]
            for position, line in enumerate(inner or [""]):
                lead = marker if position == 0 else indent
                lines.append(("  " + lead + line) if line else "")
            if not tight:
                lines.append("")
            number += 1
            item = item_close + 1
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def _table(self, tokens: Sequence[Token], index: int, close: int, width: int) -> list[str]:
        rows: list[list[str]] = []
        right: list[bool] = []
        for position in range(index, close):
            token = tokens[position]
            if token.type == "tr_open":
                rows.append([])
            elif token.type in ("th_open", "td_open"):
                cell = self._inline(tokens[position + 1]).replace(_GLUE, " ").replace("\n", " ")
                rows[-1].append(cell)
                if len(rows) == 1:
                    right.append("right" in str(token.attrs.get("style", "")))
        columns = max(len(row) for row in rows)
        for row in rows:
            row.extend([""] * (columns - len(row)))
        widths = [max(len(row[c]) for row in rows) for c in range(columns)]
        if sum(widths) + 2 * (columns - 1) <= width:
            lines = []
            for number, row in enumerate(rows):
                cells = [
                    cell.rjust(widths[c]) if right[c] else cell.ljust(widths[c]) for c, cell in enumerate(row)
                ]
                lines.append("  ".join(cells).rstrip())
                if number == 0:
                    lines.append("  ".join("-" * w for w in widths))
            return lines
        # Too wide for columns: each row as "header: value" lines, rows apart.
        header, lines = rows[0], []
        for row in rows[1:]:
            for name, cell in zip(header, row, strict=True):
                lines += _wrap(f"{name}: {cell}" if name else cell, width)
            lines.append("")
        return lines[:-1]

    # ------------------------------------------------------------------ inline

    def _inline(self, block: Token) -> str:
        parts: list[str] = []
        link_stack: list[tuple[str, int]] = []  # (href, where the link's text starts in parts)
        for token in block.children or []:
            kind = token.type
            if kind == "text":
                parts.append(token.content)
            elif kind == "code_inline":
                # A short code span stays on one line: `tesc check` split over two reads as two words.
                code = token.content if len(token.content) > 30 else token.content.replace(" ", _GLUE)
                parts.append(f"`{code}`")
            elif kind == "softbreak":
                parts.append(" ")
            elif kind == "hardbreak":
                parts.append("\n")
            elif kind == "s_open" or kind == "s_close":
                parts.append("~~")
            elif kind == "link_open":
                link_stack.append((str(token.attrs.get("href", "")), len(parts)))
            elif kind == "link_close" and link_stack:
                href, start = link_stack.pop()
                text = "".join(parts[start:])
                if not href or _same_address(text, href):
                    continue
                if token.info == "auto":
                    # A bare "www.example.org": written as the https:// URL the HTML links to.
                    del parts[start:]
                    parts.append(href.removeprefix("mailto:"))
                    continue
                parts.append(f"{_GLUE}[{self.references.add(href)}]")
            elif kind == "image":
                alt = token.content or "image"
                parts.append(f"[{alt}]{_GLUE}[{self.references.add(str(token.attrs.get('src', '')))}]")
            elif kind == "html_inline":
                parts.append(self._raw_html(token.content))
        return "".join(parts)

    def _raw_html(self, content: str) -> str:
        """Raw HTML as the HTML part shows it: its text when the issue allows HTML (the tags the
        tagfilter disarms stay, as the HTML part shows them), else as written."""
        content = _COMMENT.sub("", content)
        if not self.allow_html:
            return content
        return html.unescape(
            _TAG.sub(lambda tag: tag.group(0) if FILTERED_TAG.match(tag.group(0)) else "", content)
        )


def _closing(tokens: Sequence[Token], index: int) -> int:
    """The index of the token that closes ``tokens[index]`` (itself for a token that opens nothing)."""
    if tokens[index].nesting != 1:
        return index
    depth = 0
    for position in range(index, len(tokens)):
        depth += tokens[position].nesting
        if depth == 0:
            return position
    return len(tokens) - 1


def _is_top_list(tokens: Sequence[Token], index: int) -> bool:
    return tokens[index].level == 0
