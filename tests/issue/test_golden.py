from __future__ import annotations

import difflib
import email
import email.policy
from email.message import EmailMessage

import pytest

from tests.golden import GOLDEN, MESSAGE_NAME, golden_message, render_outputs, sample_numbers


@pytest.mark.parametrize("number", sample_numbers())
def test_rendering_matches_golden_files(number: int) -> None:
    for name, actual in render_outputs(number).items():
        path = GOLDEN / name
        assert path.exists(), f"no golden file {path.name}: run `make golden`"
        expected = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = difflib.unified_diff(
                expected.splitlines(), actual.splitlines(), f"golden/{name}", "rendered", lineterm="", n=1
            )
            pytest.fail(
                f"{name} differs from its golden file (run `make golden` if intended):\n"
                + "\n".join(list(diff)[:40])
            )


def test_every_golden_file_has_a_sample_issue() -> None:
    expected = {f"{n}.{ext}" for n in sample_numbers() for ext in ("html", "txt")} | {MESSAGE_NAME}
    assert {p.name for p in GOLDEN.glob("*.*")} == expected


def test_message_bytes_match_golden_file() -> None:
    """MessageTemplate splices per-recipient quoted-printable into pre-encoded stretches: pin the bytes."""
    actual, _, _ = golden_message()
    path = GOLDEN / MESSAGE_NAME
    assert path.exists(), f"no golden file {path.name}: run `make golden`"
    expected = path.read_bytes()
    if actual != expected:
        diff = difflib.unified_diff(
            expected.decode("ascii", "replace").splitlines(),
            actual.decode("ascii", "replace").splitlines(),
            f"golden/{MESSAGE_NAME}",
            "built",
            lineterm="",
            n=1,
        )
        pytest.fail(
            f"{MESSAGE_NAME} differs from its golden file (run `make golden` if intended):\n"
            + "\n".join(list(diff)[:40])
        )


def ended(part: str) -> str:
    """``part`` as a decoded MIME part has it: LF line ends, and a line end at the end."""
    part = part.replace("\r\n", "\n")
    return part if part.endswith("\n") else part + "\n"


def test_message_decodes_to_the_rendered_parts() -> None:
    """Whatever the splicing did, a mail client decoding the message must get exactly the rendered
    text and HTML with this recipient's values filled in."""
    raw, rendered, values = golden_message()
    assert all(len(line) <= 78 for line in raw.split(b"\r\n")), "a line longer than SMTP allows"
    assert b"\n" not in raw.replace(b"\r\n", b""), "a bare LF"
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "Zoë Ñuñez <reader@example.org>"
    assert message["Subject"] == rendered.issue.subject
    assert message.get_content_type() == "multipart/alternative"
    html, text = rendered.personalise(values)
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    # On the wire lines end in CRLF, and a MIME part ends with a line end before the boundary.
    assert text_part.get_content().replace("\r\n", "\n") == ended(text)
    assert html_part.get_content().replace("\r\n", "\n") == ended(html)
    assert values["unsubscribe_url"] in text_part.get_content()
