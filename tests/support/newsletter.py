"""A throwaway newsletter folder, the fixture most tests start from (registered in ``tests/conftest.py``)."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Newsletter:
    """A throwaway newsletter folder: the repo's config and templates, its own issues."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "newsletter.toml"

    def config(self) -> Config:
        return load_config(self.config_path)

    def write_issue(self, number: int, body: str = "Hello.\n", **fields: object) -> Path:
        front = {"number": number, "title": f"Issue {number}", "date": "2026-11-23", **fields}
        lines = [f"{key}: {value}" for key, value in front.items() if value is not None]
        path = self.root / "issues" / f"{number}.md"
        path.write_text("---\n" + "\n".join(lines) + "\n---\n\n" + textwrap.dedent(body), encoding="utf-8")
        return path


@pytest.fixture
def newsletter(tmp_path: Path) -> Newsletter:
    root = tmp_path / "letter"
    root.mkdir()
    # SpamAssassin takes ~3 s per check: off here, on in the tests of the spam gate (tests/check/test_spam.py).
    config = (REPO / "newsletter.toml").read_text(encoding="utf-8")
    (root / "newsletter.toml").write_text(config.replace("[check]\n", "[check]\nspamassassin = false\n"))
    # Without the sample welcome mail: a test that wants one writes it (tests/web/test_welcome.py),
    # so every other test's count of mails after a confirmation stays what it was.
    shutil.copytree(
        REPO / "email_templates", root / "email_templates", ignore=shutil.ignore_patterns("welcome.md")
    )
    (root / "issues").mkdir()
    return Newsletter(root)
