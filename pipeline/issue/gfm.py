"""GitHub's autolink and tagfilter extensions: the links GitHub shows for bare URLs and addresses,
and the raw HTML tags it disarms.

markdown-it-py's own ``linkify`` (linkify-it-py) follows linkify-it's rules, not GFM's: it links bare
names such as ``README.md``, keeps a trailing ``_`` or ``*`` (``_https://doi.org/x_`` linked to
``https://doi.org/x_``, a 404), and knows no email autolinks GitHub would make. So the extension is
written here from the GFM spec and from cmark-gfm's ``extensions/autolink.c`` (GitHub's renderer),
step for step, at the same places: URLs and ``www.`` are matched while the inline text is parsed (so
a URL swallows the ``*`` or ``_`` inside it before emphasis sees them), email addresses after it,
in the text that ended up outside any link.

One deliberate difference: a URL ends at any Unicode space. cmark-gfm ends it only at an ASCII space,
so ``https://x.org/a_`` followed by a no-break space keeps the ``_`` and swallows the next word.
Not copied either, found by comparing with cmark-gfm on generated text: two of its email slips
(``x@y.org@-a`` links ``y.org@-a``, the dot count of the first address carried over; ``mailto:@x@y.org``
makes a relative link); and markdown-it's URL normaliser drops one ':' of a host followed by '::'. Parser differences outside links remain: markdown-it follows a newer
CommonMark, where ``<!x`` opens an HTML block, and keeps entities in ``<...>`` autolinks as written.
"""

from __future__ import annotations

import re
import string
import unicodedata
import weakref

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

AUTOLINK_MARKUP = "linkify"
"""``Token.markup`` of the links made here (the name markdown-it gives bare-URL links)."""

_SCHEMES = ("http://", "https://", "ftp://")
_WWW_BEFORE = frozenset("*_~( \t\n\r\f\v")
# The end of a URL: a space (any, see the module's docstring) or '<'.
_URL_END = re.compile(r"[\s<]")
_TRIMMED = frozenset("?!.,:*_~'\"")


# GFM's tagfilter: these tags would take over the page (or the email), so GitHub disarms them even in
# allowed raw HTML by escaping their '<'.
FILTERED_TAG = re.compile(
    r"<(/?(?:title|textarea|style|xmp|iframe|noembed|noframes|script|plaintext))(?=[ \t\n\r\f\v>]|/>)",
    re.IGNORECASE,
)


def tagfilter(html: str) -> str:
    return FILTERED_TAG.sub(r"&lt;\1", html)


def enable_gfm_autolinks(md: MarkdownIt) -> None:
    md.inline.ruler.before("text", "gfm_www", _www_rule)
    md.inline.ruler.before("linkify", "gfm_url", _url_rule)
    # The text rule consumes runs of ordinary characters; "www." after a space or '(' must start a
    # new run so that the www rule gets to look at it (cmark-gfm makes 'w' a special character).
    md.inline.terminator_re = re.compile(md.inline.terminator_re.pattern + r"|(?<=[ \t\n\r\f\v(])www\.")
    md.core.ruler.after("text_join", "gfm_email", _email_rule)


def _is_ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _is_hostchar(ch: str) -> bool:
    """Not a space and not punctuation (cmark-gfm: ASCII punctuation and symbols, Unicode P*)."""
    if ch.isspace():
        return False
    if ch.isascii():
        return ch not in string.punctuation
    return not unicodedata.category(ch).startswith("P")


def _domain_end(text: str, allow_short: bool) -> int:
    """cmark-gfm's check_domain: the length of the domain at the start of ``text``, or 0 if invalid.

    Underscores are refused in the last two labels (host names cannot have them).
    """
    size = len(text)
    index, dots, underscores_before, underscores = 1, 0, 0, 0
    while index < size - 1:
        if text[index] == "\\" and index < size - 2:
            index += 1
        ch = text[index]
        if ch == "_":
            underscores += 1
        elif ch == ".":
            underscores_before, underscores = underscores, 0
            dots += 1
        elif ch != "-" and not _is_hostchar(ch):
            break
        index += 1
    if (underscores_before or underscores) and dots <= 10:
        return 0
    if allow_short:
        return index
    return index if dots else 0


