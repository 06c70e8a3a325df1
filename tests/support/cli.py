"""Running the ``newsletter`` command: one way as a real process, one way in this process.

:func:`run_cli` is the console script as the editor runs it: the ``newsletter`` next to this
Python, started in the newsletter's folder, with an environment that has no ``NEWSLETTER_CONFIG``
(the folder's own newsletter.toml must be the one read) plus whatever a test sets. Every
end-to-end test goes through it (or :func:`start_cli` when it must signal the process), so a
change to how the command is found or how its environment is cleaned is made once.

:func:`invoke_cli` runs the same click command in this process (click's ``CliRunner``): the same
code without a second of imports per call, for quick commands such as ``status``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

NEWSLETTER = Path(sys.executable).with_name("newsletter")
CLI_TIMEOUT = 120.0  # seconds one command may take before the test fails instead of hanging


def clean_env(
    changes: Mapping[str, str | None] | None = None, *, drop: Iterable[str] = (), drop_prefix: str = ""
) -> dict[str, str]:
    """This process's environment without ``NEWSLETTER_CONFIG`` (and ``drop``, and names starting with
    ``drop_prefix``), then ``changes`` applied: a value sets a variable, ``None`` removes it."""
    dropped = {"NEWSLETTER_CONFIG", *drop}
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in dropped and not (drop_prefix and name.startswith(drop_prefix))
    }
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(
    folder: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
    command: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``newsletter *args`` in ``folder``, to its end; ``env`` defaults to :func:`clean_env`.

    ``command`` replaces the console script (e.g. ``[sys.executable, "-c", ...]``) for the rare test
    that must patch something before the CLI starts."""
    return subprocess.run(
        [*(command or [str(NEWSLETTER)]), *args],
        cwd=folder,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(
    folder: Path, *args: str, env: Mapping[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen[str]:
    """``newsletter *args`` started in ``folder`` and left running, for a test that signals it.

    ``new_session``: its own session and process group, so the test can signal the whole group (as
    a terminal's Ctrl-C does) and find every process it started afterwards."""
    return subprocess.Popen(
        [str(NEWSLETTER), *args],
        cwd=folder,
        env=dict(env) if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def invoke_cli(
    config_path: Path | None, *args: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """The same command in this process (click's CliRunner), answered like :func:`run_cli`.

    ``config_path``: passed as ``--config`` (None: the command finds it itself, from the working
    folder). ``NEWSLETTER_CONFIG`` is always unset, as :func:`clean_env` does for a real process."""
    from click.testing import CliRunner

    from pipeline.cli import main

    options = ["--config", str(config_path)] if config_path is not None else []
    result = CliRunner().invoke(
        main, [*options, *args], env={"NEWSLETTER_CONFIG": None, **(env or {})}, catch_exceptions=False
    )
    return subprocess.CompletedProcess(["newsletter", *args], result.exit_code, result.stdout, result.stderr)


def wait_for(
    condition: Callable[[], bool],
    what: str,
    process: subprocess.Popen[str] | None = None,
    *,
    timeout: float = 60.0,
    interval: float = 0.002,
) -> None:
    """Poll ``condition`` until it holds; fail (not hang) after ``timeout`` s, or at once if ``process``
    ends first, since then the condition can no longer come true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def one_line(stderr: str) -> str:
    """A failure the editor can read: exactly one line on stderr, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


REPO = Path(__file__).resolve().parents[2]


def run_make(
    config_path: Path, target: str, *variables: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``make TARGET VAR=value...`` in the repository, as the editor runs it, on the newsletter whose
    config is ``config_path`` (through ``NEWSLETTER_CONFIG``), with the ``newsletter`` next to this
    Python. ``-o .venv/.ready``: a test never rebuilds the virtual environment."""
    environment = dict(env) if env is not None else clean_env()
    environment["NEWSLETTER_CONFIG"] = str(config_path)
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.ready",
            f"BIN={NEWSLETTER.parent}",
            target,
            *variables,
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
