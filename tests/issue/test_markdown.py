from __future__ import annotations

from pathlib import Path

from pipeline.issue.markdown import Document, make_url_resolver, render_markdown
from pipeline.issue.source import parse_issue

BASE = "https://archive.example.org/tree/main"
resolve = make_url_resolver(BASE, BASE + "/3.md")


def render(body: str, allow_html: bool = False) -> Document:
    head = f"---\nnumber: 3\ntitle: T\ndate: 2026-11-23\nallow_html: {str(allow_html).lower()}\n---\n"
    return render_markdown(parse_issue(Path("issues/3.md"), (head + body).encode()), resolve)


def html_of(document: Document) -> str:
    return "".join(section.html for section in document.sections)


def test_relative_urls_resolve_against_the_archive() -> None:
    document = render(
        "[a](2.md) [b](../x/y.html) [c](#news) [d](https://x.org/) [e](mailto:e@x.org) ![i](img/p.png)\n"
    )
    assert [link.href for link in document.links] == [
        f"{BASE}/2.md",
        "https://archive.example.org/tree/x/y.html",
        f"{BASE}/3.md#news",
        "https://x.org/",
        "mailto:e@x.org",
        f"{BASE}/img/p.png",
    ]
    assert f'src="{BASE}/img/p.png"' in html_of(document)
    assert document.links[-1].is_image


def test_raw_html_is_escaped_unless_allowed() -> None:
    body = "Press <kbd>K</kbd>.\n\n<div class=x>block</div>\n"
    assert "&lt;kbd&gt;K&lt;/kbd&gt;" in html_of(render(body))
    assert "&lt;div class=x&gt;" in html_of(render(body))
    allowed = html_of(render(body, allow_html=True))
    assert "<kbd>K</kbd>" in allowed and "<div class=x>block</div>" in allowed


def test_gfm_tables_strikethrough_and_autolinks() -> None:
    document = render(
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n~~old~~ https://x.org/p_(q) and www.example.org/w and <https://a.example/b> and http://plain.example\n"
    )
    html = html_of(document)
    assert '<div class="table-wrap"><table>' in html and "</table>\n</div>" in html
    assert "<s>old</s>" in html
    assert [link.href for link in document.links] == [
        "https://x.org/p_(q)",
        "https://www.example.org/w",
        "https://a.example/b",
        "http://plain.example",
    ]


def test_ampersands_and_underscores_survive_in_urls() -> None:
    document = render("[q](https://x.org/a_b_c?x=1&y=2) and _emph_\n")
    assert document.links[0].href == "https://x.org/a_b_c?x=1&y=2"
    assert 'href="https://x.org/a_b_c?x=1&amp;y=2"' in html_of(document)
    assert "<em>emph</em>" in html_of(document)


def test_sections_split_at_top_heading_level() -> None:
    document = render("Intro.\n\n## News\n\nn\n\n### Sub\n\ns\n\n## And Finally...\n\nf\n")
    assert [s.heading for s in document.sections] == ["", "News", "And Finally..."]
    assert "<h3>Sub</h3>" in document.sections[1].html


def test_body_without_intro_or_headings() -> None:
    assert [s.heading for s in render("## Only\n\nx\n").sections] == ["", "Only"]
    assert [s.heading for s in render("Just text.\n").sections] == [""]


def test_links_carry_their_file_line() -> None:
    # Front matter is lines 1-6, the body starts on line 7.
    document = render(
        "Para [one](https://1.example)\nand [two](https://2.example)\n\n- [three](https://3.example)\n"
    )
    assert [(link.text, link.line) for link in document.links] == [("one", 7), ("two", 8), ("three", 10)]


def test_unparsed_links_are_found_but_escaped_brackets_are_not() -> None:
    document = render(
        "A [broken](http://a b) link.\n\nEscaped \\[ed: fine\\](really) and [undefined][ref].\n\n`[code](x y)`\n"
    )
    assert [(u.markdown, u.line) for u in document.unparsed_links] == [
        ("[broken](http://a b)", 7),
        ("[undefined][ref]", 9),
    ]


def test_bare_urls_end_where_github_ends_them() -> None:
    """GFM's trailing-punctuation rule: a URL in italics or before '*' keeps neither."""
    body = (
        "_https://doi.org/10.21105/joss.01450_ and *https://a.example/b*, "
        "https://c.example/d_\u00a0next, (https://w.example/Rust_(lang)) www.x.example/p?q=1.\n"
    )
    document = render(body)
    assert [(link.href, link.text, link.kind) for link in document.links] == [
        ("https://doi.org/10.21105/joss.01450", "https://doi.org/10.21105/joss.01450", "autolink"),
        ("https://a.example/b", "https://a.example/b", "autolink"),
        ("https://c.example/d", "https://c.example/d", "autolink"),
        ("https://w.example/Rust_(lang)", "https://w.example/Rust_(lang)", "autolink"),
        ("https://www.x.example/p?q=1", "www.x.example/p?q=1", "autolink"),
    ]
    assert '<em><a href="https://doi.org/10.21105/joss.01450">' in html_of(document)


