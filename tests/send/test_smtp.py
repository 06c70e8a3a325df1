"""The SMTP transport end to end: the real console script against a real SMTP server (aiosmtpd) on 127.0.0.1.

Every server runs in the test process (aiosmtpd's Controller, its own thread) on a free
port of 127.0.0.1 and records each envelope it accepts: sender, recipients, the exact bytes.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import itertools
import json
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from pipeline.audience.subscribers import import_csv
from pipeline.audience.tokens import verify_token
from pipeline.db import open_db
from pipeline.errors import Rejected, TemporaryFailure, TransportUnavailable
from pipeline.issue.build import build_issue
from pipeline.send.message import MessageTemplate, Recipient
from tests.conftest import Newsletter
from tests.support.cli import clean_env, run_cli

NEWSLETTER = Path(sys.executable).with_name("newsletter")
# aiosmtpd's auth_require_tls only knows STARTTLS; with implicit TLS it must be off, and it warns.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
SECRET = "test-secret-0123456789-abcdefghij"
PASSWORD_ENV = "NL_TEST_SMTP_PASSWORD"
USERNAME, PASSWORD = "newsletter", "correct horse battery staple"
SENDER = "editor@example.org"
# Front matter is written as is: the subject is quoted YAML.
SUBJECT = "Grüße aus Köln — issue one ✓"
BODY = "Grüße aus Köln: café, naïve, Zoë — ✓.\n\nRead [the news](https://example.org/news).\n"
BODY_WORDS = "Grüße aus Köln: café, naïve, Zoë"


# --- The SMTP server ------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int
    tls: bool
    user: str | None


class Recorder:
    """Accepts everything and records each envelope. Subclasses refuse or drop on purpose."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.logins: list[tuple[str, bool, bool]] = []
        """(login, accepted, over TLS)"""
        self._connections = itertools.count(1)

    def connection(self, session: Any) -> int:
        """A number for the client connection (ids of dead sessions get reused)."""
        if not hasattr(session, "nl_connection"):
            session.nl_connection = next(self._connections)
        return int(session.nl_connection)

    @staticmethod
    def _tls(server: Any) -> bool:
        transport = server.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        user = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    tuple(envelope.rcpt_tos),
                    bytes(envelope.original_content),
                    self.connection(session),
                    self._tls(server),
                    user,
                )
            )
            number = len(self.messages)
        return f"250 2.0.0 Ok: queued as Q{number}"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USERNAME.encode(),
            PASSWORD.encode(),
        )
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
        with self.lock:
            self.logins.append((login, ok, self._tls(server)))
        # handled=False: aiosmtpd itself answers 535 to a refused login.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def recipients(self) -> Counter[str]:
        return Counter(r for message in self.messages for r in message.rcpt_tos)


@dataclass
class Server:
    controller: Controller
    handler: Recorder
    port: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_server():  # type: ignore[no-untyped-def]
    """Start aiosmtpd servers on 127.0.0.1; every one is stopped when the test ends."""
    started: list[Controller] = []

    def start(handler: Recorder | None = None, **kwargs: Any) -> Server:
        handler = handler or Recorder()
        if kwargs.get("authenticator") is True:
            kwargs["authenticator"] = handler.authenticator
        for attempt in range(3):
            port = free_port()
            controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10, **kwargs)
            try:
                controller.start()
            except OSError:  # someone took the port in between: try another
                if attempt == 2:
                    raise
                continue
            started.append(controller)
            return Server(controller, handler, port)
        raise AssertionError("unreachable")

    yield start
    errors = []
    for controller in started:
        try:
            controller.stop()
        except Exception as error:
            errors.append(error)
    assert not errors, errors


