"""What `check` says about images: alt text, relative paths an inbox cannot load, data: URIs, heavy files."""

from __future__ import annotations

import base64

import pytest

from pipeline.check.content import IMAGE_MAX_BYTES, Problem
from pipeline.check.gate import check_build
from pipeline.issue.build import build_issue
from tests.support.cli import run_cli
from tests.support.newsletter import Newsletter

NOT_GITHUB = "https://archive.example.org/crate-notes"


def image_problems(newsletter: Newsletter, body: str) -> list[Problem]:
    newsletter.write_issue(4, body)
    config = newsletter.config()
    return [p for p in check_build(config, build_issue(config, 4)) if p.message.startswith("image ")]


def use_archive_base(newsletter: Newsletter, url: str) -> None:
    path = newsletter.config_path
    text = path.read_text()
    current = next(line for line in text.splitlines() if line.startswith("archive_base_url"))
    path.write_text(text.replace(current, f'archive_base_url = "{url}"'))


# The issue file has 5 front matter lines and a blank line: the body's first line is line 7.
def test_an_image_without_alt_text_is_a_warning_with_its_line(newsletter: Newsletter) -> None:
    found = image_problems(newsletter, "Intro.\n\n![](https://example.org/chart.png)\n")
    assert [(p.line, p.severity) for p in found] == [(9, "warning")]
    assert "no alt text" in found[0].message and "decorative" in found[0].message


def test_a_raw_html_image_without_alt_is_a_warning_when_html_is_allowed(newsletter: Newsletter) -> None:
    newsletter.write_issue(
        4,
        'Intro.\n\n<img src="https://example.org/a.png">\n<img src="https://example.org/b.png" alt="">\n',
        allow_html="true",
    )
    config = newsletter.config()
    found = [p for p in check_build(config, build_issue(config, 4)) if "alt attribute" in p.message]
    assert [(p.line, p.severity) for p in found] == [(10, "warning")], found
    assert "a.png" in found[0].message


def test_an_image_with_alt_text_on_a_web_address_is_fine(newsletter: Newsletter) -> None:
    assert image_problems(newsletter, "![A chart of downloads](https://example.org/chart.png)\n") == []


def test_a_relative_image_with_no_raw_base_is_an_error(newsletter: Newsletter) -> None:
    use_archive_base(newsletter, NOT_GITHUB)
    found = image_problems(newsletter, "Intro.\n\nText ![A chart](img/chart.png)\n")
    assert [(p.line, p.severity) for p in found] == [(9, "error")]
    assert "relative" in found[0].message and f"{NOT_GITHUB}/img/chart.png" in found[0].message


def test_a_relative_image_is_fine_when_the_archive_is_on_github(newsletter: Newsletter) -> None:
    use_archive_base(newsletter, "https://github.com/example/archive/blob/main")
    assert image_problems(newsletter, "![A chart](img/chart.png)\n") == []


def test_a_relative_image_is_fine_when_raw_base_url_is_set(newsletter: Newsletter) -> None:
    use_archive_base(newsletter, NOT_GITHUB)
    path = newsletter.config_path
    path.write_text(
        path.read_text().replace(
            "[archive]\n", '[archive]\nraw_base_url = "https://files.example.org/crate-notes"\n'
        )
    )
    assert image_problems(newsletter, "![A chart](img/chart.png)\n") == []


def test_a_data_uri_image_is_a_warning(newsletter: Newsletter) -> None:
    pixel = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()
    found = image_problems(newsletter, f"![A dot](data:image/gif;base64,{pixel})\n")
    assert [p.severity for p in found] == ["warning"] and "data: URI" in found[0].message


@pytest.mark.parametrize(("size", "warned"), [(IMAGE_MAX_BYTES + 1, True), (IMAGE_MAX_BYTES // 2, False)])
def test_a_heavy_local_image_is_a_warning(newsletter: Newsletter, size: int, warned: bool) -> None:
    folder = newsletter.root / "archive" / "img"
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(b"\xff" * size)
    found = image_problems(newsletter, "![The team](img/photo.jpg)\n")
    assert [("over 200 KB" in p.message) for p in found] == ([True] if warned else [])


@pytest.mark.slow
def test_check_names_the_bad_images_in_one_line_each_and_writes_nothing(newsletter: Newsletter) -> None:
    use_archive_base(newsletter, NOT_GITHUB)
    newsletter.write_issue(4, "Intro.\n\n![](img/a.png)\n")
    done = run_cli(newsletter.root, "check", "4", "--offline")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if "img/a.png" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "issues/4.md:9: error: image 'img/a.png': a relative image"
    )
    assert "issues/4.md:9: warning: image 'img/a.png': no alt text" in done.stdout
    assert "Traceback" not in done.stderr and not (newsletter.root / "build").exists()
