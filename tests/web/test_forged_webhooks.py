"""Forged SNS notifications must not slow the unsubscribe pages: each names a signing certificate of
its own on a host that never answers, and the one-click unsubscribe keeps answering promptly while
60 of them arrive. The service runs under a real uvicorn; the certificate host is a real socket."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.events.sns import MAX_CONCURRENT_FETCHES, SnsVerifier
from tests.conftest import Newsletter
from tests.support.sns import TOPIC, Signer, notification, ses_bounce, tarpit
from tests.web.test_web import active_reader, running_site

REPO = Path(__file__).resolve().parents[2]
FORGED = 60
SAMPLES = 30


@pytest.mark.slow  # the forgeries come from a process of their own
@pytest.mark.timeout(90)
def test_one_click_unsubscribe_stays_fast_while_forged_notifications_arrive(newsletter: Newsletter) -> None:
    signer = Signer()
    with tarpit() as pit:
        verifier = SnsVerifier(topic_arns=(TOPIC,), cert_host_allowed=lambda url: url.startswith(pit.url))
        with running_site(newsletter, verifier=verifier) as site:
            url = active_reader(site, "stays-fast@example.org")
            active_reader(site, "not-bounced@example.org")
            forged = [
                json.dumps(
                    signer.sign(
                        notification(
                            ses_bounce("not-bounced@example.org"),
                            f"{pit.url}/SimpleNotificationService-{number:04x}.pem",
                        )
                    )
                )
                for number in range(FORGED)
            ]
            flood = subprocess.Popen(
                [sys.executable, "-m", "tests.support.flood", f"{site.url}/webhooks/ses"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            try:
                assert flood.stdin is not None
                flood.stdin.write(json.dumps(forged))
                flood.stdin.close()
                assert pit.first.wait(30), "no forged notification reached the certificate host"
                latencies = []
                for _ in range(SAMPLES):
                    start = time.perf_counter()
                    answer = site.client.post(url, data={"List-Unsubscribe": "One-Click"})
                    latencies.append(time.perf_counter() - start)
                    assert answer.status_code == 200
                still_flooding = flood.poll() is None
                pit.release()  # the fetches still waiting fail now, and their notifications get 503
                assert flood.stdout is not None
                output = flood.stdout.read()
                flood.wait(60)
            finally:
                flood.kill()
            statuses = json.loads(output)

            median, worst = statistics.median(latencies), max(latencies)
            print(
                f"one-click unsubscribe under {FORGED} forged notifications: median {median * 1000:.1f} ms, "
                f"max {worst * 1000:.1f} ms"
            )
            assert median < 0.1 and worst < 1.0, (median, worst)
            assert still_flooding, "the measurement must overlap the flood"
            # Never more than the cap asked the host; the rest were deferred at once, none applied.
            assert len(pit.held) <= MAX_CONCURRENT_FETCHES
            assert len(statuses) == FORGED and set(statuses) == {503}
            assert site.status("stays-fast@example.org") == "unsubscribed"
            assert site.status("not-bounced@example.org") == "active"