# --- TLS material ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    ca: Path
    """What the client trusts (SSL_CERT_FILE)."""
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, made now."""
    folder = tmp_path_factory.mktemp("tls")
    try:
        return _certificate_with_cryptography(folder)
    except ImportError:
        return _certificate_with_openssl(folder)


def _certificate_with_cryptography(folder: Path) -> Certificate:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "newsletter test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificate(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _certificate_with_openssl(folder: Path) -> Certificate:
    paths = Certificate(folder / "server.pem", folder / "server.pem", folder / "server.key")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(paths.key),
            "-out",
            str(paths.cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return paths


# --- The newsletter under test --------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a TOML basic string


def _toml(table: dict[str, Any], prefix: str = "") -> list[str]:
    lines = [f"[{prefix}]"] if prefix else []
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", *_toml(value, f"{prefix}.{key}" if prefix else key)]
    return lines


def use_smtp(
    newsletter: Newsletter, port: int, security: str = "none", *, username: str = "", **send: object
) -> None:
    """Point the newsletter's config at our server; whatever else the config says stays."""
    raw = tomllib.loads(newsletter.config_path.read_text(encoding="utf-8"))
    smtp: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": security, "timeout": 10.0}
    if username:
        smtp |= {"username": username, "password_env": PASSWORD_ENV}
    raw["transport"] = {"kind": "smtp", "smtp": smtp}
    raw["send"] = {"max_rate": 200.0, **send}
    newsletter.config_path.write_text("\n".join(_toml(raw)) + "\n", encoding="utf-8")


def run(
    newsletter: Newsletter,
    *args: str,
    cert: Certificate | None = None,
    password: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        {
            "NEWSLETTER_SECRET": SECRET,
            "SSL_CERT_FILE": str(cert.ca) if cert else None,
            PASSWORD_ENV: password,
        },
        drop=("SSL_CERT_DIR",),
    )
    return run_cli(newsletter.root, *args, env=env)


@dataclass
class People:
    active: dict[str, str] = field(default_factory=dict)
    """address -> name"""
    inactive: list[str] = field(default_factory=list)


def import_subscribers(
    newsletter: Newsletter,
    count: int,
    *,
    unsubscribed: int = 0,
    extra: tuple[str, ...] = (),
    cli: bool = False,
) -> People:
    """Write a CSV and import it (with the real CLI when ``cli``); ``extra`` addresses are active too."""
    people = People()
    rows = ["email,name,status"]
    names = ["Ada Example", "Zoë Ñuñez", "Doe, Jane", "", "Łukasz Ünal", "O'Brien"]
    for index in range(count):
        address = f"reader{index:02d}@example.{'org' if index % 2 else 'net'}"
        name = names[index % len(names)]
        status = "unsubscribed" if index < unsubscribed else "active"
        rows.append(f'{address},"{name}",{status}')
        if status == "active":
            people.active[address] = name
        else:
            people.inactive.append(address)
    for address in extra:
        rows.append(f"{address},,active")
        people.active[address] = ""
    (newsletter.root / "subscribers.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if cli:
        result = run(newsletter, "subscribers", "import", "subscribers.csv")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            f"{count + len(extra)} added, 0 updated, 0 unchanged, 0 skipped, 0 rejected"
        )
    else:  # the same import, without the cost of starting another process
        db = open_db(newsletter.config().paths.state)
        try:
            report = import_csv(db, newsletter.root / "subscribers.csv")
        finally:
            db.close()
        assert (report.added, report.skipped, report.rejected) == (count + len(extra), [], [])
    return people


def ledger(newsletter: Newsletter) -> dict[str, sqlite3.Row]:
    """Issue 1's deliveries, by address."""
    path = newsletter.root / "state" / "newsletter.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT s.email, d.status, d.attempts, d.last_error, d.provider_id FROM deliveries d"
            " JOIN subscribers s ON s.id = d.subscriber_id JOIN campaigns c ON c.id = d.campaign_id WHERE c.issue = 1"
        ).fetchall()
    return {row["email"]: row for row in rows}


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]


def assert_not_sent(newsletter: Newsletter) -> None:
    status = run(newsletter, "status", "1")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("issue 1: not sent yet"), status.stdout