def trim_autolink_end(text: str) -> int:
    """GFM's trailing-punctuation rule: how much of the autolink candidate ``text`` is the link.

    Trailing ``? ! . , : * _ ~ ' "`` are dropped, a trailing ``)`` only while there are more closing
    than opening parentheses, and a trailing ``;`` with the entity-like ``&name`` before it.
    """
    end = len(text)
    less = text.find("<")
    if less != -1:
        end = less
    opening = text.count("(", 0, end)
    closing = text.count(")", 0, end)
    while end > 0:
        ch = text[end - 1]
        if ch == ")":
            if closing <= opening:
                return end
            closing -= 1
            end -= 1
        elif ch in _TRIMMED:
            end -= 1
        elif ch == ";":
            start = end - 2
            while start > 0 and text[start].isascii() and text[start].isalpha():
                start -= 1
            end = start if start < end - 2 and text[start] == "&" else end - 1
        else:
            return end
    return end


# A code span (its brackets are text, not brackets), roughly: a backtick run up to the same run.
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)


# The stretches of each inline text already linked as bare URLs: brackets in them are part of a URL.
_LINKED: weakref.WeakKeyDictionary[StateInline, list[tuple[int, int]]] = weakref.WeakKeyDictionary()


def _in_bracket(state: StateInline) -> bool:
    """cmark-gfm links nothing while a '[' is open, even one that turns out not to start a link."""
    if state.linkLevel > 0:
        return True
    src = state.src[: state.pos]
    if "[" not in src:
        return False
    for start, end in reversed(_LINKED.get(state, [])):
        src = src[:start] + src[end:]
    if "`" in src:
        src = _CODE_SPAN.sub("", src)
    depth = 0
    index = 0
    while index < len(src):
        ch = src[index]
        if ch == "\\":
            index += 1
        elif ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        index += 1
    return depth > 0


def _url_end(src: str, start: int, maximum: int) -> int:
    match = _URL_END.search(src, start, maximum)
    return match.start() if match else maximum


def _push_link(state: StateInline, url: str, text: str) -> None:
    token = state.push("link_open", "a", 1)
    token.attrs = {"href": url}
    token.markup = AUTOLINK_MARKUP
    token.info = "auto"
    token = state.push("text", "", 0)
    token.content = text  # as written, like GitHub (markdown-it would decode %-escapes)
    token = state.push("link_close", "a", -1)
    token.markup = AUTOLINK_MARKUP
    token.info = "auto"


def _url_rule(state: StateInline, silent: bool) -> bool:
    """``http://``, ``https://`` or ``ftp://`` URLs, at the ':' (the scheme is already pending text)."""
    src, pos, maximum = state.src, state.pos, state.posMax
    if not src.startswith("://", pos) or pos + 3 >= maximum:
        return False
    pending = state.pending
    rewind = 0
    while rewind < len(pending) and pending[-rewind - 1].isascii() and pending[-rewind - 1].isalpha():
        rewind += 1
    scheme = pending[len(pending) - rewind :]
    # A backslash before a letter escapes nothing, but markdown-it keeps the two as one token: the
    # letter is the scheme's first (cmark-gfm reads the source, where "\ftp://" holds "ftp").
    escape = state.tokens[-1] if rewind == len(pending) and state.tokens else None
    if escape is not None and escape.type == "text_special" and escape.content[1:].isalpha():
        scheme = escape.content[1:] + scheme
    else:
        escape = None
    if scheme.lower() + "://" not in _SCHEMES or not _is_hostchar(src[pos + 3]) or _in_bracket(state):
        return False
    # The domain is checked against the rest of the text, not just up to the next space, as cmark-gfm does.
    if _domain_end(src[pos + 3 : maximum], allow_short=True) == 0:
        return False
    end = _url_end(src, pos, maximum)
    end = pos + trim_autolink_end(src[pos:end])
    if end <= pos + 3:
        return False
    if not silent:
        url = scheme + src[pos:end]
        full = state.md.normalizeLink(url)
        if not state.md.validateLink(full):
            return False
        state.pending = pending[: len(pending) - rewind]
        if escape is not None:
            escape.content = escape.markup = "\\"
        _push_link(state, full, url)
        _LINKED.setdefault(state, []).append((pos, end))
    state.pos = end
    return True


