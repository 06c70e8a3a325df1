"""`import_deferring`: a library imported while a module it imports at its top is a stand-in.

Each test writes a small library and a costly module it imports under names of its own, so the
stand-in never touches a module the rest of the suite uses.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline._lazy import import_deferring


@pytest.fixture
def names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(library, costly): the library imports the costly module at its top and uses it in one function."""
    suffix = uuid.uuid4().hex[:8]
    library, costly = f"library_{suffix}", f"costly_{suffix}"
    (tmp_path / f"{costly}.py").write_text("import sys\nLOADED = True\nVALUE = 42\n", encoding="utf-8")
    (tmp_path / f"{library}.py").write_text(
        f"import {costly}\n\ndef value():\n    return {costly}.VALUE\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield library, costly
    for name in (library, costly):
        sys.modules.pop(name, None)


def test_the_deferred_module_is_not_loaded_by_the_import(names: tuple[str, str]) -> None:
    library, costly = names
    module = import_deferring(library, [costly])
    assert module.__name__ == library
    assert costly not in sys.modules, "the costly module was imported with the library"


def test_the_first_use_loads_the_real_module(names: tuple[str, str]) -> None:
    library, costly = names
    module = import_deferring(library, [costly])
    assert module.value() == 42
    assert getattr(sys.modules[costly], "LOADED", False) is True, "the real module is not in sys.modules"


def test_a_module_already_loaded_is_used_as_it_is(names: tuple[str, str]) -> None:
    library, costly = names
    real = __import__(costly)
    module = import_deferring(library, [costly])
    assert getattr(module, costly) is real
    assert sys.modules[costly] is real


def test_a_library_already_imported_is_returned_untouched(names: tuple[str, str]) -> None:
    library, costly = names
    first = import_deferring(library, [costly])
    assert import_deferring(library, [costly]) is first


def test_a_failed_import_leaves_no_stand_in_behind(
    names: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library, costly = names
    (tmp_path / f"{library}.py").write_text(f"import {costly}\nraise ImportError('broken library')\n")
    with pytest.raises(ImportError, match="broken library"):
        import_deferring(library, [costly])
    assert costly not in sys.modules
    assert library not in sys.modules


def test_premailer_is_imported_without_requests() -> None:
    # A fresh interpreter: this one may have imported requests through another test already.
    import subprocess

    probe = (
        "import sys; from pipeline._lazy import import_deferring; "
        "premailer = import_deferring('premailer', ['requests']); "
        "print('requests' in sys.modules, type(premailer.premailer.requests).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "_Deferred"], done.stdout + done.stderr