def assert_each_once(server: Server, addresses: set[str] | dict[str, str]) -> None:
    received = server.handler.recipients()
    duplicates = {address: n for address, n in received.items() if n > 1}
    assert not duplicates, f"delivered more than once: {duplicates}"
    assert set(received) == set(addresses), (
        f"missing: {sorted(set(addresses) - set(received))}, unexpected: {sorted(set(received) - set(addresses))}"
    )
    assert all(len(message.rcpt_tos) == 1 for message in server.handler.messages)


@pytest.fixture
def issue(newsletter: Newsletter) -> Newsletter:
    newsletter.write_issue(1, BODY, subject=json.dumps(SUBJECT, ensure_ascii=False))
    return newsletter


# --- 1. A whole campaign over plain SMTP ---------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_campaign_delivers_one_complete_message_per_active_subscriber(issue: Newsletter, smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server()
    use_smtp(issue, server.port, "none")
    people = import_subscribers(issue, 30, unsubscribed=4, cli=True)

    result = run(issue, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "to 26 recipient(s) via smtp at up to 200/s" in result.stdout
    assert "26 sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    assert "issue 1: campaign complete" in result.stdout
    assert_each_once(server, people.active)
    assert not set(people.inactive) & set(server.handler.recipients())

    config = issue.config()
    template = MessageTemplate(config, build_issue(config, 1).rendered)
    message_ids, tokens = set(), set()
    for received in server.handler.messages:
        (address,) = received.rcpt_tos
        assert received.mail_from == SENDER
        data = received.data
        # Complete SMTP-safe bytes: CRLF only, short lines, plain ASCII, nothing left to fill in.
        assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        data.decode("ascii")
        assert b"%%" not in data

        message = parse(data)
        assert message["From"] == config.sender == f"Crate Notes <{SENDER}>"
        name = people.active[address]
        assert message["To"].addresses[0].addr_spec == address
        assert message["To"].addresses[0].display_name == name
        assert message["Subject"] == SUBJECT
        date = parsedate_to_datetime(message["Date"])
        assert abs(dt.datetime.now(dt.UTC) - date) < dt.timedelta(minutes=5)
        message_ids.add(message["Message-ID"])
        assert re.fullmatch(r"<nl1-c1-s\d+\.[0-9a-f]{10}@example\.org>", message["Message-ID"])
        assert message["List-Id"] == "Crate Notes <crate-notes.example.org>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        match = re.fullmatch(
            r"<(https://news\.example\.org/unsubscribe/([^>]+))>, <mailto:editor@example\.org\?subject=unsubscribe>",
            message[
                "List-Unsubscribe"
            ].strip(),  # folded onto its own line: the parser keeps the fold's space
        )
        assert match, message["List-Unsubscribe"]
        url, token = match.groups()
        assert verify_token(SECRET.encode(), "unsubscribe", token, address, list_id=message["List-Id"]), (
            "token not signed for this subscriber"
        )
        tokens.add(token)

        assert message.get_content_type() == "multipart/alternative"
        text, html = message.iter_parts()
        assert (text.get_content_type(), text.get_content_charset()) == ("text/plain", "utf-8")
        assert (html.get_content_type(), html.get_content_charset()) == ("text/html", "utf-8")
        assert BODY_WORDS in text.get_content()
        assert BODY_WORDS in html.get_content()
        assert f"Unsubscribe: {url}" in text.get_content()
        assert f'href="{url}"' in html.get_content()
        for part in (text, html):
            assert "%%" not in part.get_content()

        # Byte for byte what the pipeline builds for this recipient: nothing lost or altered on the wire.
        # (Each template draws its own MIME boundary.)
        rebuilt = template.build(Recipient(address, name, url, message["Message-ID"]), date=date)
        boundaries = parse(rebuilt).get_boundary(), message.get_boundary()
        assert boundaries[0] and boundaries[1]
        assert data == rebuilt.replace(boundaries[0].encode(), boundaries[1].encode())
    assert len(message_ids) == len(tokens) == 26

    status = run(issue, "status", "1")
    assert "issue 1: done, 26/26 handled via smtp" in status.stdout
    assert "sent 26  failed 0  skipped 0  queued 0" in status.stdout
    assert {row["status"] for row in ledger(issue).values()} == {"sent"}
    again = run(issue, "send", "1", "--yes")
    assert again.returncode == 0 and "already sent to everyone" in again.stdout
    assert len(server.handler.messages) == 26


