"""What a reader sees before and around the text: the preview line, dark mode, long links, images."""

from __future__ import annotations

import html
import re

from pipeline.issue.build import build_issue
from pipeline.issue.render import PREHEADER_MAX, break_long_link_texts
from tests.support.newsletter import Newsletter

FILLER = "\u034f\u200c\u00a0"  # combining grapheme joiner, zero-width non-joiner, no-break space


def preheader_div(email_html: str) -> tuple[str, str]:
    """The hidden preview div's style and text."""
    found = re.search(r'<div class="preheader"[^>]*style="([^"]*)"[^>]*>([^<]*)</div>', email_html)
    assert found, "no preheader div in the email"
    return found.group(1), html.unescape(found.group(2))


def test_preheader_is_hidden_without_colour_tricks_and_followed_by_filler(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Body text.\n", preheader="'The preview line'")
    html = build_issue(newsletter.config(), 1).html
    style, text = preheader_div(html)
    # White-on-white text is what SpamAssassin scores (HTML_FONT_LOW_CONTRAST); hide it by layout.
    assert "color" not in style and "display:none" in style and "mso-hide:all" in style
    assert text.startswith("The preview line")
    filler = text.removeprefix("The preview line")
    assert len(filler) >= 100 and set(filler) == set(FILLER), "clients would pull body text into the preview"
    assert html.count("The preview line") == 1


def test_preheader_defaults_to_the_first_sentence(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "## News\n\nFirst *thing* is [here](https://example.org/). Then more.\n")
    _, text = preheader_div(build_issue(newsletter.config(), 1).html)
    assert text.rstrip(FILLER) == "First thing is here."


def test_default_preheader_of_one_long_sentence_is_cut_at_a_word(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "word " * 100 + "\n")
    _, text = preheader_div(build_issue(newsletter.config(), 1).html)
    shown = text.rstrip(FILLER)
    assert shown.endswith("word…") and len(shown) <= PREHEADER_MAX + 1


def test_dark_mode_is_declared(newsletter: Newsletter) -> None:
    newsletter.write_issue(1)
    html = build_issue(newsletter.config(), 1).html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="supported-color-schemes" content="light dark">' in html
    assert "@media (prefers-color-scheme: dark)" in html


def test_long_link_texts_get_break_points_and_keep_their_target(newsletter: Newsletter) -> None:
    url = "https://example.org/a-rather/long/path?with=a&query=string-that-goes-on" + "x" * 70
    newsletter.write_issue(1, f"See {url} and [short](https://example.org/s).\n")
    html = build_issue(newsletter.config(), 1).html
    anchor = re.search(r'<a href="([^"]*)"[^>]*>(.*?)</a>', html.split('class="content"')[1])
    assert anchor and anchor.group(1) == url.replace("&", "&amp;")
    pieces = anchor.group(2).split("<wbr>")
    assert "".join(pieces) == url.replace("&", "&amp;")
    assert max(len(piece) for piece in pieces) <= 30 and "https://<wbr>" in anchor.group(2)
    assert ">short</a>" in html


def test_break_points_stay_inside_each_link(newsletter: Newsletter) -> None:
    first, second = "https://example.org/" + "a" * 40, "https://example.org/" + "b" * 40
    newsletter.write_issue(1, f"- <{first}>\n- <{second}>\n")
    html_part = build_issue(newsletter.config(), 1).html
    anchors = re.findall(r'<a href="(https://example.org/[ab]+)"[^>]*>(.*?)</a>', html_part)
    assert [(href, text.replace("<wbr>", "")) for href, text in anchors] == [(first, first), (second, second)]


def test_break_points_leave_short_texts_and_entities_alone() -> None:
    assert break_long_link_texts('<a href="x">short text</a>') == '<a href="x">short text</a>'
    broken = break_long_link_texts('<a href="x">' + "a&amp;b/" * 10 + "</a>")
    assert "&amp;" in broken and "&<wbr>amp;" not in broken.replace("&amp;<wbr>", "")


def test_images_scale_down_and_have_no_invalid_height(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "![A chart](https://example.org/chart.png)\n")
    html = build_issue(newsletter.config(), 1).html
    image = re.search(r"<img[^>]*>", html)
    assert image, html
    assert 'height="auto"' not in image.group(0) and "max-width:100%" in image.group(0)
