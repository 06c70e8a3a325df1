"""The reputation breaker: a campaign pauses when the bounces or complaints SES reports for it pass
``[send] max_bounce_rate`` / ``max_complaint_rate`` (after ``breaker_min_sent`` messages).

In-process here: the limits, the breaker's reading schedule (a manual clock), and whole campaigns
whose transport reports bounces the way the webhook stores them (``apply_notification`` on its own
connection, as another process would). ``test_breaker_ses.py`` runs it end to end: SES on moto's
server, signed SNS notifications through SQS, the console script.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.audience.subscribers import add
from pipeline.config import load_config
from pipeline.db import open_db
from pipeline.errors import ConfigError
from pipeline.events.apply import apply_notification
from pipeline.issue.render import render_issue
from pipeline.issue.source import read_issue
from pipeline.send.delivery import (
    REPUTATION_INTERVAL,
    Reputation,
    ReputationBreaker,
    ReputationLimits,
    SendSettings,
)
from pipeline.send.ledger import Ledger, content_hash, find_campaign, prepare_campaign
from pipeline.send.message import MessageTemplate
from pipeline.send.runner import CampaignRunner, Summary
from pipeline.send.transports.base import Envelope
from tests.conftest import Newsletter
from tests.send.test_crash import set_table
from tests.support.cli import invoke_cli, one_line, run_cli
from tests.support.fakes import FakeTransport, ManualClock
from tests.support.ledger import maildir_count
from tests.support.sns import notification, ses_bounce, ses_complaint

SECRET = b"test-secret-0123456789"
DEFAULTS = ReputationLimits(max_bounce_rate=5.0, max_complaint_rate=0.1, min_sent=500)


# --- The limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reputation", "exceeded"),
    [
        (Reputation(499, 400, 400), ""),  # under the minimum sample: nothing counts yet
        (Reputation(500, 25, 0), ""),  # exactly 5 %: not over it
        (
            Reputation(500, 26, 0),
            "hard-bounce rate 5.20 % (26 of 500 sent) is over [send] max_bounce_rate 5 %",
        ),
        (Reputation(1000, 1, 1), ""),  # 0.1 % complaints: not over it
        (
            Reputation(1000, 0, 2),
            "complaint rate 0.20 % (2 of 1,000 sent) is over [send] max_complaint_rate 0.1 %",
        ),
        (Reputation(2000, 0, 0), ""),
    ],
)
def test_a_rate_trips_only_when_over_its_limit_after_the_minimum_sample(
    reputation: Reputation, exceeded: str
) -> None:
    assert DEFAULTS.exceeded(reputation) == exceeded


def test_limits_of_0_and_100_percent_mean_any_and_never() -> None:
    strict = ReputationLimits(max_bounce_rate=0.0, max_complaint_rate=0.0, min_sent=1)
    assert strict.exceeded(Reputation(1, 0, 0)) == ""
    assert strict.exceeded(Reputation(1000, 1, 0)).startswith("hard-bounce rate 0.10 %")
    assert strict.exceeded(Reputation(1000, 0, 1)).startswith("complaint rate 0.10 %")
    never = ReputationLimits(max_bounce_rate=100.0, max_complaint_rate=100.0, min_sent=1)
    assert never.exceeded(Reputation(10, 10, 10)) == ""


@pytest.mark.parametrize(
    ("bounces", "complaints", "worth"),
    [(0, 0, 500), (10, 0, 500), (40, 0, 801), (40, 2, 2001), (0, 1, 1001)],
)
def test_sent_messages_are_counted_only_as_far_as_they_can_matter(
    bounces: int, complaints: int, worth: int
) -> None:
    assert DEFAULTS.sent_worth_counting(bounces, complaints) == worth
    # At that many sent, neither rate is over its limit; two fewer and one is (one more is counted
    # than strictly needed, against rounding).
    assert DEFAULTS.exceeded(Reputation(worth, bounces, complaints)) == ""
    if worth > DEFAULTS.min_sent:
        assert DEFAULTS.exceeded(Reputation(worth - 2, bounces, complaints)) != ""


def test_the_ledger_stops_counting_sent_messages_where_they_stop_mattering(
    letter: tuple[Newsletter, sqlite3.Connection],
) -> None:
    newsletter, db = letter
    clock = ManualClock()
    service = ReportingService(newsletter.config().paths.state, clock, "bounce", lambda k: k == 2)
    try:
        run_campaign(newsletter, db, service.transport, None, clock)
    finally:
        service.close()
    ledger = Ledger(db, find_campaign(db, 1))  # type: ignore[arg-type]
    assert ledger.reputation() == Reputation(60, 1, 0)
    limits = ReputationLimits(max_bounce_rate=5.0, max_complaint_rate=0.1, min_sent=10)
    assert ledger.reputation(limits) == Reputation(21, 1, 0)  # from 21 sent on, 1 bounce is under 5 %


def test_the_breaker_reads_at_once_then_at_most_every_interval_and_its_reason_stands() -> None:
    clock = ManualClock(100.0)
    readings = [Reputation(500, 0, 0), Reputation(600, 40, 0), Reputation(700, 0, 0)]
    read: list[Reputation] = []

    def reader(limits: ReputationLimits) -> Reputation:
        assert limits is DEFAULTS
        read.append(readings[len(read)])
        return read[-1]

    breaker = ReputationBreaker(DEFAULTS, reader, 18, clock=clock)
    assert (
        breaker.check() == "" and len(read) == 1
    )  # at once: a resumed campaign over its limits sends nothing
    clock.now += REPUTATION_INTERVAL / 2
    assert breaker.check() == "" and len(read) == 1
    clock.now += REPUTATION_INTERVAL / 2
    reason = breaker.check()
    assert len(read) == 2
    assert reason.startswith("hard-bounce rate 6.67 % (40 of 600 sent) is over [send] max_bounce_rate 5 %: ")
    assert reason.endswith("`newsletter send 18 --ignore-breaker` resumes anyway")
    clock.now += 10 * REPUTATION_INTERVAL
    assert breaker.check() == reason and len(read) == 2  # tripped: no more reading, and it stays tripped


def test_without_limits_the_breaker_never_reads() -> None:
    def reader(limits: ReputationLimits) -> Reputation:
        raise AssertionError("--ignore-breaker: the counts must not even be read")

    assert ReputationBreaker(None, reader, 1).check() == ""


# --- Whole campaigns, in this process ----------------------------------------------------------------


@pytest.fixture
def letter(newsletter: Newsletter) -> Iterator[tuple[Newsletter, sqlite3.Connection]]:
    newsletter.write_issue(1, "Hello [there](https://example.org/).\n")
    db = open_db(newsletter.config().paths.state)
    for index in range(60):
        add(db, f"reader{index}@example.org")
    yield newsletter, db
    db.close()


class ReportingService:
    """A mail service (ids like SES's) whose recipients bounce or complain: while it takes message k, SES
    reports on message k-1 when ``reports(k - 1)`` says so, through the webhook's code on a connection of
    its own (another process, in real life). One message at a time, so message k-1 is recorded as sent,
    with its provider id, by then. Each message moves the breaker's clock on: it reads every round."""

    def __init__(self, state: Path, clock: ManualClock, kind: str, reports: Callable[[int], bool]) -> None:
        self.transport = FakeTransport(self._send, name="fake-ses")
        self.clock, self.kind, self.reports = clock, kind, reports
        self._events = open_db(state)
        self.previous: tuple[str, str] | None = None
        self.reported: list[str] = []

    def _send(self, envelope: Envelope) -> str:
        if self.previous is not None and self.reports(len(self.transport.received)):
            address, provider_id = self.previous
            event = (ses_bounce if self.kind == "bounce" else ses_complaint)(
                address, ses_message_id=provider_id
            )
            apply_notification(self._events, notification(event, "https://sns.example/cert.pem"))
            self.reported.append(address)
        provider_id = f"ses-{envelope.key}"
        self.previous = (envelope.recipient, provider_id)
        self.clock.now += REPUTATION_INTERVAL
        return provider_id

    def close(self) -> None:
        self._events.close()


def run_campaign(
    newsletter: Newsletter,
    db: sqlite3.Connection,
    transport: FakeTransport,
    limits: ReputationLimits | None,
    clock: ManualClock,
) -> Summary:
    config = newsletter.config()
    rendered = render_issue(config, read_issue(config.paths.issues, 1))
    preparation = prepare_campaign(db, 1, content_hash(rendered), transport)
    settings = SendSettings(
        concurrency=1, max_rate=None, max_attempts=1, max_consecutive_failures=10, reputation=limits
    )
    template = MessageTemplate(config, rendered)
    return CampaignRunner(
        db, config, preparation.campaign, template, transport, SECRET, settings, clock=clock
    ).run()


def note(db: sqlite3.Connection) -> tuple[str, str]:
    row = db.execute("SELECT status, note FROM campaigns WHERE issue = 1").fetchone()
    return row["status"], row["note"]


@pytest.mark.parametrize(
    ("kind", "reports", "rate"),
    [
        pytest.param("bounce", lambda k: k % 10 == 1, "hard-bounce rate", id="bounces"),  # 10 %
        pytest.param("complaint", lambda k: k == 5, "complaint rate", id="one-complaint"),  # 5 %
    ],
)
def test_a_campaign_pauses_once_a_rate_passes_its_limit_and_goes_on_only_when_told(
    letter: tuple[Newsletter, sqlite3.Connection], kind: str, reports: Callable[[int], bool], rate: str
) -> None:
    newsletter, db = letter
    limits = ReputationLimits(max_bounce_rate=5.0, max_complaint_rate=0.1, min_sent=20)
    clock = ManualClock()
    service = ReportingService(newsletter.config().paths.state, clock, kind, reports)
    try:
        summary = run_campaign(newsletter, db, service.transport, limits, clock)
        assert summary.status == "paused"
        assert summary.reason.startswith(f"{rate} "), summary.reason
        assert f"over [send] max_{'bounce' if kind == 'bounce' else 'complaint'}_rate" in summary.reason
        assert summary.reason.endswith("`newsletter send 1 --ignore-breaker` resumes anyway")
        # Not before the minimum sample, and within a round or two of it.
        assert 20 <= summary.counts["sent"] <= 22, summary.counts
        assert summary.counts["queued"] == 60 - summary.counts["sent"]
        assert note(db) == ("paused", summary.reason)  # what `status` shows
        sent_before = len(service.transport.received)

        again = run_campaign(newsletter, db, service.transport, limits, clock)
        assert again.status == "paused" and again.reason.startswith(f"{rate} "), again.reason
        assert len(service.transport.received) == sent_before, "a resume over the limits must send nothing"

        ignored = run_campaign(newsletter, db, service.transport, None, clock)
        assert ignored.status == "done", ignored.reason
    finally:
        service.close()
    assert sorted(service.transport.recipients().values()) == [1] * 60
    assert note(db) == ("done", "")


def test_under_the_limits_a_campaign_runs_to_its_end(letter: tuple[Newsletter, sqlite3.Connection]) -> None:
    newsletter, db = letter
    limits = ReputationLimits(max_bounce_rate=5.0, max_complaint_rate=0.1, min_sent=20)
    clock = ManualClock()
    service = ReportingService(newsletter.config().paths.state, clock, "bounce", lambda k: k == 30)  # 1 of 60
    try:
        summary = run_campaign(newsletter, db, service.transport, limits, clock)
    finally:
        service.close()
    assert summary.status == "done" and summary.counts["sent"] == 60, summary
    assert service.reported, "the bounce was reported, and counted"
    reputation = db.execute("SELECT COUNT(*) FROM campaign_feedback").fetchone()[0]
    assert reputation == 1


# --- Bad limits: one line, nothing changed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_bounce_rate": 150}, "send.max_bounce_rate must be a percentage from 0 to 100, got 150"),
        ({"max_bounce_rate": -0.5}, "send.max_bounce_rate must be a percentage from 0 to 100, got -0.5"),
        (
            {"max_complaint_rate": 100.01},
            "send.max_complaint_rate must be a percentage from 0 to 100, got 100.01",
        ),
        ({"max_complaint_rate": "0.1%"}, "send.max_complaint_rate must be a number, got '0.1%'"),
        ({"breaker_min_sent": 0}, "send.breaker_min_sent must be positive, got 0"),
    ],
)
def test_a_limit_outside_its_range_is_refused_naming_the_file_and_key(
    newsletter: Newsletter, setting: dict[str, object], message: str
) -> None:
    set_table(newsletter, "send", **setting)
    with pytest.raises(ConfigError) as raised:
        load_config(newsletter.config_path)
    assert str(raised.value) == f"{newsletter.config_path}: {message}"


