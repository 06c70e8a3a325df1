from __future__ import annotations

import pytest

from pipeline.check.content import Problem
from pipeline.check.gate import check_build
from pipeline.issue.build import build_issue
from tests.conftest import Newsletter


def problems_for(newsletter: Newsletter, body: str) -> list[Problem]:
    newsletter.write_issue(4, body)
    config = newsletter.config()
    return check_build(config, build_issue(config, 4))


# The issue file has 5 front matter lines and a blank line: the body's first line is line 7.
@pytest.mark.parametrize(
    ("body", "severity", "message"),
    [
        ("[x](http://https://example.org/a)\n", "error", "doubled scheme"),
        ("[x](https:https://example.org/a)\n", "error", "doubled scheme"),
        ("[x](<https://example.org/a b>)\n", "error", "space inside the URL"),
        ("[x](https://example.org/a b)\n", "error", "is not a link"),
        ("[x](https://exa\u200bmple.org/)\n", "error", "zero-width"),
        ("see https://exa\u200bmple.org/ now\n", "error", "zero-width"),
        ("[x]()\n", "error", "empty target"),
        ("[x](javascript:alert(1))\n", "error", "javascript: links are blocked"),
        ("[x][nowhere]\n", "error", "is not a link"),
        ("[x](http://example.org/)\n", "warning", "plain http:// link"),
        ("[https://example.org/a](https://example.org/b)\n", "warning", "text looks like a URL"),
    ],
)
def test_each_link_problem_is_reported_with_its_line(
    newsletter: Newsletter, body: str, severity: str, message: str
) -> None:
    found = [p for p in problems_for(newsletter, body) if message in p.message]
    assert found, problems_for(newsletter, body)
    assert all(p.severity == severity and p.line == 7 for p in found)


@pytest.mark.parametrize(
    "body",
    [
        "[x](https://example.org/a%20b) [y](https://example.org/a_(b)?c=1&d=2)\n",
        "[https://example.org/a](https://example.org/a/) [www.example.org](https://www.example.org)\n",
        "Escaped \\[brackets\\](not a link) and `[code](a b)`\n",
    ],
)
def test_good_links_pass(newsletter: Newsletter, body: str) -> None:
    assert problems_for(newsletter, body) == []


def test_problem_line_points_into_the_body(newsletter: Newsletter) -> None:
    problems = [
        p
        for p in problems_for(newsletter, "fine\n\nfine [x](http://https://a.example)\n")
        if p.severity == "error"
    ]
    assert [p.line for p in problems] == [9]
    assert problems[0].format("issues/4.md").startswith("issues/4.md:9: error: link 'x': doubled scheme")


def test_size_budget(newsletter: Newsletter) -> None:
    newsletter.config_path.write_text(
        newsletter.config_path.read_text().replace("max_html_bytes = 102000", "max_html_bytes = 5000")
    )
    problems = problems_for(newsletter, "Hello.\n")
    assert len(problems) == 1 and problems[0].line == 0
    assert "over the budget of 5,000" in problems[0].message


@pytest.mark.parametrize(
    ("body", "cut"),
    [
        ("See https://example.org/notes_ for more.\n", "'_'"),
        ("See https://en.wikipedia.org/wiki/Ref_(a)) for more.\n", "')'"),
    ],
)
def test_a_bare_url_cut_short_by_gfm_is_reported_with_its_line(
    newsletter: Newsletter, body: str, cut: str
) -> None:
    found = [p for p in problems_for(newsletter, body) if "bare URL ends before" in p.message]
    assert [(p.line, p.severity) for p in found] == [(7, "warning")], problems_for(newsletter, body)
    assert cut in found[0].message


@pytest.mark.parametrize(
    "body",
    [
        "A sentence ending in https://example.org/a.\n",
        "(see https://en.wikipedia.org/wiki/Ref_(a)), and _https://doi.org/10.1/x_ in italics.\n",
    ],
)
def test_sentence_punctuation_after_a_bare_url_is_fine(newsletter: Newsletter, body: str) -> None:
    assert problems_for(newsletter, body) == []


def test_filtered_html_is_reported_with_its_line(newsletter: Newsletter) -> None:
    newsletter.write_issue(4, "Fine <b>bold</b>.\n\n<script>track()</script>\n", allow_html="true")
    config = newsletter.config()
    found = check_build(config, build_issue(config, 4))
    assert [(p.line, p.severity) for p in found] == [(10, "warning"), (10, "warning")]
    assert "'<script>'" in found[0].message + found[1].message and "tagfilter" in found[0].message
