"""``newsletter init DIR``: a newsletter of one's own from the installed package, ready to build.

The slow test builds the project's wheel and installs it into a fresh virtual environment, so it checks
what ``pip install`` gives a second editor: the templates travel inside the package."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.quickstart import archive_url_for, default_templates
from tests.conftest import REPO
from tests.support.cli import CLI_TIMEOUT, clean_env, one_line, run_cli

ANSWERS = [
    "--name",
    "Tide Notes",
    "--from",
    "Tide Notes <editor@tide.example>",
    "--postal-address",
    "1 Harbour Road, Port Sample",
    "--public-url",
    "https://news.tide.example/",
    "--archive-remote",
    "git@github.com:tide/tide-archive.git",
]


def same_tree(left: Path, right: Path) -> bool:
    """Every file of ``left`` is in ``right`` with the same bytes, and nothing more."""
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    return files == theirs and all(filecmp.cmp(left / f, right / f, shallow=False) for f in files)


@pytest.mark.slow  # the console script in subprocesses
def test_init_then_build_works_with_no_other_step(tmp_path: Path) -> None:
    folder = tmp_path / "tide"
    result = run_cli(tmp_path, "init", "tide", *ANSWERS)
    assert result.returncode == 0, result.stderr
    assert "next: cd tide && newsletter build 1" in result.stdout

    config = load_config(folder / "newsletter.toml")
    assert (config.name, config.sender, config.postal_address) == (
        "Tide Notes",
        "Tide Notes <editor@tide.example>",
        "1 Harbour Road, Port Sample",
    )
    assert config.public_url == "https://news.tide.example"
    assert config.archive_remote == "git@github.com:tide/tide-archive.git"
    assert config.archive_base_url == "https://github.com/tide/tide-archive/blob/main"
    assert same_tree(REPO / "email_templates", folder / "email_templates")  # the whole folder, to edit
    assert {"build/", "state/", "outbox/"} <= set((folder / ".gitignore").read_text().split())

    built = run_cli(folder, "build", "1")
    assert built.returncode == 0, built.stderr
    assert "Tide Notes" in (folder / "build" / "1" / "email.html").read_text(encoding="utf-8")
    # The Makefile's commands are the real ones, and the errata file takes corrections.
    made = subprocess.run(
        ["make", "build", f"NEWSLETTER={Path(sys.executable).with_name('newsletter')}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=clean_env(),
        check=False,
    )
    assert made.returncode == 0, made.stderr
    started = run_cli(folder, "new")
    assert started.stdout == "issues/2.md\n", started.stderr


def test_init_asks_for_what_is_not_given(tmp_path: Path) -> None:
    answers = "\n".join(
        [
            "Tide Notes",
            "not an address",
            "Tide <ed@tide.example>",
            "1 Harbour Road",
            "https://tide.example",
            "",
        ]
    )
    result = CliRunner().invoke(main, ["init", str(tmp_path / "tide")], input=answers + "\n")
    assert result.exit_code == 0, result.output
    assert "--from is not an email address: 'not an address'" in result.output  # and it asked again
    config = load_config(tmp_path / "tide" / "newsletter.toml")
    assert (config.sender, config.archive_remote) == ("Tide <ed@tide.example>", "")
    assert config.archive_base_url == "https://tide.example/archive"


def test_init_refuses_a_folder_in_use_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    result = CliRunner().invoke(main, ["init", str(tmp_path), *ANSWERS])
    assert result.exit_code == 2
    assert "the folder is not empty; --force adds the missing files" in one_line(result.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_init_force_adds_the_missing_files_and_overwrites_none(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text("# my own\n")
    (tmp_path / "email_templates").mkdir()
    (tmp_path / "email_templates" / "footer.mjml.j2").write_text("my footer\n")
    result = CliRunner().invoke(main, ["init", str(tmp_path), "--force", *ANSWERS])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "newsletter.toml").read_text() == "# my own\n"
    assert (tmp_path / "email_templates" / "footer.mjml.j2").read_text() == "my footer\n"
    assert "kept     " in result.output and "footer.mjml.j2" in result.output
    assert (tmp_path / "email_templates" / "issue.mjml.j2").is_file() and (
        tmp_path / "issues" / "1.md"
    ).is_file()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("--from", "editor@tide.example"), "--from must look like 'Name <address>'"),
        (("--public-url", "news.tide.example"), "--public-url must be an http(s) URL"),
        (("--name", "Tide\nNotes"), "--name must be on one line"),
        (("--postal-address", "  "), "--postal-address must not be empty"),
    ],
)
def test_a_bad_answer_is_one_line_and_nothing_is_written(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    answers = list(ANSWERS)
    answers[answers.index(change[0]) + 1] = change[1]
    result = CliRunner().invoke(main, ["init", str(tmp_path / "tide"), *answers])
    assert result.exit_code == 2
    assert expected in one_line(result.stderr)
    assert not (tmp_path / "tide").exists()


def test_without_a_terminal_init_names_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "tide"), "--name", "Tide Notes"], input="")
    assert result.exit_code == 2
    assert one_line(result.stderr) == (
        "error: missing --from, --postal-address, --public-url: give them as options, or answer in a terminal"
    )
    assert not (tmp_path / "tide").exists()


def test_errata_added_after_init_keep_the_file_header(tmp_path: Path) -> None:
    from pipeline.issue.errata import HEADER, add_erratum, load_errata

    assert CliRunner().invoke(main, ["init", str(tmp_path), *ANSWERS]).exit_code == 0
    config = load_config(tmp_path / "newsletter.toml")
    assert load_errata(config) == []
    add_erratum(config, 1, "A correction.", None, "")
    text = (tmp_path / "issues" / "errata.yaml").read_text(encoding="utf-8")
    assert text.startswith(HEADER) and "A correction." in text
    assert [e.text for e in load_errata(config)] == ["A correction."]


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("https://github.com/tide/archive.git", "https://github.com/tide/archive/blob/main"),
        ("git@github.com:tide/archive", "https://github.com/tide/archive/blob/main"),
        ("/srv/git/archive.git", "https://tide.example/archive"),
        ("", "https://tide.example/archive"),
    ],
)
def test_the_archive_url_follows_from_a_github_remote(remote: str, expected: str) -> None:
    assert archive_url_for(remote, "https://tide.example") == expected


def test_a_checkout_uses_its_own_email_templates() -> None:
    assert default_templates() == REPO / "email_templates"


@pytest.mark.slow  # builds the wheel (pip, setuptools from PyPI or its cache) and a virtual environment
@pytest.mark.timeout(600)
def test_the_installed_wheel_carries_the_templates(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "state", "outbox", "*.egg-info", ".*_cache", "__pycache__"
        ),
    )
    pip = [sys.executable, "-m", "pip"]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)], check=True, timeout=540
    )
    [wheel] = wheels.glob("pressrun-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    # The dependencies: this environment's, after the wheel's own files (whose pipeline comes first).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    newsletter = [str(venv / "bin" / "newsletter")]
    where = subprocess.run(
        [str(python), "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=tmp_path,  # not the checkout, which `python -c` would put first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout

    created = run_cli(tmp_path, "init", "letter", *ANSWERS, command=newsletter)
    assert created.returncode == 0, created.stderr
    assert same_tree(source / "email_templates", tmp_path / "letter" / "email_templates")
    built = run_cli(tmp_path / "letter", "build", "1", command=newsletter)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "letter" / "build" / "1" / "message.eml").is_file()
    config = tomllib.loads((tmp_path / "letter" / "newsletter.toml").read_text(encoding="utf-8"))
    assert config["newsletter"]["name"] == "Tide Notes"
