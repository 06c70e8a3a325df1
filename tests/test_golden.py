from __future__ import annotations

import difflib

import pytest

from .golden import GOLDEN, render_outputs, sample_numbers


@pytest.mark.parametrize("number", sample_numbers())
def test_rendering_matches_golden_files(number: int) -> None:
    for name, actual in render_outputs(number).items():
        path = GOLDEN / name
        assert path.exists(), f"no golden file {path.name}: run `make golden`"
        expected = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = difflib.unified_diff(
                expected.splitlines(), actual.splitlines(), f"golden/{name}", "rendered", lineterm="", n=1
            )
            pytest.fail(
                f"{name} differs from its golden file (run `make golden` if intended):\n"
                + "\n".join(list(diff)[:40])
            )


def test_every_golden_file_has_a_sample_issue() -> None:
    expected = {f"{n}.{ext}" for n in sample_numbers() for ext in ("html", "txt")}
    assert {p.name for p in GOLDEN.glob("*.*")} == expected