# --- 2. STARTTLS and implicit TLS, with a login ----------------------------------------------


def tls_server(smtp_server, certificate: Certificate, security: str) -> Server:  # type: ignore[no-untyped-def]
    if security == "starttls":
        # AUTH is only offered, and mail only taken, after STARTTLS: a delivery proves TLS was used.
        return smtp_server(
            tls_context=certificate.server_context(),
            require_starttls=True,
            authenticator=True,
            auth_required=True,
            auth_require_tls=True,
        )
    # Implicit TLS: the whole connection is TLS (aiosmtpd's auth_require_tls only knows STARTTLS).
    return smtp_server(
        ssl_context=certificate.server_context(),
        authenticator=True,
        auth_required=True,
        auth_require_tls=False,
    )


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_login_delivers(
    issue: Newsletter, smtp_server, certificate: Certificate, security: str
) -> None:  # type: ignore[no-untyped-def]
    server = tls_server(smtp_server, certificate, security)
    use_smtp(issue, server.port, security, username=USERNAME)
    people = import_subscribers(issue, 5)

    result = run(issue, "send", "1", "--yes", cert=certificate, password=PASSWORD)

    assert result.returncode == 0, result.stderr
    assert "5 sent, 0 failed" in result.stdout and "campaign complete" in result.stdout
    assert_each_once(server, people.active)
    assert all(m.tls and m.user == USERNAME and m.mail_from == SENDER for m in server.handler.messages)
    assert server.handler.logins and all(ok and tls for _, ok, tls in server.handler.logins)


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_wrong_password_stops_before_sending(
    issue: Newsletter, smtp_server, certificate: Certificate, security: str
) -> None:  # type: ignore[no-untyped-def]
    server = tls_server(smtp_server, certificate, security)
    use_smtp(issue, server.port, security, username=USERNAME)
    import_subscribers(issue, 3)

    result = run(issue, "send", "1", "--yes", cert=certificate, password="wrong password")

    assert result.returncode == 2
    assert_one_line_error(
        result, f"SMTP server 127.0.0.1:{server.port} refused the login for 'newsletter'", "535"
    )
    # smtplib tries each mechanism offered (PLAIN, then LOGIN); all refused, all over TLS.
    assert server.handler.logins and set(server.handler.logins) == {(USERNAME, False, True)}
    assert not server.handler.messages
    assert_not_sent(issue)


@pytest.mark.slow  # the console script in a subprocess
def test_username_without_password_names_the_variable(
    issue: Newsletter, smtp_server, certificate: Certificate
) -> None:  # type: ignore[no-untyped-def]
    server = tls_server(smtp_server, certificate, "starttls")
    use_smtp(issue, server.port, "starttls", username=USERNAME)
    import_subscribers(issue, 3)

    for password in ("", None):  # set but empty, and not set at all
        result = run(issue, "send", "1", "--yes", cert=certificate, password=password)
        assert result.returncode == 2
        assert_one_line_error(result, f"${PASSWORD_ENV}", "transport.smtp.password_env", "empty")
    assert not server.handler.logins and not server.handler.messages
    assert_not_sent(issue)


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_untrusted_certificate_is_refused(
    issue: Newsletter, smtp_server, certificate: Certificate, security: str
) -> None:  # type: ignore[no-untyped-def]
    """Without SSL_CERT_FILE the client does not trust our test CA: it must refuse, not fall back."""
    server = tls_server(smtp_server, certificate, security)
    use_smtp(issue, server.port, security, username=USERNAME)
    import_subscribers(issue, 3)

    result = run(issue, "send", "1", "--yes", password=PASSWORD)

    assert result.returncode == 2
    assert_one_line_error(result, f"127.0.0.1:{server.port}", "CERTIFICATE_VERIFY_FAILED")
    assert not server.handler.logins and not server.handler.messages
    assert_not_sent(issue)


