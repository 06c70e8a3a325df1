"""The reputation breaker end to end: ``newsletter send`` through SES (moto's server) while SES's
bounce and complaint notifications, signed by SNS (a real X.509 certificate, served over HTTP),
arrive through SQS (moto) and ``events pull``'s code, or at the webhook under a real uvicorn. The
running campaign reads the counts between rounds and pauses; ``status`` shows the rates; a plain
resume pauses again at once; ``--ignore-breaker`` sends the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from pipeline.events.sns import SnsVerifier
from pipeline.events.sqs import pull
from tests.conftest import Newsletter
from tests.events.test_events import Queue, configure_events
from tests.send.test_crash import DEADLINE, set_table
from tests.send.test_ses import ISSUE_BODY, Ses, cli_env, configure_ses, import_subscribers, run
from tests.support.cli import invoke_cli, one_line, run_make, start_cli, wait_for
from tests.support.fault_proxy import FaultProxy
from tests.support.ledger import delivery_count, read_only
from tests.support.sns import TOPIC, CertServer, Signer, cert_server, notification, ses_bounce, ses_complaint
from tests.web.test_web import Site, running_site

pytestmark = pytest.mark.slow  # real campaigns through the console script

LIST = 300
BOUNCES = 10  # of the first 30 sent: over 5 % until the whole list is sent
MIN_SENT = 20


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def certificates(signer: Signer) -> Iterator[CertServer]:
    with cert_server(signer) as server:
        yield server


def sent_so_far(newsletter: Newsletter) -> list[tuple[str, str]]:
    """(address, SES message id) of each message recorded as sent, in the order of the ledger."""
    db = read_only(newsletter)
    try:
        rows = db.execute(
            "SELECT s.email, d.provider_id FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
            " WHERE d.status = 'sent' ORDER BY d.subscriber_id"
        ).fetchall()
    finally:
        db.close()
    return [(row["email"], row["provider_id"]) for row in rows]


def status(newsletter: Newsletter) -> str:
    result = invoke_cli(newsletter.config_path, "status", "1", env={"NEWSLETTER_SECRET": "x" * 32})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("route", "processes"), [("sqs", 2), ("webhook", 1)])
def test_bounces_reported_while_a_campaign_runs_pause_it_until_told_to_go_on(
    newsletter: Newsletter,
    ses: Ses,
    proxy: FaultProxy,
    sqs_env: str,
    signer: Signer,
    certificates: CertServer,
    route: str,
    processes: int,
) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    # Slow enough that the notifications arrive while it runs, on a busy machine too: 300 messages take 15 s.
    # Straight to moto, the account would allow 1 message a second; the proxy answers GetAccount with 500.
    configure_ses(
        newsletter, proxy.url, max_rate=20, concurrency=4, processes=processes, breaker_min_sent=MIN_SENT
    )
    import_subscribers(newsletter, [(f"reader{i:03d}@example.com", "", "active") for i in range(LIST)])
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    verifier = SnsVerifier(topic_arns=(TOPIC,), cert_host_allowed=certificates.allows)

    stack = ExitStack()
    site = stack.enter_context(running_site(newsletter, verifier=verifier)) if route == "webhook" else None
    sender = start_cli(newsletter.root, "send", "1", "--yes", env=cli_env())
    try:
        wait_for(lambda: delivery_count(newsletter) >= 30, "30 messages sent", sender)
        sent = sent_so_far(newsletter)
        reports = [ses_bounce(address, ses_message_id=sid) for address, sid in sent[:BOUNCES]]
        reports.append(ses_complaint(*[sent[BOUNCES][0]], ses_message_id=sent[BOUNCES][1]))
        bodies = [
            json.dumps(signer.sign(notification(report, f"{certificates.url}/cert.pem"))).encode()
            for report in reports
        ]
        deliver(newsletter, site, bodies, queue, verifier)
        out, err = sender.communicate(timeout=DEADLINE)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.communicate()
        stack.close()

    assert sender.returncode == 1, out + err
    line = one_line(err)
    match = re.fullmatch(
        r"error: campaign paused: hard-bounce rate ([\d.]+) % \((\d+) of (\d+) sent\) is over \[send\] max_bounce_rate 5 %: "
        r"see who bounced or complained \(`newsletter subscribers list --status bounced`, `--status complained`\) "
        r"before going on; `newsletter send 1 --ignore-breaker` resumes anyway",
        line,
    )
    assert match, line
    # It may trip before the last report is in: the running campaign reads them as they arrive.
    assert 1 <= int(match[2]) <= BOUNCES
    paused_at = int(match[3])
    assert 30 <= paused_at < LIST, "paused part-way, once the reports were in"
    assert len(ses.messages()) < LIST

    shown = status(newsletter)
    assert "issue 1: paused" in shown, shown
    assert "note: hard-bounce rate" in shown and "--ignore-breaker" in shown, shown
    sent_now = delivery_count(newsletter)
    bounce_rate, complaint_rate = 100 * BOUNCES / sent_now, 100 / sent_now
    assert (
        f"  hard-bounce rate {bounce_rate:.2f} % (10 of {sent_now:,} sent; pauses over 5 %), "
        f"complaint rate {complaint_rate:.2f} % (1; pauses over 0.1 %)\n"
    ) in shown, shown

    handed_to_ses = len(ses.messages())
    again = run(newsletter, "send", "1", "--yes")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "hard-bounce rate" in one_line(again.stderr) and "--ignore-breaker" in again.stderr
    assert len(ses.messages()) == handed_to_ses, "a resume over the limits must send nothing"

    set_table(newsletter, "send", max_rate=500, concurrency=8, processes=processes, breaker_min_sent=MIN_SENT)
    ignored = run_make(
        newsletter.config_path, "send", "ISSUE=1", "ARGS=--yes --ignore-breaker", env=cli_env()
    )
    assert ignored.returncode == 0, ignored.stdout + ignored.stderr
    assert "issue 1: campaign complete" in ignored.stdout
    received = ses.by_recipient()
    assert len(received) == LIST and all(len(copies) == 1 for copies in received.values())


def deliver(
    newsletter: Newsletter, site: Site | None, bodies: list[bytes], queue: Queue, verifier: SnsVerifier
) -> None:
    """The notifications reach the state database: at the webhook of ``site``, or through SQS and
    ``events pull``'s code."""
    if site is None:
        for body in bodies:
            queue.put(body)
        report = pull(newsletter.config(), wait_seconds=0, verifier=verifier)
        assert (report.applied, report.rejected, report.left) == (len(bodies), 0, 0), report.lines()
        return
    headers = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}
    for body in bodies:
        answer = site.client.post(f"{site.url}/webhooks/ses", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