def test_nothing_is_autolinked_inside_open_brackets_like_github() -> None:
    document = render("[see https://a.example/x] and `[` https://c.example/z\n\n[b https://b.example/y `]`\n")
    assert [link.href for link in document.links] == ["https://c.example/z"]


def test_a_backslash_before_the_scheme_escapes_nothing_like_github() -> None:
    document = render("Odd \\https://a.example/x and \\*https://b.example/y\n")
    assert [link.href for link in document.links] == ["https://a.example/x", "https://b.example/y"]
    assert "Odd \\<a href" in html_of(document)


def test_email_addresses_are_linked_like_github() -> None:
    document = render("Write to editor@news.example.org. Or mailto:x@y.example, not a@b or @name.\n")
    assert [(link.href, link.kind) for link in document.links] == [
        ("mailto:editor@news.example.org", "email"),
        ("mailto:x@y.example", "autolink"),
    ]


def test_relative_images_come_from_the_raw_files_and_root_paths_from_the_repository() -> None:
    github = make_url_resolver(
        "https://github.com/o/r/blob/main/issues",
        "https://github.com/o/r/blob/main/issues/3.md",
        "https://raw.githubusercontent.com/o/r/main/issues",
    )
    head = "---\nnumber: 3\ntitle: T\ndate: 2026-11-23\n---\n"
    body = "[a](2.md) ![i](img/a.png) [r](/docs/x.md) ![s](/logo.svg) [h](https://x.example/) [f](#top)\n"
    document = render_markdown(parse_issue(Path("issues/3.md"), (head + body).encode()), github)
    assert [(link.href, link.kind, link.relative) for link in document.links] == [
        ("https://github.com/o/r/blob/main/issues/2.md", "link", True),
        ("https://raw.githubusercontent.com/o/r/main/issues/img/a.png", "image", True),
        ("https://github.com/o/r/blob/main/docs/x.md", "link", True),
        ("https://raw.githubusercontent.com/o/r/main/logo.svg", "image", True),
        ("https://x.example/", "link", False),
        ("https://github.com/o/r/blob/main/issues/3.md#top", "link", True),
    ]


def test_allowed_html_goes_through_githubs_tagfilter() -> None:
    body = (
        "<div><b>kept</b></div>\n\n<script>alert(1)</script>\n\nInline <STYLE>x</style> and <iframe src=x>.\n"
    )
    document = render(body, allow_html=True)
    html = html_of(document)
    assert "<div><b>kept</b></div>" in html
    assert "<script" not in html and "<STYLE" not in html and "<iframe" not in html
    assert "&lt;script>alert(1)&lt;/script>" in html
    assert [(raw.markdown, raw.line) for raw in document.filtered_html] == [
        ("<script>", 9),
        ("</script>", 9),
        ("<STYLE>", 11),
        ("</style>", 11),
        ("<iframe src=x>", 11),
    ]


def test_only_scheme_and_www_autolinks_like_github() -> None:
    document = render("See README.md, kit.edu and www.example.org/a or https://x.example/b.\n")
    assert [link.href for link in document.links] == ["https://www.example.org/a", "https://x.example/b"]
    assert "README.md," in html_of(document)


def test_html_comments_are_dropped_other_raw_html_escaped_and_recorded() -> None:
    document = render(
        "Intro <!-- note to self --> and <b>bold</b>.\n\n<!--\nCFPs go here: [x]()\n-->\n\n<div>block</div>\n"
    )
    html = html_of(document)
    assert "note to self" not in html and "CFPs go here" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&lt;div&gt;block&lt;/div&gt;" in html
    assert [(raw.markdown, raw.line) for raw in document.escaped_html] == [
        ("<b>", 7),
        ("</b>", 7),
        ("<div>block</div>", 13),
    ]
    assert document.unparsed_links == [] and document.links == []


def test_link_text_across_lines_and_line_of_empty_target() -> None:
    document = render("Send me an\nemail [ - ](https://a.example)\n\n[ - ]()\n")
    assert [(link.text, link.line) for link in document.links] == [(" - ", 8), (" - ", 10)]
    assert render("[Send me an\nemail](https://a.example)\n").links[0].text == "Send me an email"


def test_fast_url_normalisation_matches_markdown_it() -> None:
    from markdown_it.common.normalize_url import normalizeLink

    from pipeline.issue.markdown import _ALREADY_NORMAL

    samples = [
        "https://example.org/a_b(c)?x=1&y=2#top",
        "1.md",
        "#news",
        "mailto:a@example.org",
        "HTTPS://Example.ORG/a",
        "https://example.org/%E2%82%AC",
        "https://docs.example.com/wiki/Ownership_(computer_science)",
        "https://exa mple.org",
        "https://例え.jp/x",
        "https://a.org/ü",
        "https://a.org/%zz",
        "https://a.org/[x]",
    ]
    fast = [url for url in samples if _ALREADY_NORMAL.match(url)]
    assert len(fast) == 7  # the fast path is taken for plain URLs, not for those needing escapes
    assert all(normalizeLink(url) == url for url in fast)
