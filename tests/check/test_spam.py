"""The spam gate: SpamAssassin's local score of the message a subscriber would get.

CI installs SpamAssassin (.ci/run), so these run there; without it on PATH, they skip saying so, except
the one that checks what `check` says when it is absent.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.check.gate import check_issue
from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.support.cli import clean_env, run_cli
from tests.support.newsletter import REPO, Newsletter

# SpamAssassin takes seconds per message: those tests are slow, and `make test-fast` leaves them out.
NO_SPAMASSASSIN = "spamassassin not on PATH (apt-get install spamassassin)"

# Written for this test to set off as many of SpamAssassin's content rules as a message can.
SPAMMY = """\
Dear friend, CONGRATULATIONS!!! You have been selected as a WINNER. This is NOT spam: it is a
once in a lifetime opportunity to earn $5000 per week from home, no experience required.

CLICK HERE NOW to claim your FREE money, 100% GUARANTEED, no credit check, risk free! Limited
time offer, act now while supplies last. Double your income, work from home.

[CLICK HERE TO CLAIM YOUR PRIZE NOW](http://192.168.10.20/claim.php?id=1)

Send your bank account details to verify your identity. Wire transfer today, 100% satisfied or
money back guarantee!!!
"""


def turn_on_spamassassin(newsletter: Newsletter, extra: str = "") -> None:
    path = newsletter.config_path
    path.write_text(path.read_text().replace("spamassassin = false\n", extra))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("spamassassin") is None, reason=NO_SPAMASSASSIN)
def test_a_spammy_issue_fails_the_gate_with_its_top_rules(newsletter: Newsletter) -> None:
    turn_on_spamassassin(newsletter)
    newsletter.write_issue(3, SPAMMY, subject="'YOU HAVE WON $1,000,000 CASH - 100% FREE - ACT NOW!!!'")
    done = run_cli(newsletter.root, "check", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "spam score" in line]
    assert len(errors) == 1 and errors[0].startswith("issues/3.md: error: spam score "), done.stderr
    assert "over 5:" in errors[0] and "+" in errors[0].partition("over 5:")[2]  # names rules with points
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("spamassassin") is None, reason=NO_SPAMASSASSIN)
def test_warn_and_fail_thresholds_come_from_the_config(newsletter: Newsletter) -> None:
    turn_on_spamassassin(newsletter, "spam_warn = 0.1\nspam_fail = 50\n")
    newsletter.write_issue(3, SPAMMY)
    result = check_issue(newsletter.config(), 3, online=False)
    spam = [p for p in result.problems if "spam score" in p.message]
    assert [p.severity for p in spam] == ["warning"], result.problems
    assert "over 0.1" in spam[0].message and result.spam_note.startswith("SpamAssassin score ")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("spamassassin") is None, reason=NO_SPAMASSASSIN)
def test_the_real_sample_issue_passes() -> None:
    result = check_issue(load_config(REPO / "newsletter.toml"), 2, online=False)
    assert not [p for p in result.problems if "spam score" in p.message], result.spam_note
    score = float(result.spam_note.split()[2])
    assert score <= 3.0, result.spam_note


@pytest.mark.slow
def test_without_spamassassin_check_says_so_in_one_line(newsletter: Newsletter, tmp_path: Path) -> None:
    turn_on_spamassassin(newsletter)
    newsletter.write_issue(1)
    empty = tmp_path / "bin"  # the console script names its interpreter by absolute path
    empty.mkdir()
    done = run_cli(newsletter.root, "check", "1", env=clean_env({"PATH": str(empty)}))
    assert done.returncode == 0, done.stdout + done.stderr
    notes = [line for line in done.stdout.splitlines() if "spamassassin" in line.lower()]
    assert notes == ["spam score not checked: spamassassin is not on PATH (apt-get install spamassassin)"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("spam_warn = 0\n", "check.spam_warn must be a SpamAssassin score between 0 and 100"),
        ("spam_fail = 500\n", "check.spam_fail must be a SpamAssassin score between 0 and 100"),
        ("spam_warn = 6\n", "check.spam_warn (6.0) must not be above check.spam_fail (5.0)"),
    ],
)
def test_out_of_range_thresholds_are_refused_in_one_line(
    newsletter: Newsletter, keys: str, message: str
) -> None:
    turn_on_spamassassin(newsletter, keys)
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        newsletter.config()
    assert "\n" not in str(refused.value)
