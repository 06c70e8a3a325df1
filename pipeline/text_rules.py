"""Rules for text that enters the pipeline from people: which characters are refused, and the one
form of an email address that decides whether two spellings are the same mailbox.

It sits just above ``errors`` so that every layer may use it: the audience (names, addresses), the
issue source (bodies, errata) and the database's own migrations (re-keying stored addresses). An ESC
or a C1 control in an issue body or an erratum would reach the MJML compiler, which then fails
naming nothing: they are refused where they were typed, with the line and column, instead.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

# C0 controls but tab and newline, DEL, the C1 controls (U+0085 NEL, U+009B CSI, ...) and the bidi
# embeddings, overrides and isolates: invisible, they can reorder or hide what a reader (or a
# terminal, a spreadsheet) shows, so they are never legitimate in a name, an address or an issue.
FORBIDDEN_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

_ANY_CONTROL = re.compile(f"[\t\n{FORBIDDEN_CONTROL.pattern[1:-1]}]")

# unicodedata.name() has no names for control characters; these are the ones people meet.
_CONTROL_NAMES = {
    "\x00": "null",
    "\x07": "bell",
    "\x08": "backspace",
    "\x0b": "vertical tab",
    "\x0c": "form feed",
    "\r": "carriage return",
    "\x1b": "escape",
    "\x7f": "delete",
    "\x85": "next line",
    "\x9b": "csi",
}


@dataclass(frozen=True)
class Forbidden:
    """The first forbidden character of a text: where it is (1-based) and what it is."""

    line: int
    column: int
    character: str

    def describe(self) -> str:
        return describe_character(self.character)


def find_forbidden_control(text: str) -> tuple[int, str] | None:
    """The index and character of the first control character ``text`` must not hold, or None.

    Tab and newline are allowed (what a field does with them is its own business)."""
    found = FORBIDDEN_CONTROL.search(text)
    return None if found is None else (found.start(), found.group())


def locate_forbidden_control(text: str) -> Forbidden | None:
    """:func:`find_forbidden_control` as a line and column, for an error that points into a file."""
    found = find_forbidden_control(text)
    if found is None:
        return None
    start, char = found
    line_start = text.rfind("\n", 0, start) + 1
    return Forbidden(text.count("\n", 0, start) + 1, start - line_start + 1, char)


def describe_character(char: str) -> str:
    """``U+001B (escape)``: how an error message names an invisible character."""
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "") or "control character"
    return f"U+{ord(char):04X} ({name.lower()})"


def control_problem(text: str) -> str | None:
    """One clause for an error message about the first forbidden control character, or None."""
    found = find_forbidden_control(text)
    if found is None:
        return None
    index, char = found
    return f"contains the control character {describe_character(char)} at character {index + 1}"


class Mailbox(NamedTuple):
    address: str
    """The form stored and shown: the local part as typed, the domain lower-cased, NFC, in Unicode."""
    key: str
    """Equal for every spelling of one mailbox: local part case-folded, domain in IDNA ASCII."""


def mailbox(text: str) -> Mailbox:
    """The canonical form and the uniqueness key of an address; ValueError (a sentence) when invalid.

    ``u@bücher.example``, ``u@xn--bcher-kva.example``, ``U@BÜCHER.example`` and a decomposed spelling
    of the first are one mailbox. No DNS look-ups. No SMTPUTF8: a non-ASCII mailbox name cannot be
    sent through SES or most servers (non-ASCII domains are fine; they go out in punycode)."""
    problem = control_problem(text)  # before trimming: str.strip() drops U+0085 and U+001C-U+001F too
    if problem:
        raise ValueError(problem)
    # Imported here: building an issue (which checks its text with this module) need not load its tables.
    from email_validator import EmailNotValidError, validate_email

    text = text.strip()
    try:
        valid = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return Mailbox(valid.normalized, f"{valid.local_part.casefold()}@{valid.ascii_domain.lower()}")


def mailbox_key(text: str) -> str:
    """:func:`mailbox`'s key; for text that is no valid address (a row stored under older, looser rules,
    or a look-up), the NFC case-folded text, so such a row can still be found and removed."""
    try:
        return mailbox(text).key
    except ValueError:
        return unicodedata.normalize("NFC", text.strip()).casefold()


def visible(text: str) -> str:
    """``text`` with every control character (tab and newline too) written as an escape (``\\x1b``), for
    a one-line message or a listing that quotes what someone sent: a terminal must show it, not obey it."""
    return _ANY_CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode(), text)
