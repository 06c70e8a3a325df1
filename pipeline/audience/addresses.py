"""Email addresses and names as they enter the list: validated, one canonical form, ASCII for the wire."""

from __future__ import annotations

from pipeline.text_rules import control_problem, mailbox, mailbox_key


def canonical_address(address: str) -> str:
    """The one form an address is stored in, from any spelling of it (see :func:`pipeline.text_rules.mailbox`);
    ValueError (a sentence) when it is not a valid address."""
    return mailbox(address).address


# Every door an address comes in by (CSV, CLI, web form) validates it this way.
check_address = canonical_address


def address_key(address: str) -> str:
    """Equal for every spelling of one mailbox: what the list is unique by, and looked up by."""
    return mailbox_key(address)


def ascii_address(address: str) -> str:
    """The form that goes in headers and envelopes: an internationalised domain in punycode."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        raise ValueError(f"{address!r}: the domain cannot be written in ASCII") from None


def check_name(name: str) -> str:
    """The name tidied to single spaces; ValueError when it holds a control character (checked before
    tidying: Python counts U+0085 and U+001C-U+001F as white space and would hide them)."""
    problem = control_problem(name)
    if problem:
        raise ValueError(f"name {problem}")
    return " ".join(name.split())
