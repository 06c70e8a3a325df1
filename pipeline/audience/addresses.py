"""Email addresses and names as they enter the list: validated, and their ASCII form for the wire."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_address(address: str) -> str:
    """The address as given (trimmed), if it is a valid one; no DNS look-ups."""
    # Imported here: building an issue (which needs ascii_address) should not load its tables.
    from email_validator import EmailNotValidError, validate_email

    address = address.strip()
    if _CONTROL.search(address):
        raise ValueError("contains control characters")
    try:
        # No SMTPUTF8: a non-ASCII mailbox name cannot be sent through SES or most servers.
        # Non-ASCII domains are fine; they are sent in their ASCII (punycode) form.
        validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return address


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
    name = " ".join(name.split())
    if _CONTROL.search(name):
        raise ValueError("name contains control characters")
    return name
