"""Fixtures every test file can use; the shared helpers themselves live in ``tests/support/``."""

from __future__ import annotations

from tests.support.newsletter import REPO, Newsletter, newsletter

# The moto server and AWS environment fixtures (moto_endpoint, ses, proxy, sqs_env), for any test file.
pytest_plugins = ["tests.support.aws"]

__all__ = ["REPO", "Newsletter", "newsletter"]
