"""The kill -9 drill (issue 11): one campaign, two sender processes, killed with SIGKILL at random
points, at least ten times, each time resumed; at the end every active subscriber has exactly one
copy: 0 duplicates, 0 missing.

Each kill point is a number of messages delivered, and a victim: the parent (``send``, the senders
die with it) or one of the two senders (the parent then stops the other and pauses). They are drawn
from a seed the test prints; ``DRILL_SEED=<seed>`` draws the same points again (where exactly a
kill lands between two messages still depends on the machine's timing). Between runs the test acts
as the mail client and remembers every message file (``tests/send/test_crash.py``), so a second copy
shows up even where the maildir would overwrite the first.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.conftest import Newsletter
from tests.send.test_crash import (
    assert_ledger_matches_maildir,
    assert_untouched,
    delivered_count,
    inodes,
    messages,
    read_some,
    subscribe,
)
from tests.send.test_fanout import (
    assert_all_gone,
    finish,
    named_share,
    resume_exactly_once,
    senders_of,
    start,
    with_processes,
)
from tests.support.cli import wait_for

pytestmark = pytest.mark.slow  # real multi-process campaigns through the console script

KILLS = 10
LIST = 700  # about 680 active: 10 kill points with room between them
# Messages a second over both senders. Each run spends a second or two starting before it sends; the
# sending itself takes about 2.5 s over all ten runs. Slow enough that a test process the machine
# holds back for a moment overshoots a kill point by tens of messages, not the rest of the campaign.
RATE = 200.0


def kill_points(rng: random.Random, total: int) -> list[tuple[int, str]]:
    """``KILLS`` (messages delivered, victim) pairs, spread over the campaign, in order."""
    targets = sorted(rng.sample(range(5, int(total * 0.8)), KILLS))  # the last fifth: room to overshoot
    return [(target, rng.choice(("parent", "sender 1", "sender 2"))) for target in targets]


def test_randomised_kill_9_drill_two_senders_each_subscriber_exactly_once(newsletter: Newsletter) -> None:
    seed = int(os.environ.get("DRILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill -9 drill: seed {seed} (DRILL_SEED={seed} draws the same kill points)")
    with_processes(newsletter, RATE)
    people = subscribe(newsletter, LIST)
    total = len(people.active)
    points = kill_points(random.Random(seed), total)
    print("kill points (delivered, victim):", points)
    started = time.monotonic()
    seen: dict[str, tuple[int, int]] = {}

    for number, (target, victim) in enumerate(points, start=1):
        where = f"seed {seed}, kill {number} of {KILLS} ({victim} at {target} delivered)"
        sender = start(newsletter, "send", "1")
        pid = sender.pid
        wait_for(lambda pid=pid: len(senders_of(pid)) == 2, f"two sender processes ({where})", sender)
        children = senders_of(sender.pid)
        goal = max(target, delivered_count(newsletter) + 1)
        wait_for(lambda goal=goal: delivered_count(newsletter) >= goal, f"{goal} delivered ({where})", sender)
        os.kill(sender.pid if victim == "parent" else children[int(victim[-1]) - 1], signal.SIGKILL)
        out, err = finish(sender)
        assert_all_gone(sender.pid)
        if victim == "parent":
            assert sender.returncode == -signal.SIGKILL, f"{where}: {out}{err}"
        else:
            assert sender.returncode == 1, f"{where}: {out}{err}"
            named_share(err)  # one line naming the sender that stopped

        statuses = assert_ledger_matches_maildir(newsletter)  # the write-ahead rule held
        assert statuses["queued"] or statuses["sending"], f"{where}: the campaign ended before the kill"
        assert_untouched(newsletter, seen)  # nothing delivered before was written again
        read_some(newsletter, also={s for s in statuses["sending"] if s % 2})
        seen = inodes(newsletter)

    killed_in = time.monotonic() - started
    resume_exactly_once(newsletter, people)  # fails on any duplicate or missing copy
    found = messages(newsletter)
    duplicates = sum(len(paths) - 1 for paths in found.values())
    missing = len(set(people.active) - set(found))
    print(
        f"kill -9 drill, seed {seed}: {KILLS} kills in {killed_in:.1f}s, then resumed: "
        f"{duplicates} duplicates, {missing} missing of {total}"
    )
    assert (duplicates, missing) == (0, 0)
