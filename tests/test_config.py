from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import KEYS, MASK, Environment, load_config
from pipeline.errors import ConfigError
from tests.conftest import REPO, Newsletter


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "\n[links]\ntimeout = nan\n", "links.timeout must be a finite number, got nan"),
        (GOOD + "\n[send]\nmax_rate = inf\n", "send.max_rate must be a finite number, got inf"),
        (GOOD + "\n[serve]\nresend_minutes = inf\n", "serve.resend_minutes must be a finite number"),
        (GOOD + "\n[transport.smtp]\ntimeout = 0\n", "transport.smtp.timeout must be positive, got 0.0"),
        (GOOD + "\n[transport.smtp]\ntimeout = nan\n", "transport.smtp.timeout must be a finite number"),
        (GOOD + "\n[transport.smtp]\nport = 70000\n", "transport.smtp.port must be a port number (1-65535)"),
        (GOOD + "\n[serve]\nport = 65536\n", "serve.port must be a port number (1-65535), got 65536"),
        (
            GOOD.replace('name = "N"', 'name = "N\\nBcc: x@example.org"'),
            "newsletter.name must be on one line",
        ),
        (GOOD.replace('name = "N"', 'name = "N\\tO"'), "newsletter.name must be on one line"),
        (GOOD.replace('name = "N"', 'name = "N\\u2028O"'), "newsletter.name must be on one line"),
        (GOOD.replace('name = "N"', 'name = "N\\u007f"'), "newsletter.name must be on one line"),
        (
            GOOD.replace("N <n@example.org>", "N\\u2028 <n@example.org>"),
            "newsletter.from must be on one line",
        ),
        (
            GOOD.replace("N <n@example.org>", "N\\u0085 <n@example.org>"),
            "newsletter.from must be on one line",
        ),
    ],
)
def test_values_refused_since_the_schema(tmp_path: Path, text: str, message: str) -> None:
    """Each of these loaded before: a NaN rate or timeout, a port no socket takes, a header-breaking name."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_port_edges_still_load(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD + "\n[serve]\nport = 65535\n[transport.smtp]\nport = 1\n"))
    assert (config.serve.port, config.smtp.port) == (65535, 1)


def test_every_key_is_declared_once_with_help() -> None:
    locations = [key.location for key in KEYS]
    assert len(locations) == len(set(locations))
    assert all(key.help for key in KEYS)
    assert "transport.smtp.port" in locations and "newsletter.from" in locations


# --- the environment ---------------------------------------------------------------------------------

SECRET = "s3cret-value-that-must-never-be-printed"
PASSWORD = "smtp-password-that-must-never-be-printed"


def test_environment_reads_each_variable_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("NEWSLETTER_CONFIG", "NEWSLETTER_SECRET", "NEWSLETTER_SECRET_PREVIOUS", "FORWARDED_ALLOW_IPS")
    for name in (*names, "MY_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    unset = Environment.from_os("MY_SMTP_PASSWORD")
    assert (unset.secret, unset.forwarded_allow_ips, unset.smtp_password, unset.given) == (
        "",
        "127.0.0.1",
        "",
        frozenset(),
    )

    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1")
    monkeypatch.setenv("MY_SMTP_PASSWORD", PASSWORD)
    env = Environment.from_os("MY_SMTP_PASSWORD")
    assert (env.secret, env.forwarded_allow_ips, env.smtp_password) == (SECRET, "10.0.0.1", PASSWORD)
    assert env.given == {"NEWSLETTER_SECRET", "FORWARDED_ALLOW_IPS", "MY_SMTP_PASSWORD"}

    shown = {setting.name: setting for setting in env.settings()}
    assert list(shown) == [
        "NEWSLETTER_CONFIG",
        "NEWSLETTER_SECRET",
        "NEWSLETTER_SECRET_PREVIOUS",
        "FORWARDED_ALLOW_IPS",
        "MY_SMTP_PASSWORD",
    ]
    assert (shown["NEWSLETTER_SECRET"].value, shown["NEWSLETTER_SECRET"].source) == (MASK, "env")
    assert (shown["MY_SMTP_PASSWORD"].value, shown["MY_SMTP_PASSWORD"].source) == (MASK, "env")
    assert (shown["NEWSLETTER_CONFIG"].value, shown["NEWSLETTER_CONFIG"].source) == ("", "default")
    assert all(setting.help for setting in shown.values())


def test_the_environment_is_read_only_in_config() -> None:
    """One place reads environment variables, so `config show` lists every one the program uses."""
    # The archive mirror hands git the caller's PATH: passed through, not a setting of ours.
    allowed = {REPO / "pipeline" / "config.py", REPO / "pipeline" / "archive" / "mirror.py"}
    readers = [
        path
        for path in (REPO / "pipeline").rglob("*.py")
        if path not in allowed
        and re.search(r"os\.environ|getenv|envvar=\"", path.read_text(encoding="utf-8"))
    ]
    assert readers == []


# --- newsletter config show --------------------------------------------------------------------------


def _show(
    newsletter: Newsletter,
    monkeypatch: pytest.MonkeyPatch,
    *options: str,
    config: Path | None = None,
    **env: str,
) -> str:
    """``newsletter [--config CONFIG] config show [options]`` from the newsletter's folder, with only
    ``env`` of our variables set."""
    monkeypatch.chdir(newsletter.root)
    for name in ("NEWSLETTER_CONFIG", "NEWSLETTER_SECRET", "FORWARDED_ALLOW_IPS", "SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    command = [*(["--config", str(config)] if config else []), "config", "show", *options]
    result = CliRunner().invoke(main, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _lines(output: str) -> dict[str, str]:
    """Each key's value and source, by "section.key"."""
    lines: dict[str, str] = {}
    section = ""
    for line in output.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            name, _, value = line.partition(" = ")
            lines[f"{section}.{name.strip()}"] = value
    return lines


