"""The real console script, as the editor runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Newsletter
from tests.support.cli import clean_env, run_cli


def run(newsletter: Newsletter, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(newsletter.root, *args, timeout=60)


@pytest.mark.slow  # the console script in a subprocess
def test_build_writes_three_files_and_prints_sizes(newsletter: Newsletter) -> None:
    newsletter.write_issue(3, "Hello [there](https://example.org/).\n")
    result = run(newsletter, "build", "3")
    assert result.returncode == 0, result.stderr
    for name in ("email.html", "email.txt", "message.eml"):
        size = (newsletter.root / "build" / "3" / name).stat().st_size
        assert f"{size:,} bytes  build/3/{name}" in result.stdout
    assert "of the 102,000-byte budget" in result.stdout


@pytest.mark.slow  # the console script in a subprocess
def test_check_passes_a_good_issue(newsletter: Newsletter) -> None:
    newsletter.write_issue(3, "Hello [there](https://example.org/).\n")
    result = run(newsletter, "check", "3")
    assert result.returncode == 0, result.stderr
    assert "issues/3.md: 1 links, 0 error(s), 0 warning(s): ready to send" in result.stdout


@pytest.mark.slow  # the console script in a subprocess
def test_check_fails_listing_each_problem_with_its_line(newsletter: Newsletter) -> None:
    newsletter.write_issue(
        3,
        "Fine.\n\n[a](http://https://example.org/)\n\n[b](https://example.org/x y)\n\n[c](http://example.org/)\n",
    )
    result = run(newsletter, "check", "3")
    assert result.returncode == 1
    assert "issues/3.md:9: error: link 'a': doubled scheme" in result.stderr
    assert "issues/3.md:11: error: [b](https://example.org/x y) is not a link" in result.stderr
    assert "issues/3.md:13: warning: link 'c': plain http://" in result.stdout
    assert (
        "error: issues/3.md: 3 links, 2 error(s), 2 warning(s): fix the errors before sending"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        (lambda n: None, ("build", "9"), "error: issues/9.md: no such issue"),
        (
            lambda n: n.write_issue(3, "x", titel="T"),
            ("build", "3"),
            "error: issues/3.md:5: titel: unknown field",
        ),
        (
            lambda n: n.write_issue(3, "x", date="2026-02-30"),
            ("check", "3"),
            "error: issues/3.md:4: date: not a valid date",
        ),
        (lambda n: n.write_issue(3, "   "), ("build", "3"), "error: issues/3.md:6: the body is empty"),
        (
            lambda n: n.config_path.write_text("[newsletter]\nname = 'x'\n"),
            ("build", "1"),
            "newsletter.toml: missing key newsletter.from",
        ),
        (
            lambda n: (n.root / "issues" / "3.md").write_bytes(b"---\nnumber: 3\n\xff"),
            ("build", "3"),
            "error: issues/3.md:3: not valid UTF-8",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(newsletter: Newsletter, setup, args, expected) -> None:  # type: ignore[no-untyped-def]
    setup(newsletter)
    result = run(newsletter, *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert expected in result.stderr
    assert not (newsletter.root / "build").exists()


@pytest.mark.slow  # the console script in a subprocess
def test_config_from_environment(newsletter: Newsletter, tmp_path: Path) -> None:
    newsletter.write_issue(3)
    env = clean_env({"NEWSLETTER_CONFIG": str(newsletter.config_path)})
    result = run_cli(tmp_path, "build", "3", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (newsletter.root / "build" / "3" / "email.html").exists()


@pytest.mark.slow  # the console script in a subprocess
def test_not_a_number(newsletter: Newsletter) -> None:
    result = run(newsletter, "build", "latest")
    assert result.returncode == 2 and "'latest' is not a valid integer" in result.stderr