def test_the_limits_default_to_the_published_thresholds_and_accept_0_and_100(newsletter: Newsletter) -> None:
    send = load_config(newsletter.config_path).send
    assert (send.max_bounce_rate, send.max_complaint_rate, send.breaker_min_sent) == (5.0, 0.1, 500)
    set_table(newsletter, "send", max_bounce_rate=0, max_complaint_rate=100)
    send = load_config(newsletter.config_path).send
    assert (send.max_bounce_rate, send.max_complaint_rate) == (0.0, 100.0)


@pytest.mark.slow  # the console script in a subprocess
def test_send_with_a_limit_out_of_range_says_so_in_one_line_and_sends_nothing(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Hello.\n")
    set_table(newsletter, "send", max_bounce_rate=150)
    result = run_cli(newsletter.root, "send", "1", env=None)
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_line(result.stderr) == (
        "error: newsletter.toml: send.max_bounce_rate must be a percentage from 0 to 100, got 150"
    )
    assert result.stdout == ""
    assert not (newsletter.root / "state").exists() and maildir_count(newsletter) == 0


def test_status_shows_both_rates_and_from_when_they_count(newsletter: Newsletter) -> None:
    newsletter.write_issue(1, "Hello.\n")
    db = open_db(newsletter.config().paths.state)
    for index in range(3):
        add(db, f"reader{index}@example.org")
    db.close()
    sent = invoke_cli(newsletter.config_path, "send", "1")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    shown = invoke_cli(newsletter.config_path, "status", "1").stdout
    assert (
        "  hard-bounce rate 0.00 % (0 of 3 sent; pauses over 5 %), complaint rate 0.00 % "
        "(0; pauses over 0.1 %); counted from 500 sent\n"
    ) in shown, shown


def test_a_stop_press_pause_names_the_command_that_resumes_it() -> None:
    clock = ManualClock()
    breaker = ReputationBreaker(
        DEFAULTS,
        lambda limits: Reputation(1000, 80, 0),
        3,
        resume="newsletter errata add 3 --stop-press",
        clock=clock,
    )
    assert breaker.check().endswith("`newsletter errata add 3 --stop-press --ignore-breaker` resumes anyway")
