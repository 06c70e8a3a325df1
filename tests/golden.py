"""Golden files: the exact HTML and text each sample issue renders to.

``make golden`` (``python -m tests.golden``) rewrites them after an intended
change; review the diff before committing, it is what subscribers will see.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import load_config
from pipeline.issue.render import render_issue
from pipeline.issue.source import available_numbers, read_issue

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"


def sample_numbers() -> list[int]:
    return available_numbers(load_config(REPO / "newsletter.toml").paths.issues)


def render_outputs(number: int) -> dict[str, str]:
    config = load_config(REPO / "newsletter.toml")
    rendered = render_issue(config, read_issue(config.paths.issues, number))
    return {f"{number}.html": rendered.html, f"{number}.txt": rendered.text}


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for stale in GOLDEN.glob("*.*"):
        stale.unlink()
    for number in sample_numbers():
        for name, content in render_outputs(number).items():
            (GOLDEN / name).write_text(content, encoding="utf-8")
            print(f"wrote {(GOLDEN / name).relative_to(REPO)}")


if __name__ == "__main__":
    main()
