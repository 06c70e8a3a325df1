"""The library's public API: every name a package lists in ``__all__`` is there, and importing a
package imports none of its modules until a name is used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = [
    "pipeline",
    "pipeline.issue",
    "pipeline.audience",
    "pipeline.check",
    "pipeline.send",
    "pipeline.send.transports",
    "pipeline.archive",
    "pipeline.events",
    "pipeline.web",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves(name: str) -> None:
    package = importlib.import_module(name)
    public = getattr(package, "__all__", None)
    assert public, f"{name} names no public API in __all__"
    for attribute in public:
        assert getattr(package, attribute) is not None, f"{name}.{attribute}"
    assert set(public) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_importing_the_package_imports_no_stage() -> None:
    code = "import sys, pipeline, pipeline.check; print(sorted(m for m in sys.modules if m.startswith('pipeline')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['pipeline', 'pipeline._lazy', 'pipeline.check']", loaded