@pytest.mark.slow  # the console script in a subprocess
def test_starttls_required_but_not_offered(issue: Newsletter, smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server()  # plain server, no STARTTLS
    use_smtp(issue, server.port, "starttls")
    import_subscribers(issue, 3)

    result = run(issue, "send", "1", "--yes")

    assert result.returncode == 2
    assert_one_line_error(result, f"SMTP server 127.0.0.1:{server.port} does not offer STARTTLS")
    assert not server.handler.messages
    assert_not_sent(issue)


@pytest.mark.slow  # the console script in a subprocess
def test_login_configured_but_auth_not_offered(
    issue: Newsletter, smtp_server, certificate: Certificate
) -> None:  # type: ignore[no-untyped-def]
    """security = "none" with a username, against a server offering AUTH only after STARTTLS."""
    server = smtp_server(tls_context=certificate.server_context(), authenticator=True, auth_require_tls=True)
    use_smtp(issue, server.port, "none", username=USERNAME)
    import_subscribers(issue, 3)

    result = run(issue, "send", "1", "--yes", cert=certificate, password=PASSWORD)

    assert result.returncode == 2
    assert_one_line_error(result, f"SMTP server 127.0.0.1:{server.port}")
    assert not server.handler.logins and not server.handler.messages
    assert_not_sent(issue)
    assert "AUTH" in result.stderr


# --- 3. Per-recipient replies ----------------------------------------------------------------

UNKNOWN_USER = "nobody@example.org"
GREYLISTED = "later@example.org"


class PickyServer(Recorder):
    """550 for one address for good; 451 the first time for another."""

    def __init__(self) -> None:
        super().__init__()
        self.rcpt_attempts: Counter[str] = Counter()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.rcpt_attempts[address] += 1
            attempt = self.rcpt_attempts[address]
        if address == UNKNOWN_USER:
            return "550 5.1.1 no such user"
        if address == GREYLISTED and attempt == 1:
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


@pytest.mark.slow  # the console script in a subprocess
def test_recipient_refusals_are_recorded_and_temporary_ones_retried(issue: Newsletter, smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server(PickyServer())
    use_smtp(issue, server.port, "none")
    people = import_subscribers(issue, 10, extra=(UNKNOWN_USER, GREYLISTED))

    result = run(issue, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr
    assert "11 sent, 1 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    assert_each_once(server, set(people.active) - {UNKNOWN_USER})
    handler = server.handler
    assert isinstance(handler, PickyServer)
    assert handler.rcpt_attempts[GREYLISTED] == 2
    assert handler.rcpt_attempts[UNKNOWN_USER] == 1  # a 5xx is final: never retried

    rows = ledger(issue)
    assert rows[UNKNOWN_USER]["status"] == "failed"
    assert rows[UNKNOWN_USER]["last_error"] == f"{UNKNOWN_USER}: 550 5.1.1 no such user"
    assert rows[GREYLISTED]["status"] == "sent" and rows[GREYLISTED]["attempts"] == 2
    assert rows[GREYLISTED]["provider_id"].startswith("2.0.0 Ok: queued as Q")
    assert all(
        row["status"] == "sent" and row["attempts"] == 1
        for address, row in rows.items()
        if address not in (UNKNOWN_USER, GREYLISTED)
    )
    status = run(issue, "status", "1")
    assert "sent 11  failed 1  skipped 0  queued 0" in status.stdout


class SenderRefusingServer(Recorder):
    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return "553 5.7.1 sender not allowed"


@pytest.mark.slow  # the console script in a subprocess
def test_refused_sender_pauses_the_campaign_with_nobody_marked(issue: Newsletter, smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server(SenderRefusingServer())
    use_smtp(issue, server.port, "none")
    import_subscribers(issue, 12)

    result = run(issue, "send", "1", "--yes")

    assert result.returncode == 1
    assert "0 sent, 0 failed, 0 skipped, 12 still queued, 0 unknown" in result.stdout
    assert_one_line_error(
        result,
        "campaign paused: sender editor@example.org refused: 553 5.7.1 sender not allowed",
        "run `newsletter send 1` to resume",
    )
    assert not server.handler.messages
    assert {row["status"] for row in ledger(issue).values()} == {"queued"}
    status = run(issue, "status", "1")
    assert "issue 1: paused, 0/12 handled" in status.stdout and "queued 12" in status.stdout


# --- 4. No server, and test sends -------------------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_unreachable_server_is_one_line_and_sends_nothing(issue: Newsletter) -> None:
    port = free_port()  # nothing listens there
    use_smtp(issue, port, "none")
    import_subscribers(issue, 3)

    for args in (("send", "1", "--yes"), ("send", "1", "--to", "someone@example.org")):
        result = run(issue, *args)
        assert result.returncode == 2
        assert_one_line_error(result, f"cannot connect to SMTP server 127.0.0.1:{port}")
    assert_not_sent(issue)


@pytest.mark.slow  # the console script in a subprocess
def test_test_send_arrives_and_leaves_the_ledger_alone(issue: Newsletter, smtp_server) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server()
    use_smtp(issue, server.port, "none")
    import_subscribers(issue, 3)

    result = run(issue, "send", "1", "--to", "someone@example.org")

    assert result.returncode == 0, result.stderr
    assert (
        "test copy of issue 1 sent to someone@example.org via smtp (2.0.0 Ok: queued as Q1)" in result.stdout
    )
    (received,) = server.handler.messages
    assert received.rcpt_tos == ("someone@example.org",) and received.mail_from == SENDER
    message = parse(received.data)
    assert message["To"] == "someone@example.org" and message["Subject"] == SUBJECT
    assert b"%%" not in received.data
    assert_not_sent(issue)
    assert "(3 active subscribers)" in run(issue, "status", "1").stdout


# --- 5. The server drops the connection mid-campaign ------------------------------------------


class DroppingServer(Recorder):
    """Takes ``per_connection`` messages on a connection, then hangs up when the next one starts.

    ``reply``: say "421" first (as servers limiting messages per connection do), or just close.
    """

    def __init__(self, per_connection: int, reply: bool) -> None:
        super().__init__()
        self.per_connection, self.reply = per_connection, reply
        self.taken: Counter[int] = Counter()
        self.drops = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.taken[self.connection(session)] >= self.per_connection:
            with self.lock:
                self.drops += 1
            if self.reply:
                await server.push("421 4.7.0 too many messages on this connection, closing")
            server.transport.close()
            return "421 4.7.0 closing"  # not seen by the client: the connection is closed
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.taken[self.connection(session)] += 1
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize("reply", [True, False], ids=["421-then-close", "silent-close"])
def test_dropped_connections_are_reopened_without_duplicates(
    issue: Newsletter, smtp_server, reply: bool
) -> None:  # type: ignore[no-untyped-def]
    handler = DroppingServer(per_connection=3, reply=reply)
    server = smtp_server(handler)
    use_smtp(issue, server.port, "none", concurrency=4)
    people = import_subscribers(issue, 30, unsubscribed=2)

    result = run(issue, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "28 sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    assert "campaign complete" in result.stdout
    assert_each_once(server, people.active)
    assert handler.drops >= 4  # the campaign really went through reconnections
    assert max(Counter(m.connection for m in handler.messages).values()) <= 3
    assert {row["status"] for row in ledger(issue).values()} == {"sent"}
    attempts = Counter(row["attempts"] for row in ledger(issue).values())
    # After a 421 ("closing the channel") the transport reconnects at once: no attempt wasted on a dead connection.
    assert max(attempts) <= 2


@pytest.mark.slow  # the console script in a subprocess
def test_dropped_connections_with_two_attempts_resume_without_duplicates(
    issue: Newsletter, smtp_server
) -> None:  # type: ignore[no-untyped-def]
    """With few attempts a drop may leave messages queued: the campaign pauses, and the next run sends
    exactly those. (Today a 421 costs two attempts, so this one does pause.)"""
    handler = DroppingServer(per_connection=3, reply=True)
    server = smtp_server(handler)
    use_smtp(issue, server.port, "none", concurrency=4, max_attempts=2)
    people = import_subscribers(issue, 30, unsubscribed=2)

    runs = []
    for _ in range(4):
        result = run(issue, "send", "1", "--yes")
        runs.append(result)
        assert "Traceback" not in result.stderr
        rows = ledger(issue)
        # Between runs nothing is unknown or failed: each row is sent, or queued for the next run.
        assert {row["status"] for row in rows.values()} <= {"sent", "queued"}
        assert {a for a, row in rows.items() if row["status"] == "sent"} == set(handler.recipients())
        if result.returncode == 0:
            break
        assert result.returncode == 1
        assert_one_line_error(result, "campaign paused:", "could not be sent yet (temporary errors)")
    assert "issue 1: campaign complete" in runs[-1].stdout
    assert_each_once(server, people.active)


def test_a_session_the_server_dropped_while_idle_is_reopened(smtp_server) -> None:  # type: ignore[no-untyped-def]
    """Real servers close idle sessions after a few minutes; the web service's confirmation emails
    come minutes apart on one kept connection. Here aiosmtpd closes sessions idle for 1 s."""
    import time

    from pipeline.send.transports.base import Envelope
    from pipeline.send.transports.smtp import SmtpTransport

    server = smtp_server(timeout=1)
    transport = SmtpTransport("127.0.0.1", server.port, "none", "", "", 10)
    try:
        for number in range(3):
            data = f"From: a@example.org\r\nTo: r{number}@example.org\r\nSubject: {number}\r\n\r\nbody\r\n".encode()
            transport.send(Envelope("a@example.org", f"r{number}@example.org", data, f"k{number}"))
            time.sleep(1.6)  # the server times the session out in between
    finally:
        transport.close()
    assert server.handler.recipients() == Counter({f"r{n}@example.org": 1 for n in range(3)})


# --- The transport's reply translation, and the fields its errors carry -----------------------


@pytest.mark.parametrize(
    ("code", "of_sender", "expected"),
    [
        (421, False, TemporaryFailure),
        (450, False, TemporaryFailure),
        (451, True, TemporaryFailure),
        (550, False, Rejected),
        (554, False, Rejected),
        (553, True, TransportUnavailable),
    ],
)
def test_refusal_by_reply_code(code: int, of_sender: bool, expected: type[Exception]) -> None:
    from pipeline.send.transports.smtp import refusal

    assert refusal(code, of_sender=of_sender) is expected


def test_refusals_carry_the_recipient_and_reply_code(smtp_server) -> None:  # type: ignore[no-untyped-def]
    from pipeline.send.transports.base import Envelope
    from pipeline.send.transports.smtp import SmtpTransport

    def envelope(recipient: str) -> Envelope:
        return Envelope("a@example.org", recipient, b"Subject: x\r\n\r\nx\r\n", "k1")

    picky = SmtpTransport("127.0.0.1", smtp_server(PickyServer()).port, "none", "", "", 10)
    refusing = SmtpTransport("127.0.0.1", smtp_server(SenderRefusingServer()).port, "none", "", "", 10)
    try:
        with pytest.raises(Rejected) as unknown:
            picky.send(envelope(UNKNOWN_USER))
        with pytest.raises(TemporaryFailure) as greylisted:
            picky.send(envelope(GREYLISTED))
        with pytest.raises(TransportUnavailable) as sender:
            refusing.send(envelope("reader@example.org"))
    finally:
        picky.close()
        refusing.close()
    assert (unknown.value.recipient, unknown.value.code, unknown.value.status) == (UNKNOWN_USER, "550", 550)
    assert (greylisted.value.recipient, greylisted.value.code, greylisted.value.status) == (
        GREYLISTED,
        "451",
        451,
    )
    assert (sender.value.recipient, sender.value.code, sender.value.status) == (
        "reader@example.org",
        "553",
        553,
    )
    assert str(unknown.value) == f"{UNKNOWN_USER}: 550 5.1.1 no such user"
