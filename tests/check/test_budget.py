"""The clip budget counts the HTML part as it travels (quoted-printable), not the decoded HTML."""

from __future__ import annotations

import email
from email import policy

from pipeline.check.gate import check_build
from pipeline.issue.build import build_issue
from pipeline.send.message import html_size_as_sent, sample_as_sent
from tests.support.newsletter import Newsletter


def set_budget(newsletter: Newsletter, size: int) -> None:
    path = newsletter.config_path
    path.write_text(path.read_text().replace("max_html_bytes = 102000", f"max_html_bytes = {size}"))


def test_the_budget_counts_the_encoded_html_part(newsletter: Newsletter) -> None:
    newsletter.write_issue(4, "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9s = \u20ac5.\n\n" * 40)
    build = build_issue(newsletter.config(), 4)
    message = sample_as_sent(newsletter.config(), build.rendered)
    sent = html_size_as_sent(message)
    decoded = len(build.html.encode("utf-8"))
    html_part = next(
        part
        for part in email.message_from_bytes(message, policy=policy.default).walk()
        if part.get_content_type() == "text/html"
    )
    assert html_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert html_part.get_content().splitlines() == build.html.splitlines()  # the same HTML, decoded
    assert sent > decoded * 1.05, (sent, decoded)  # escapes and soft line breaks
    # A budget between the two sizes: the decoded HTML fits, the message as sent does not.
    set_budget(newsletter, (sent + decoded) // 2)
    problems = check_build(newsletter.config(), build_issue(newsletter.config(), 4))
    assert [p.severity for p in problems] == ["error"]
    assert f"the HTML part is {sent:,} bytes as sent (quoted-printable)" in problems[0].message
