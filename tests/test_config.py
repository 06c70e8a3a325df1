from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError

from .conftest import REPO, Newsletter


def test_repo_config_loads_with_paths_resolved_against_its_folder() -> None:
    config = load_config(REPO / "newsletter.toml")
    assert config.paths.issues == REPO / "issues"
    assert config.paths.templates == REPO / "email_templates"
    assert config.max_html_bytes == 102_000
    assert config.archive_url(7) == "https://github.com/example/crate-notes-archive/blob/main/7.md"


def test_relative_paths_resolve_against_config_not_cwd(
    newsletter: Newsletter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(newsletter.config_path))
    config = load_config()
    assert config.path == newsletter.config_path
    assert config.paths.build == newsletter.root / "build"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[newsletter]
name = "N"
from = "N <n@example.org>"
postal_address = "Somewhere"
archive_base_url = "https://example.org/archive/"
"""


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    assert config.paths.state == tmp_path / "state"
    assert config.archive_base_url == "https://example.org/archive"
    assert config.archive_filename == "{number}.md"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "\n[paths]\nissuse = 'x'\n", "unknown key paths.issuse"),
        (GOOD + "\n[sned]\nx = 1\n", "unknown section [sned]"),
        (GOOD.replace('name = "N"\n', ""), "missing key newsletter.name"),
        (
            GOOD + "\n[check]\nmax_html_bytes = '100'\n",
            "check.max_html_bytes must be a whole number, got '100'",
        ),
        (GOOD + "\n[check]\nmax_html_bytes = 0\n", "check.max_html_bytes must be positive"),
        (GOOD.replace("N <n@example.org>", "not an address"), "newsletter.from is not an email address"),
        (
            GOOD.replace("N <n@example.org>", "n@example.org"),
            "newsletter.from must look like 'Name <address>'",
        ),
        (
            GOOD.replace("https://example.org/archive/", "example.org"),
            "archive_base_url must be an http(s) URL",
        ),
        (GOOD + "\n[archive]\nfilename = 'NL.md'\n", "archive.filename must contain {number}"),
        (GOOD + "\nstray = [", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")
