"""The send deadline: a campaign unfinished ``[send] deadline_hours`` after it started is not resumed
without ``--late`` (an issue that says "this Friday" must not land on Tuesday by accident)."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3

import pytest

from pipeline.config import load_config
from pipeline.errors import CampaignError, ConfigError
from pipeline.issue.build import build_issue
from pipeline.publish import SendOptions, send_issue
from tests.conftest import Newsletter
from tests.send.test_crash import (
    cli,
    messages,
    new_issue,
    paused_after,
    run,
    send_in_process,
    set_table,
    subscribe,
)
from tests.support.cli import one_line, run_make
from tests.support.ledger import state_db
from tests.support.ledger import statuses_by_subscriber as ledger

HOUR = 3600.0


def paused_campaign(newsletter: Newsletter) -> dt.datetime:
    """Issue 1's campaign, paused after 10 of its 40 recipients (an account paused); when it started."""
    new_issue(newsletter)
    subscribe(newsletter, 40, inactive=False)
    assert send_in_process(newsletter, paused_after(10)).status == "paused"
    return dt.datetime.fromisoformat(campaign_row(newsletter)["created_at"])


def campaign_row(newsletter: Newsletter) -> sqlite3.Row:
    db = state_db(newsletter)
    db.row_factory = sqlite3.Row
    try:
        row: sqlite3.Row = db.execute("SELECT * FROM campaigns WHERE issue = 1").fetchone()
        return row
    finally:
        db.close()


def resume_at(newsletter: Newsletter, moment: dt.datetime, **options: bool) -> str:
    """``send 1`` as if run at ``moment``; the summary's status."""
    config = newsletter.config()

    def confirm(*_: object) -> bool:
        return True

    summary = send_issue(
        config,
        build_issue(config, 1, pinned=True),
        SendOptions(offline=True, **options),
        confirm=confirm,
        clock=moment.timestamp,
    )
    return summary.status


@pytest.mark.parametrize(
    ("hours", "options", "deadline_hours"),
    [
        pytest.param(47.9, {}, None, id="before-the-deadline"),
        pytest.param(100, {"late": True}, None, id="late-with---late"),
        pytest.param(1000, {}, 0, id="no-deadline"),
        pytest.param(4.4, {}, 4.5, id="before-a-shorter-deadline"),
    ],
)
def test_a_campaign_resumes_before_its_deadline_or_when_told(
    newsletter: Newsletter, hours: float, options: dict[str, bool], deadline_hours: float | None
) -> None:
    started = paused_campaign(newsletter)
    if deadline_hours is not None:
        set_table(newsletter, "send", max_rate=1000, concurrency=8, deadline_hours=deadline_hours)
    assert resume_at(newsletter, started + dt.timedelta(hours=hours), **options) == "done"
    assert len(messages(newsletter)) == 30  # the maildir got the 30 the paused service had not taken


@pytest.mark.parametrize(
    ("hours", "deadline_hours", "age"),
    [(49.5, None, "2 day(s) 1 hour(s)"), (5.2, 4.5, "5 hour(s)")],
    ids=["default-48", "shorter"],
)
def test_past_its_deadline_a_campaign_is_refused_with_its_age_and_nothing_changes(
    newsletter: Newsletter, hours: float, deadline_hours: float | None, age: str
) -> None:
    started = paused_campaign(newsletter)
    if deadline_hours is not None:
        set_table(newsletter, "send", max_rate=1000, concurrency=8, deadline_hours=deadline_hours)
    before, row = ledger(newsletter), campaign_row(newsletter)
    with pytest.raises(CampaignError) as refused:
        resume_at(newsletter, started + dt.timedelta(hours=hours))
    assert str(refused.value) == (
        f"issue 1's campaign started {age} ago ({started.isoformat()}), past [send] "
        f"deadline_hours = {deadline_hours or 48:g}: its news may be stale; nothing was sent. "
        "Pass --late to send it to the 30 recipient(s) left anyway"
    )
    assert ledger(newsletter) == before and tuple(campaign_row(newsletter)) == tuple(row)
    assert messages(newsletter) == {}


def test_a_negative_deadline_is_refused_naming_the_key(newsletter: Newsletter) -> None:
    set_table(newsletter, "send", deadline_hours=-1)
    with pytest.raises(
        ConfigError, match=r"newsletter\.toml: send\.deadline_hours must be 0 or more, got -1"
    ):
        load_config(newsletter.config_path)


@pytest.mark.slow  # the console script in a subprocess
def test_cli_refuses_a_late_resume_in_one_line_status_shows_the_deadline_and_late_sends_it(
    newsletter: Newsletter,
) -> None:
    paused_campaign(newsletter)
    status = cli(newsletter, "status", "1")
    started = campaign_row(newsletter)["created_at"]
    deadline = (dt.datetime.fromisoformat(started) + dt.timedelta(hours=48)).isoformat()
    assert f"  started {started}, deadline {deadline}\n" in status.stdout, status.stdout
    # Two and a bit days later (the ledger is what `send` reads the start from).
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=50, minutes=5)).isoformat(timespec="seconds")
    db = state_db(newsletter)
    with db:
        db.execute("UPDATE campaigns SET created_at = ?", (long_ago,))
    db.close()
    before = ledger(newsletter)

    refused = run(newsletter, "send", "1")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = one_line(refused.stderr)
    assert re.fullmatch(
        r"error: issue 1's campaign started 2 day\(s\) 2 hour\(s\) ago \(.+\), past \[send\] deadline_hours = 48: "
        r"its news may be stale; nothing was sent\. Pass --late to send it to the 30 recipient\(s\) left anyway",
        line,
    ), line
    assert ledger(newsletter) == before and messages(newsletter) == {}
    status = run_make(newsletter.config_path, "status", "ISSUE=1")  # the Makefile, as the editor runs it
    assert status.returncode == 0, status.stderr
    assert re.search(
        r"  started \S+, deadline \S+, passed: `newsletter send` resumes it only with --late", status.stdout
    ), status.stdout

    late = run_make(newsletter.config_path, "send", "ISSUE=1", "ARGS=--late")
    assert late.returncode == 0, late.stdout + late.stderr
    assert "issue 1: campaign complete" in late.stdout
    assert len(messages(newsletter)) == 30
    assert "passed" not in cli(newsletter, "status", "1").stdout  # done: the deadline no longer matters


def test_a_complete_campaign_is_never_late_but_newcomers_past_the_deadline_need_late(
    newsletter: Newsletter,
) -> None:
    new_issue(newsletter)
    subscribe(newsletter, 20, inactive=False)
    assert send_in_process(newsletter).status == "done"
    started = dt.datetime.fromisoformat(campaign_row(newsletter)["created_at"])
    subscribe(newsletter, 3, first=100, inactive=False)
    later = started + dt.timedelta(hours=72)
    assert resume_at(newsletter, later) == "done"  # nothing to send: not refused, nothing sent
    assert len(messages(newsletter)) == 20
    with pytest.raises(CampaignError, match="Pass --late to send it to the 3 recipient"):
        resume_at(newsletter, later, include_new=True)
    assert resume_at(newsletter, later, include_new=True, late=True) == "done"
    assert len(messages(newsletter)) == 23
