"""Many POSTs at once from a process of its own, as an attacker's would come: not competing for the
test process's interpreter lock with the server being measured.

    python -m tests.support.flood URL < bodies.json   (a JSON list of texts; prints the statuses, JSON)
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx


def post(url: str, body: str) -> int:
    try:
        return httpx.post(url, content=body.encode(), timeout=60).status_code
    except httpx.HTTPError:
        return 0  # no answer: the caller sees it among the statuses


def main() -> None:
    url, bodies = sys.argv[1], json.load(sys.stdin)
    with ThreadPoolExecutor(len(bodies)) as senders:
        statuses = list(senders.map(lambda body: post(url, body), bodies))
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
