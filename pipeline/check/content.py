"""Find what would make an issue break in an inbox: size past Gmail's clip, malformed links."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from pipeline.config import Config
from pipeline.issue.markdown import Link
from pipeline.issue.render import Rendered

if TYPE_CHECKING:
    from pipeline.check.links import LinkResult  # httpx: loaded only when links are checked

Severity = Literal["error", "warning"]

_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_DOUBLED_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:/*[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_BLOCKED_SCHEMES = ("javascript:", "vbscript:", "data:")
_LOOKS_LIKE_URL = re.compile(r"^(?:https?://|www\.)\S+$", re.IGNORECASE)
_URL_WITH_ZERO_WIDTH = re.compile(rf"(?:https?://|www\.)[^\s<>()\]]*[{_ZERO_WIDTH}]", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Problem:
    line: int
    """Line in the issue source; 0 for problems of the whole issue."""
    severity: Severity
    message: str

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        return f"{where}: {self.severity}: {self.message}"


def check_rendered(rendered: Rendered, html_size: int, max_html_bytes: int) -> list[Problem]:
    problems: set[Problem] = set()
    if html_size > max_html_bytes:
        problems.add(
            Problem(
                0,
                "error",
                f"the HTML part is {html_size:,} bytes as sent (quoted-printable), over the budget of "
                f"{max_html_bytes:,}: Gmail clips it, hiding the end of the issue and the unsubscribe link",
            )
        )
    issue = rendered.issue
    lines = issue.body.split("\n")

    def source_line(line: int) -> str:
        index = line - issue.body_line
        return lines[index] if 0 <= index < len(lines) else ""

    for link in rendered.document.links:
        problems.update(check_link(link, source_line(link.line)))
    for unparsed in rendered.document.unparsed_links:
        problems.add(Problem(unparsed.line, "error", _unparsed_message(unparsed.markdown)))
    for raw in rendered.document.escaped_html:
        problems.add(
            Problem(
                raw.line,
                "warning",
                f"raw HTML {raw.markdown[:40]!r} is shown as text (allow_html: true passes it through)",
            )
        )
    for raw in rendered.document.filtered_html:
        problems.add(
            Problem(
                raw.line,
                "warning",
                f"raw HTML {raw.markdown[:40]!r} is shown as text: GitHub's tagfilter disarms it, so the email does too",
            )
        )
    for offset, line in enumerate(lines):
        if _URL_WITH_ZERO_WIDTH.search(line):
            problems.add(
                Problem(issue.body_line + offset, "error", "invisible zero-width character inside a URL")
            )
    return sorted(problems)


def check_link(link: Link, source_line: str = "") -> list[Problem]:
    href = link.href.strip()
    decoded = unquote(href)
    kind = "image" if link.is_image else "link"

    def problem(severity: Severity, message: str) -> Problem:
        return Problem(link.line, severity, f"{kind} {link.text!r}: {message}")

    if not href:
        return [problem("error", "empty target")]
    scheme = urlsplit(href).scheme.lower()
    if href.lower().startswith(_BLOCKED_SCHEMES) and not link.is_image:
        return [problem("error", f"{scheme}: target ({href[:60]}) is blocked by mail clients")]
    found = []
    if _DOUBLED_SCHEME.match(href):
        found.append(problem("error", f"doubled scheme in {href}"))
    if any(ch in decoded for ch in _ZERO_WIDTH):
        found.append(problem("error", f"invisible zero-width character in {href}"))
    # %20 is a legitimate escape; a space the editor typed (``[x](<http://a b>)``) is not.
    if any(ch.isspace() for ch in decoded) and decoded in source_line:
        found.append(problem("error", f"space inside the URL {href}"))
    if scheme == "http":
        found.append(problem("warning", f"plain http:// link, use https:// if the site offers it: {href}"))
    cut = _meant_as_part_of_url(link, source_line)
    if cut:
        found.append(
            problem(
                "warning",
                f"the bare URL ends before {cut!r} (GitHub's autolink rule): readers get {href}; "
                f"if {cut!r} belongs to it, write <{link.text}{cut}> or [text]({link.text}{cut})",
            )
        )
    text = link.text.strip()
    if _LOOKS_LIKE_URL.match(text) and _comparable(text) != _comparable(href):
        found.append(problem("warning", f"the text looks like a URL but the link goes to {href}"))
    return found


def _meant_as_part_of_url(link: Link, source_line: str) -> str:
    """What GFM cut off a bare URL's end that the editor clearly meant as part of it, or "".

    Sentence punctuation after a URL is normal. Left as text right after it are the characters
    that end URLs but not sentences: ``_ ~ *`` (``https://x.org/a_``), and a ``)`` that closes no
    parenthesis opened before the URL (``https://en.wikipedia.org/wiki/Rust_(language``...``)``).
    """
    if link.kind != "autolink" or not link.cut:
        return ""
    cut = link.cut.rstrip(".,:;!?'\"")
    if any(ch in cut for ch in "_~*"):
        return cut
    if ")" in cut and not _open_parenthesis(source_line.split(link.text, 1)[0]):
        return cut
    return ""


def _open_parenthesis(text: str) -> bool:
    """Whether ``text`` ends inside an unclosed parenthesis."""
    depth = 0
    for ch in reversed(text):
        if ch == ")":
            depth += 1
        elif ch == "(":
            if depth == 0:
                return True
            depth -= 1
    return False


def _unparsed_message(markdown: str) -> str:
    target = markdown.partition("](")[2].strip().lower()
    if target.startswith(_BLOCKED_SCHEMES):
        return f"{markdown}: {target.partition(':')[0]}: links are blocked by mail clients and not rendered"
    return (
        f"{markdown} is not a link (a space in the URL, or an undefined reference?): "
        "readers would see the raw brackets"
    )


def _comparable(url: str) -> str:
    """Ignore differences a reader would not notice: scheme, 'www.', a trailing slash, escaping."""
    url = unquote(url).lower()
    url = re.sub(r"^[a-z]+://", "", url)
    return url.removeprefix("www.").rstrip("/")


def http_problems(links: list[Link], results: dict[str, LinkResult]) -> list[Problem]:
    """Broken links are errors; a permanent redirect is a warning suggesting the new address."""
    problems: set[Problem] = set()
    for link in links:
        result = results.get(link.href)
        if result is None:
            continue
        kind = "image" if link.is_image else "link"
        if not result.ok:
            problems.add(
                Problem(link.line, "error", f"{kind} {link.text!r}: {result.describe()}: {link.href}")
            )
        elif result.permanent_redirect:
            problems.add(
                Problem(link.line, "warning", f"{kind} {link.text!r}: {link.href} {result.describe()}")
            )
    return sorted(problems)


# --- images -----------------------------------------------------------------------------------------

IMAGE_MAX_BYTES = 200_000
"""An image larger than this loads slowly on a phone's connection (and some clients block it)."""


def raw_base_known(config: Config) -> bool:
    """Whether a relative image can be made into a URL that serves the image itself: ``[archive]
    raw_base_url`` is set, or derived from a github.com/OWNER/REPO/blob/BRANCH ``archive_base_url``.
    Any other archive page serves HTML, not the image (``raw_base_url`` then falls back to it)."""
    return bool(config.archive_raw_base_url) or config.raw_base_url != config.archive_base_url


def image_problems(config: Config, rendered: Rendered) -> list[Problem]:
    """Images a reader would miss: no alt text, a relative path no inbox can load, data: URIs, heavy files."""
    problems: list[Problem] = []
    for image in (link for link in rendered.document.links if link.is_image):
        written = image.raw or image.href
        name = f"image {written[:70]!r}"

        def problem(severity: Severity, message: str, *, line: int = image.line, name: str = name) -> None:
            problems.append(Problem(line, severity, f"{name}: {message}"))

        if not image.text.strip():
            problem(
                "warning",
                "no alt text: readers whose client blocks images, and screen readers, get nothing; "
                "write ![what it shows](...), or leave it empty only for a purely decorative image",
            )
        scheme = urlsplit(written).scheme.lower() if written else ""
        if scheme == "data":
            problem(
                "warning",
                "a data: URI: Gmail and Outlook do not show embedded images, and its bytes count "
                "against the clip budget; host the image and link to it",
            )
        elif written and not scheme and not written.startswith(("//", "#")) and not raw_base_known(config):
            problem(
                "error",
                f"a relative image with no raw base to resolve it against: an inbox would ask "
                f"{image.href} for it, which is a page, not the image; use an absolute URL "
                "(or set [archive] raw_base_url)",
            )
        size = _known_size(config, written)
        if size is not None and size > IMAGE_MAX_BYTES:
            problem(
                "warning",
                f"{size / 1e6:.1f} MB, over {IMAGE_MAX_BYTES // 1000} KB: slow to load on a phone; "
                "scale it down or compress it",
            )
    if rendered.issue.allow_html:  # raw <img> tags pass through as written
        issue = rendered.issue
        for offset, text in enumerate(issue.body.split("\n")):
            for tag in _RAW_IMAGE.findall(text):
                if not _ALT.search(tag):
                    problems.append(
                        Problem(
                            issue.body_line + offset,
                            "warning",
                            f"image {tag[:70]!r}: no alt attribute: screen readers read out the file "
                            'name; add alt="what it shows" (alt="" only for a purely decorative image)',
                        )
                    )
    return problems


_RAW_IMAGE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ALT = re.compile(r"\salt\s*=", re.IGNORECASE)


def _known_size(config: Config, written: str) -> int | None:
    """The image's size in bytes when it is known without the network: a data: URI, a local file."""
    if written.lower().startswith("data:"):
        header, _, payload = written.partition(",")
        return len(payload) * 3 // 4 if header.lower().endswith(";base64") else len(unquote(payload))
    if not written or urlsplit(written).scheme or written.startswith(("/", "#")):
        return None
    path = unquote(written.split("#", 1)[0].split("?", 1)[0])
    for folder in (config.paths.archive, config.paths.issues):
        try:
            return (folder / path).stat().st_size
        except (OSError, ValueError):
            continue
    return None
