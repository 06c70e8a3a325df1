"""Addresses and names as they enter the list: one canonical form per mailbox, no control characters."""

from __future__ import annotations

import unicodedata

import pytest

from pipeline.audience.addresses import address_key, canonical_address, check_address, check_name
from pipeline.text_rules import find_forbidden_control, visible

COMPOSED = "u@bücher.example"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)
SPELLINGS = [COMPOSED, "u@xn--bcher-kva.example", DECOMPOSED, "u@BÜCHER.Example", " u@bücher.example\n"]


@pytest.mark.parametrize("spelling", SPELLINGS, ids=ascii)
def test_every_spelling_of_one_mailbox_has_one_canonical_form_and_key(spelling: str) -> None:
    assert DECOMPOSED != COMPOSED  # the test's premise: two code point sequences, one text
    assert canonical_address(spelling) == check_address(spelling) == COMPOSED
    assert address_key(spelling) == "u@xn--bcher-kva.example"


def test_the_local_part_is_kept_as_typed_and_keyed_without_case() -> None:
    assert canonical_address("Ada.Lovelace@Example.ORG") == "Ada.Lovelace@example.org"
    assert address_key("Ada.Lovelace@Example.ORG") == address_key("ada.lovelace@example.org")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("plain text, tab\tand newline\n", None),
        ("Zoë Ñuñez 名前 🙂", None),
        ("esc\x1b[31m", (3, "\x1b")),
        ("cr\r", (2, "\r")),
        ("nul\x00", (3, "\x00")),
        ("del\x7f", (3, "\x7f")),
        ("nel\x85", (3, "\x85")),
        ("csi\x9b2J", (3, "\x9b")),
        ("\u202eevil", (0, "\u202e")),
        ("lre\u202a", (3, "\u202a")),
        ("isolate\u2066x\u2069", (7, "\u2066")),
        ("pdi\u2069", (3, "\u2069")),
    ],
    ids=ascii,
)
def test_find_forbidden_control(text: str, found: tuple[int, str] | None) -> None:
    assert find_forbidden_control(text) == found


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("Eve\x1b]0;pwned\x07", "U+001B (escape) at character 4"),
        ("Eve\x85", "U+0085 (next line) at character 4"),  # str.split() would have turned it into a space
        ("\x1fEve", "U+001F (control character) at character 1"),
        ("Eve \u202egnp.exe", "U+202E (right-to-left override) at character 5"),
        ("Eve\u2067", "U+2067 (right-to-left isolate) at character 4"),
        ("Eve\x9b", "U+009B (csi) at character 4"),
    ],
    ids=ascii,
)
def test_names_with_control_characters_are_refused_naming_the_character(name: str, named: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_name(name)
    assert str(refused.value) == f"name contains the control character {named}"


def test_names_keep_their_letters_and_lose_extra_white_space() -> None:
    assert check_name("  Zoë\t Ñuñez\n") == "Zoë Ñuñez"


@pytest.mark.parametrize(
    "address", ["u\x85@example.org", "u@example.org\x85", "\u202eu@example.org"], ids=ascii
)
def test_addresses_with_control_characters_are_refused_even_at_the_edges(address: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        canonical_address(address)


def test_visible_writes_controls_as_escapes() -> None:
    assert visible("a\x1b[2Jb\u202ec\td\ne\x85 ü") == "a\\x1b[2Jb\\u202ec\\td\\ne\\x85 ü"