def _www_rule(state: StateInline, silent: bool) -> bool:
    src, pos, maximum = state.src, state.pos, state.posMax
    if not src.startswith("www.", pos) or (pos > 0 and src[pos - 1] not in _WWW_BEFORE):
        return False
    if _in_bracket(state):
        return False
    if _domain_end(src[pos:maximum], allow_short=False) == 0:
        return False
    end = _url_end(src, pos, maximum)
    end = pos + trim_autolink_end(src[pos:end])
    if end <= pos:
        return False
    if not silent:
        text = src[pos:end]
        # cmark-gfm writes http://; browsers and the web have moved to https.
        _push_link(state, state.md.normalizeLink("https://" + text), text)
        _LINKED.setdefault(state, []).append((pos, end))
    state.pos = end
    return True


# ------------------------------------------------------------------------------------------ emails


def _email_rule(state: StateCore) -> None:
    for block in state.tokens:
        if block.type == "inline" and block.children and any("@" in t.content for t in block.children):
            block.children = _link_emails(state, block.children)


def _link_emails(state: StateCore, children: list[Token]) -> list[Token]:
    result: list[Token] = []
    depth = 0
    for token in children:
        if token.type == "link_open":
            depth += 1
        elif token.type == "link_close":
            depth -= 1
        if token.type != "text" or depth or "@" not in token.content:
            result.append(token)
            continue
        result.extend(_split_emails(state, token))
    return result


def _split_emails(state: StateCore, token: Token) -> list[Token]:
    text = token.content
    out: list[Token] = []
    start = 0
    for match_start, match_end, mailto in _find_emails(text):
        if match_start > start:
            out.append(_text_token(text[start:match_start], token))
        address = text[match_start:match_end]
        link_open = Token("link_open", "a", 1, markup=AUTOLINK_MARKUP, info="auto", level=token.level)
        link_open.attrs = {"href": state.md.normalizeLink(("mailto:" if mailto else "") + address)}
        out += [
            link_open,
            _text_token(address, token),
            Token("link_close", "a", -1, markup=AUTOLINK_MARKUP, info="auto", level=token.level),
        ]
        start = match_end
    if not out:
        return [token]
    if start < len(text):
        out.append(_text_token(text[start:], token))
    return out


def _text_token(content: str, like: Token) -> Token:
    return Token("text", "", 0, content=content, level=like.level)


def _protocol_before(text: str, colon: int, protocol: str) -> bool:
    """``mailto:``/``xmpp:`` ends at ``colon`` (inclusive) and starts the text or follows a non-alnum."""
    start = colon + 1 - len(protocol)
    return (
        start >= 0
        and text[start : colon + 1] == protocol
        and (start == 0 or not _is_ascii_alnum(text[start - 1]))
    )


def _find_emails(text: str) -> list[tuple[int, int, bool]]:
    """cmark-gfm's email autolinks in ``text``: (start, end, needs a mailto: prefix) for each."""
    found: list[tuple[int, int, bool]] = []
    size = len(text)
    offset = 0  # where the scan resumes; the text before it is settled
    while offset < size:
        at = text.find("@", offset)
        if at == -1:
            break
        start = at
        mailto, xmpp = True, False
        while start > offset:
            ch = text[start - 1]
            if _is_ascii_alnum(ch) or ch in ".+-_":
                start -= 1
            elif ch == ":" and _protocol_before(text, start - 1, "mailto:"):
                mailto, start = False, start - len("mailto:")
            elif ch == ":" and _protocol_before(text, start - 1, "xmpp:"):
                mailto, xmpp, start = False, True, start - len("xmpp:")
            else:
                break
        if start == at:
            offset = at + 1
            continue
        end, dots, again = at + 1, 0, False
        while end < size:
            ch = text[end]
            if _is_ascii_alnum(ch):
                pass
            elif ch == "@":
                again = True
                break
            elif ch == "." and end + 1 < size and _is_ascii_alnum(text[end + 1]):
                dots += 1
            elif not (ch == "/" and xmpp) and ch not in "-_":
                break
            end += 1
        if again:
            offset = at + 1
            continue
        last = text[end - 1]
        if end - at < 2 or dots == 0 or (not (last.isascii() and last.isalpha()) and last != "."):
            offset = end
            continue
        end = at + trim_autolink_end(text[at:end])
        if end == at:
            offset = at + 1
            continue
        found.append((start, end, mailto))
        offset = end
    return found
