"""The campaign ledger (:class:`pipeline.send.ledger.Ledger`): reading the queue, claiming, recording, closing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.audience.subscribers import add, set_status
from pipeline.config import Config
from pipeline.db import open_db, transaction
from pipeline.issue.render import Rendered, render_issue
from pipeline.issue.source import read_issue
from pipeline.send.delivery import Outcome
from pipeline.send.ledger import Candidate, Ledger, prepare_campaign
from tests.conftest import Newsletter
from tests.send.test_campaign import FakeTransport, accept, recipients, run


@pytest.fixture
def ledger(newsletter: Newsletter) -> Iterator[Ledger]:
    db = open_db(newsletter.config().paths.state)
    for index in range(10):
        add(db, f"reader{index}@example.org", name=f"Reader {index}")  # ids 1 to 10
    campaign = prepare_campaign(db, 1, "digest", FakeTransport(accept)).campaign
    yield Ledger(db, campaign)
    db.close()


@pytest.fixture
def campaign_setup(newsletter: Newsletter) -> tuple[Config, Rendered, sqlite3.Connection]:
    """Issue 1, ready to send to a list of ten (ids 1 to 10), as ``run`` takes it."""
    newsletter.write_issue(1, "Hello.\n")
    config = newsletter.config()
    db = open_db(config.paths.state)
    for index in range(10):
        add(db, f"reader{index}@example.org", name=f"Reader {index}")
    return config, render_issue(config, read_issue(config.paths.issues, 1)), db


def rows(ledger: Ledger) -> dict[int, sqlite3.Row]:
    found = ledger.db.execute(
        "SELECT subscriber_id, status, provider_id, attempts, last_error FROM deliveries WHERE campaign_id = ?",
        (ledger.campaign.id,),
    )
    return {row["subscriber_id"]: row for row in found}


def unsubscribe_elsewhere(state_dir: Path, subscriber_id: int) -> None:
    """Commit an unsubscribe on a connection of its own, as the web service would."""
    other = open_db(state_dir)
    try:
        with transaction(other):
            set_status(other, subscriber_id, "unsubscribed", "test")
    finally:
        other.close()


def test_the_queue_is_read_in_order_after_the_cursor_and_within_the_share(ledger: Ledger) -> None:
    assert [c.subscriber_id for c in ledger.queued(after=0, limit=3)] == [1, 2, 3]
    assert [c.subscriber_id for c in ledger.queued(after=3, limit=3)] == [4, 5, 6]
    assert [c.subscriber_id for c in ledger.queued(after=0, limit=10, partition=(1, 3))] == [1, 4, 7, 10]
    assert ledger.queued(after=0, limit=1)[0] == Candidate(1, 0, "reader0@example.org", "Reader 0")


def test_reading_the_queue_claims_nothing(ledger: Ledger) -> None:
    ledger.queued(after=0, limit=5)
    assert {row["status"] for row in rows(ledger).values()} == {"queued"}


def test_claimed_rows_are_marked_sending_and_returned(ledger: Ledger) -> None:
    candidates = ledger.queued(after=0, limit=3)
    assert ledger.record_and_claim([], candidates) == candidates
    assert [row["status"] for row in rows(ledger).values()][:4] == ["sending", "sending", "sending", "queued"]
    assert ledger.queued(after=0, limit=10)[0].subscriber_id == 4, "a claimed row is no longer queued"


def test_outcomes_are_recorded_with_what_each_kind_means_for_the_row(ledger: Ledger) -> None:
    ledger.record_and_claim([], ledger.queued(after=0, limit=4))
    ledger.record_and_claim(
        [
            Outcome(1, "sent", 1, provider_id="provider-1"),
            Outcome(2, "failed", 2, error="rejected"),
            Outcome(3, "retry", 3, error="busy"),
            Outcome(4, "unknown", 1, error="lost"),
        ]
    )
    found = {sid: tuple(row)[1:] for sid, row in rows(ledger).items() if sid <= 4}
    assert found == {
        1: ("sent", "provider-1", 1, None),
        2: ("failed", None, 2, "rejected"),
        3: ("queued", None, 3, "busy"),  # tried again by the next run
        4: ("sending", None, 1, "lost"),  # unknown: never resent blindly
    }


def test_a_subscriber_who_left_before_the_read_is_skipped(ledger: Ledger, newsletter: Newsletter) -> None:
    unsubscribe_elsewhere(newsletter.config().paths.state, 2)
    claimed = ledger.record_and_claim([], ledger.queued(after=0, limit=3))
    assert [c.subscriber_id for c in claimed] == [1, 3]
    assert tuple(rows(ledger)[2])[1:] == ("skipped", None, 0, "subscriber is unsubscribed")


def test_an_unsubscribe_committed_between_the_read_and_the_claim_is_honoured(
    ledger: Ledger, newsletter: Newsletter
) -> None:
    candidates = ledger.queued(after=0, limit=3)  # subscriber 2 is still active here
    unsubscribe_elsewhere(newsletter.config().paths.state, 2)
    claimed = ledger.record_and_claim([], candidates)
    assert 2 not in [c.subscriber_id for c in claimed]
    assert tuple(rows(ledger)[2])[1:] == ("skipped", None, 0, "subscriber is unsubscribed")


def test_closing_pauses_while_rows_are_queued_or_unknown_and_is_done_after(ledger: Ledger) -> None:
    closing = ledger.close("")
    assert (closing.status, closing.counts["queued"]) == ("paused", 10)
    assert closing.reason.startswith("10 message(s) could not be sent yet")
    everyone = ledger.record_and_claim([], ledger.queued(after=0, limit=10))
    assert ledger.close("").reason == "10 message(s) in an unknown state"
    ledger.record_and_claim([Outcome(c.subscriber_id, "sent", 1, provider_id="p") for c in everyone])
    assert ledger.close("").status == "done"
    assert ledger.close("account paused").status == "paused"
    assert ledger.notes().note == "account paused"


def test_the_runner_never_mails_a_subscriber_who_left_between_its_read_and_its_claim(
    campaign_setup: tuple[Config, Rendered, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the claim re-checked the subscriber, an unsubscribe committed in this gap was ignored."""
    config, _rendered, db = campaign_setup
    leaver = 7
    leaver_email = db.execute("SELECT email FROM subscribers WHERE id = ?", (leaver,)).fetchone()[0]
    read = Ledger.queued
    left: list[int] = []

    def read_then_unsubscribe(self: Ledger, **query: object) -> list[Candidate]:
        candidates = read(self, **query)  # type: ignore[arg-type]
        if not left and leaver in [c.subscriber_id for c in candidates]:
            unsubscribe_elsewhere(config.paths.state, leaver)
            left.append(leaver)
        return candidates

    monkeypatch.setattr(Ledger, "queued", read_then_unsubscribe)
    transport = FakeTransport(accept)
    _, summary = run(campaign_setup, transport)
    assert left, "the unsubscribe never landed between a read and a claim"
    assert leaver_email not in recipients(transport)
    assert summary.status == "done" and summary.counts["skipped"] == 1
    row = db.execute(
        "SELECT status, last_error FROM deliveries WHERE subscriber_id = ?", (leaver,)
    ).fetchone()
    assert tuple(row) == ("skipped", "subscriber is unsubscribed")
