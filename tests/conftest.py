"""Fixtures every test file can use; the shared helpers themselves live in ``tests/support/``."""

from __future__ import annotations

import signal

import pytest

from tests.support.newsletter import REPO, Newsletter, newsletter

# The moto server and AWS environment fixtures (moto_endpoint, ses, proxy, sqs_env), for any test file.
pytest_plugins = ["tests.support.aws"]

__all__ = ["REPO", "Newsletter", "newsletter"]


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (`make test &`, a CI runner's job)
    inherits SIGINT ignored, and so would every process a test starts: Python keeps an inherited
    "ignore", so the Ctrl-C tests' `send`, `preview` and `import` would never see their Ctrl-C.
    Reset it here, in the main process and in each xdist worker, so children start with the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
