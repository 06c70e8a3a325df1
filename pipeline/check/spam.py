"""The local SpamAssassin score of the message a subscriber would get, with the rules that made it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

SPAMASSASSIN = "spamassassin"
TIMEOUT = 120  # seconds: ~3 s on an idle machine, much more on a busy one
# One line of the report's table: " 1.0 URI_TRY_3LD           \"Try it\" URI, suspicious hostname"
_RULE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z][A-Z0-9_]+)\s+(.*)$")
_SCORE = re.compile(r"^X-Spam-Status: \w+, score=(-?\d+(?:\.\d+)?)", re.MULTILINE)


@dataclass(frozen=True)
class Rule:
    name: str
    points: float
    description: str


@dataclass(frozen=True)
class SpamScore:
    score: float
    rules: list[Rule]
    """The rules that added points, most points first."""

    def top(self, count: int = 3) -> str:
        return ", ".join(f"{rule.name} {rule.points:+.1f}" for rule in self.rules[:count]) or "no rule scored"


def spam_score(message: bytes) -> SpamScore | str:
    """SpamAssassin's score of ``message`` (local tests only: no DNS or network lists), or why there is none."""
    command = shutil.which(SPAMASSASSIN)
    if command is None:
        return "spam score not checked: spamassassin is not on PATH (apt-get install spamassassin)"
    try:
        # -L: local tests only (offline, repeatable); -t: the message back, with the report appended;
        # --prefspath: do not create ~/.spamassassin/user_prefs.
        done = subprocess.run(
            [command, "-L", "-t", "--prefspath=/dev/null"],
            input=message,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"spam score not checked: spamassassin failed: {error}"
    report = done.stdout.decode("utf-8", "replace")
    found = _SCORE.search(report)
    if found is None:
        last = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no report"])[-1]
        return f"spam score not checked: spamassassin gave no score ({last})"
    table = report.partition("Content analysis details:")[2]
    rules: dict[str, Rule] = {}  # a rule that hits the text and the HTML part is listed twice
    for m in map(_RULE.match, table.splitlines()):
        if m and float(m.group(1)) > 0:
            rules.setdefault(m.group(2), Rule(m.group(2), float(m.group(1)), m.group(3).strip()))
    return SpamScore(float(found.group(1)), sorted(rules.values(), key=lambda rule: -rule.points))
