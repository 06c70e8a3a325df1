"""Fixtures for the SES event tests: one signing key per module (RSA key generation is slow)."""

from __future__ import annotations

import pytest

from tests.support.sns import Signer


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()
