"""`newsletter build` imports what building uses, and not the link checker, SES, the web service or rich;
the console script freezes what it loaded at start-up."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import REPO
from tests.support.newsletter import Newsletter

# requests: premailer imports it to fetch remote stylesheets, which the renderer forbids.
NOT_FOR_BUILD = ("httpx", "boto3", "botocore", "starlette", "uvicorn", "rich", "asyncio", "requests")

# Runs the console script's entry point in-process, then names the unwanted modules it loaded.
_PROBE = """
import sys
from pipeline.cli import main
try:
    main(["--config", sys.argv[1], "build", "1"])
except SystemExit as stop:
    assert not stop.code, stop.code
print("loaded:", *(name for name in sys.argv[2:] if name in sys.modules))
"""


def _python(newsletter: Newsletter, code: str, *args: str) -> str:
    """What ``code`` prints, run by a fresh interpreter in the newsletter's folder; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=newsletter.root,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_build_does_not_import_what_it_never_uses(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Intro with [a link](https://example.org/).\n\n## News\n\nMore.\n")
    stdout = _python(newsletter, _PROBE, str(newsletter.config_path), *NOT_FOR_BUILD)
    assert (newsletter.root / "build" / "1" / "email.html").is_file(), stdout
    loaded = stdout.rpartition("loaded:")[2].split()
    assert "loaded:" in stdout, stdout
    assert loaded == [], f"`newsletter build` imported {loaded}: import them where they are used"


def test_the_console_script_freezes_its_start_up_objects(newsletter: Newsletter) -> None:
    # The cyclic collector then leaves what was loaded at start-up alone (bench/README.md).
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["newsletter"] == "pipeline.cli:run"
    probe = (
        "import gc, sys; from pipeline.cli import run; sys.argv = ['newsletter', '--version']\n"
        "try:\n    run()\nexcept SystemExit:\n    print('frozen', gc.get_freeze_count())"
    )
    stdout = _python(newsletter, probe)
    assert "version" in stdout, stdout
    frozen = int(stdout.rpartition("frozen")[2])
    assert frozen > 10_000, f"only {frozen} objects frozen"
