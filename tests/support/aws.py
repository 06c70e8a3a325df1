"""moto's server and an AWS environment that can never reach a real account, shared by the SES, SQS
and fan-out tests (registered as fixtures through ``tests/conftest.py``).

moto runs in this process (``ThreadedMotoServer``), so what SES was handed can be read straight
from moto's SES backend. One server per test process (session scope: under xdist, one per worker);
each test that needs a clean one resets it (``Ses.reset``) or uses names of its own (SQS queues).
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator

import boto3
import moto.server
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from tests.support.fault_proxy import FaultProxy

REGION = "us-east-1"
SENDER = "editor@example.org"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    # Never pick up a real profile, credentials file or instance role.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def scrub_aws_env(patch: pytest.MonkeyPatch) -> None:
    """No AWS_* of this machine, only the dummy credentials: nothing can reach a real account."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            patch.delenv(name)
    for name, value in DUMMY_AWS.items():
        patch.setenv(name, value)


def aws_cli_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` (an environment for the console script) without AWS_* of this machine, with the dummies."""
    env = {name: value for name, value in base.items() if not name.startswith("AWS_")}
    env.update(DUMMY_AWS)
    return env


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # no line per request on stderr
    with pytest.MonkeyPatch.context() as patch:
        scrub_aws_env(patch)
        server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            assert host == "127.0.0.1" and port != 0
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            werkzeug.setLevel(level)


class Ses:
    """The moto SES a test talks to, and what it was handed."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def reset(self, *, verify: bool = True) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        if verify:
            self.verify(SENDER)

    def verify(self, address: str) -> None:
        boto3.client("ses", endpoint_url=self.endpoint, region_name=REGION).verify_email_identity(
            EmailAddress=address
        )

    def messages(self) -> list:  # list[moto.ses.models.RawMessage]
        return list(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages)

    def by_recipient(self) -> dict[str, list[bytes]]:
        """Raw bytes per SendEmail ``Destination.ToAddresses[0]`` (moto appends the To header's too)."""
        found: dict[str, list[bytes]] = {}
        for message in self.messages():
            found.setdefault(message.destinations[0], []).append(message.raw_data.encode("utf-8"))
        return found


@pytest.fixture
def ses(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Ses:
    """A reset moto, ``editor@example.org`` verified (moto, like SES, refuses an unverified sender)."""
    scrub_aws_env(monkeypatch)
    service = Ses(moto_endpoint)
    service.reset()
    assert service.messages() == []
    return service


@pytest.fixture
def proxy(ses: Ses) -> Iterator[FaultProxy]:
    """Forwards to moto; answers GetAccount with 500/s; injects nothing until a test sets a policy."""
    running = FaultProxy(ses.endpoint, account_rate=500.0).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def sqs_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto as this process's SQS (boto3 itself honours AWS_ENDPOINT_URL_SQS)."""
    scrub_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_endpoint)
    return moto_endpoint