def test_config_show_tells_where_each_value_came_from(
    newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch
) -> None:
    with newsletter.config_path.open("a", encoding="utf-8") as config:
        config.write(
            '\n[transport]\nkind = "smtp"\n\n[transport.smtp]\nport = 2525\npassword_env = "MY_SMTP_PASSWORD"\n'
        )
    output = _show(newsletter, monkeypatch, NEWSLETTER_SECRET=SECRET, MY_SMTP_PASSWORD=PASSWORD)
    lines = _lines(output)

    assert output.startswith(f"# config file: {newsletter.config_path} (default)\n")
    assert lines["transport.smtp.port"] == "2525 (file)"
    assert lines["transport.kind"] == '"smtp" (file)'
    assert lines["send.max_rate"] == "14.0 (default)"
    assert lines["newsletter.name"] == '"Crate Notes" (file)'
    assert lines["paths.state"] == f'"{newsletter.root / "state"}" (file)'  # resolved
    assert lines["transport.maildir.path"] == f'"{newsletter.root / "outbox"}" (default)'
    assert lines["events.region"] == '"us-east-1" (default)'
    assert lines["environment.NEWSLETTER_SECRET"] == "******** (env)"
    assert lines["environment.MY_SMTP_PASSWORD"] == "******** (env)"
    assert lines["environment.FORWARDED_ALLOW_IPS"] == '"127.0.0.1" (default)'
    assert SECRET not in output and PASSWORD not in output
    # One key per line, the values in one column.
    assert len({line.index(" = ") for line in output.splitlines() if " = " in line}) == 1


def test_config_show_names_the_config_file_source(
    newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = elsewhere / "other.toml"
    copy.write_text(newsletter.config_path.read_text(encoding="utf-8"), encoding="utf-8")

    output = _show(newsletter, monkeypatch, NEWSLETTER_CONFIG=str(copy))
    lines = _lines(output)
    assert output.startswith(f"# config file: {copy} (env)\n")
    assert lines["environment.NEWSLETTER_CONFIG"] == f'"{copy}" (env)'
    assert lines["paths.issues"] == f'"{elsewhere / "issues"}" (file)'

    assert _show(newsletter, monkeypatch, config=copy).startswith(f"# config file: {copy} (option)\n")


def test_config_show_json_masks_secrets(newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch) -> None:
    output = _show(newsletter, monkeypatch, "--json", NEWSLETTER_SECRET=SECRET, SMTP_PASSWORD=PASSWORD)
    assert SECRET not in output and PASSWORD not in output
    shown = json.loads(output)
    assert (shown["NEWSLETTER_SECRET"]["value"], shown["NEWSLETTER_SECRET"]["source"]) == (MASK, "env")
    assert shown["SMTP_PASSWORD"]["value"] == MASK
    assert shown["links.enabled"] == {
        "value": False,
        "source": "file",
        "help": "check links over HTTP in check and send",
    }
    assert shown["events.topic_arns"]["value"] == []
    assert shown["paths.issues"]["value"] == str(newsletter.root / "issues")
    assert shown["config_file"] == {"value": str(newsletter.config_path), "source": "default"}


def test_config_show_with_a_bad_config_is_one_line(
    newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch
) -> None:
    newsletter.config_path.write_text(GOOD + "\n[serve]\nport = 99999\n", encoding="utf-8")
    monkeypatch.chdir(newsletter.root)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 2
    assert result.stderr == "error: newsletter.toml: serve.port must be a port number (1-65535), got 99999\n"


@pytest.mark.parametrize(
    ("archive", "raw", "expected"),
    [
        (
            "https://github.com/o/r/blob/main/issues",
            "",
            "https://raw.githubusercontent.com/o/r/main/issues",
        ),
        ("https://github.com/o/r/blob/main", "", "https://raw.githubusercontent.com/o/r/main"),
        ("https://archive.example.org/news", "", "https://archive.example.org/news"),
        ("https://github.com/o/r/blob/main", "https://cdn.example.org/r/", "https://cdn.example.org/r"),
    ],
)
def test_raw_base_url_is_derived_from_a_github_archive(
    tmp_path: Path, archive: str, raw: str, expected: str
) -> None:
    text = GOOD.replace("https://example.org/archive/", archive)
    if raw:
        text += f'\n[archive]\nraw_base_url = "{raw}"\n'
    assert load_config(_write(tmp_path, text)).raw_base_url == expected


def test_raw_base_url_must_be_a_url(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + '\n[archive]\nraw_base_url = "raw.example.org"\n')
    with pytest.raises(ConfigError, match=r"archive\.raw_base_url must be an http"):
        load_config(path)
