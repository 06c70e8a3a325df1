"""Delivering one message: the settings of a send and the outcome of one delivery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["sent", "failed", "retry", "fatal", "skipped", "unknown"]


@dataclass(frozen=True)
class Outcome:
    subscriber_id: int
    kind: Kind
    attempts: int
    provider_id: str = ""
    error: str = ""


@dataclass
class SendSettings:
    concurrency: int
    max_rate: float | None
    max_attempts: int
    max_consecutive_failures: int
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
