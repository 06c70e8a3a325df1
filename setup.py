"""Build hook: the wheel carries the repository's email_templates/ as pipeline/_defaults/email_templates,
the defaults `newsletter init` copies into a new newsletter (pipeline/quickstart.py). One copy in the
repository; everything else about the build is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).parent / "email_templates"


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads them where they are
            target = Path(self.build_lib) / "pipeline" / "_defaults" / "email_templates"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(TEMPLATES, target, ignore=shutil.ignore_patterns(".*", "__pycache__"))


setup(cmdclass={"build_py": BuildWithTemplates})
