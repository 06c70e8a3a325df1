"""One delivery with retries (:func:`deliver_with_retry`) and the failure breaker, without a database."""

from __future__ import annotations

import pytest

from pipeline.errors import (
    DeliveryUnknown,
    Rejected,
    TemporaryFailure,
    TransportError,
    TransportUnavailable,
)
from pipeline.send.delivery import FailureBreaker, Outcome, SendSettings, deliver_with_retry
from pipeline.send.transports import Envelope

ENVELOPE = Envelope("news@example.org", "reader@example.org", b"message", "nl1-c1-s7")
SETTINGS = SendSettings(
    concurrency=1,
    max_rate=None,
    max_attempts=4,
    max_consecutive_failures=3,
    backoff_base=1.0,
    backoff_cap=3.0,
)


class ScriptedTransport:
    """Answers each send with the next item of ``script``: an error is raised, a string is a provider id."""

    name = "scripted"

    def __init__(self, *script: str | Exception) -> None:
        self.script = list(script)
        self.sends = 0

    def send(self, envelope: Envelope) -> str:
        self.sends += 1
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def max_rate(self) -> float | None:
        return None

    def was_delivered(self, key: str) -> bool | None:
        return None

    def close(self) -> None:
        pass


class Sleeps:
    """Records each backoff instead of waiting; says "stopping" once ``stop_after`` sleeps were asked for."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.delays: list[float] = []
        self.stop_after = stop_after

    def __call__(self, delay: float) -> bool:
        self.delays.append(delay)
        return self.stop_after is not None and len(self.delays) >= self.stop_after


def deliver(transport: ScriptedTransport, sleep: Sleeps | None = None, attempts: int = 0) -> Outcome:
    return deliver_with_retry(
        transport,  # type: ignore[arg-type]  # a stand-in with the calls deliver_with_retry makes
        ENVELOPE,
        SETTINGS,
        subscriber_id=7,
        attempts=attempts,
        sleep=sleep or Sleeps(),
    )


@pytest.fixture
def longest_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter draws each delay from [0, bound]: always draw the bound, to see the bounds."""
    monkeypatch.setattr("pipeline.send.delivery.random.uniform", lambda low, high: high)


def test_temporary_failures_are_retried_with_exponential_backoff(longest_jitter: None) -> None:
    transport = ScriptedTransport(TemporaryFailure("busy"), TemporaryFailure("busy"), "provider-1")
    sleep = Sleeps()
    outcome = deliver(transport, sleep, attempts=2)
    assert outcome == Outcome(7, "sent", 5, provider_id="provider-1")  # two earlier runs, three tries now
    assert sleep.delays == [1.0, 2.0]


def test_backoff_stops_growing_at_the_cap_and_the_last_failure_is_left_for_a_later_run(
    longest_jitter: None,
) -> None:
    transport = ScriptedTransport(*[TemporaryFailure("busy")] * 4)
    sleep = Sleeps()
    outcome = deliver(transport, sleep)
    assert (outcome.kind, outcome.attempts, outcome.error) == ("retry", 4, "busy")
    assert sleep.delays == [1.0, 2.0, 3.0]  # not 4.0: the cap


def test_backoff_is_jittered() -> None:
    delays = []
    for _ in range(20):
        sleep = Sleeps()
        deliver(ScriptedTransport(TemporaryFailure("busy"), "provider-1"), sleep)
        delays += sleep.delays
    assert all(0 <= delay <= 1.0 for delay in delays) and len(set(delays)) > 1


def test_a_stop_during_backoff_leaves_the_message_for_the_next_run() -> None:
    transport = ScriptedTransport(TemporaryFailure("busy"), "never reached")
    outcome = deliver(transport, Sleeps(stop_after=1))
    assert outcome.kind == "retry" and outcome.attempts == 1
    assert transport.sends == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (Rejected("no such mailbox"), "failed"),
        (DeliveryUnknown("connection lost after DATA"), "unknown"),
        (TransportUnavailable("account paused"), "fatal"),
        (TransportError("bad credentials"), "fatal"),
    ],
)
def test_errors_that_are_not_temporary_are_never_retried(error: TransportError, kind: str) -> None:
    transport = ScriptedTransport(error, "never reached")
    sleep = Sleeps()
    outcome = deliver(transport, sleep)
    assert (outcome.kind, outcome.attempts, outcome.error) == (kind, 1, str(error))
    assert transport.sends == 1 and not sleep.delays


def failure(error: str = "busy") -> Outcome:
    return Outcome(1, "retry", 1, error=error)


def test_the_breaker_trips_after_the_limit_of_failures_in_a_row() -> None:
    breaker = FailureBreaker(3)
    for outcome in (
        failure(),
        Outcome(1, "failed", 1, error="rejected"),
        Outcome(1, "unknown", 1, error="lost"),
    ):
        assert breaker.reason == ""
        breaker.record(outcome)
    assert breaker.reason == "3 failures in a row (last: lost)"


def test_a_sent_message_resets_the_breaker() -> None:
    breaker = FailureBreaker(3)
    for outcome in (failure(), failure(), Outcome(1, "sent", 1, provider_id="x"), failure(), failure()):
        breaker.record(outcome)
    assert breaker.reason == ""


def test_skipped_and_fatal_outcomes_do_not_count_as_failures_in_a_row() -> None:
    breaker = FailureBreaker(2)
    breaker.record(failure())
    breaker.record(Outcome(1, "skipped", 0))
    breaker.record(Outcome(1, "fatal", 1, error="paused"))
    assert breaker.reason == ""
