"""Chromium for the browser tests: Debian's package, driven by Playwright (a declared test dependency).

Chromium is the one thing a user's clone may truly lack (it comes from apt, not pip): without it
the browser tests skip, saying how to get it. A missing Playwright is a broken install and fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import playwright.sync_api as sync_api
import pytest

CHROMIUM = Path("/usr/bin/chromium")
NO_CHROMIUM = f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)"


def have_chromium() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def require_chromium() -> None:
    """Skip the calling test (or, at import, the whole module) when there is no chromium to drive."""
    if not have_chromium():
        pytest.skip(NO_CHROMIUM, allow_module_level=True)


# Flags for a headless chromium on a closed network: no background requests, no updates, no first-run UI.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@contextmanager
def launched_chromium() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright; closed on exit."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
