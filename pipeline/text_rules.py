"""Characters no text of ours may carry: control characters and bidirectional overrides.

An ESC or a C1 control in an issue body or an erratum reaches the MJML compiler, which then
fails naming nothing; a bidi override makes text read differently from what it is. They are
refused where the editor typed them, with the line and column, instead.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# C0 controls but tab and line feed (carriage returns are normalised away before this check),
# DEL, the C1 controls (U+0080-U+009F, e.g. U+0085 NEL, U+009B CSI), and the bidi embeddings,
# overrides and isolates.
FORBIDDEN_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Forbidden:
    """The first forbidden character of a text: where it is (1-based) and what it is."""

    line: int
    column: int
    character: str

    def describe(self) -> str:
        return describe_character(self.character)


def describe_character(character: str) -> str:
    """``U+001B (escape)``: how an invisible character is named in an error."""
    name = unicodedata.name(character, "") or _CONTROL_NAMES.get(character, "control character")
    return f"U+{ord(character):04X} ({name.lower()})"


_CONTROL_NAMES = {"\x1b": "escape", "\x00": "null", "\x7f": "delete", "\x85": "next line", "\x9b": "csi"}


def find_forbidden_control(text: str) -> Forbidden | None:
    match = FORBIDDEN_CONTROL.search(text)
    if match is None:
        return None
    start = match.start()
    line_start = text.rfind("\n", 0, start) + 1
    return Forbidden(text.count("\n", 0, start) + 1, start - line_start + 1, match.group())
