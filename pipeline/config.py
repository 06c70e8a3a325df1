"""Load and validate ``newsletter.toml``; read the environment variables the program uses.

Every key is declared once, as a dataclass field made with :func:`key`: its type, default, check and
help text. Loading walks those dataclasses, so the file, the defaults and ``newsletter config show``
cannot drift apart. Every relative path in the file is resolved against the file's own folder, so a
whole newsletter (config, issues, templates, archive) can live anywhere. Unknown sections and keys are
errors: a typo must never pass silently.

Environment variables are read only here, by :meth:`Environment.from_os` (boto3 and git read their
own, such as ``AWS_PROFILE``; the archive mirror hands git its ``PATH``).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from email.utils import parseaddr
from functools import reduce
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from pipeline.errors import ConfigError

CONFIG_NAME = "newsletter.toml"
CONFIG_ENV = "NEWSLETTER_CONFIG"
SECRET_ENV = "NEWSLETTER_SECRET"
PREVIOUS_SECRET_ENV = "NEWSLETTER_SECRET_PREVIOUS"
SMTP_PASSWORD_ENV = "SMTP_PASSWORD"
TRANSPORTS = ("maildir", "smtp", "ses")
SMTP_SECURITY = ("starttls", "tls", "none")

# Issue numbers are SQLite integers; a cap far above any real newsletter refuses 2**63 with one line.
MAX_ISSUE = 1_000_000


class Invalid(ValueError):
    """Raised by a key's check with the reason, worded to follow the key's name."""


Check = Callable[[Any], Any]
"""Takes the value as written (paths already resolved), returns the value to keep or raises Invalid."""


def key(default: Any = MISSING, *, help: str, check: Check | None = None, toml: str | None = None) -> Any:
    """A config key: a dataclass field whose place in newsletter.toml is ``toml`` ("section.key"),
    by default its own name in the table its dataclass is declared for. No default: the key is required.
    """
    metadata = {"help": help, "check": check, "toml": toml}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


def table(toml: str | None = None) -> Any:
    """A field holding a whole table (a dataclass of keys), ``[toml]`` in the file, by default its name."""
    return field(metadata={"table": toml})


# --- checks: each returns the value to keep, or raises Invalid -------------------------------------


def _positive(value: float) -> float:
    if value <= 0:
        raise Invalid(f"must be positive, got {value}")
    return value


def _port(value: int) -> int:
    if _positive(value) > 65535:
        raise Invalid(f"must be a port number (1-65535), got {value}")
    return value


def _up_to(limit: float) -> Check:
    """Positive and at most ``limit``: a timeout or a limit of the web service beyond any sane value
    is a typo (300 for 30), and would leave the door open the setting is there to close."""

    def check(value: float) -> float:
        if not 0 < value <= limit:
            raise Invalid(f"must be more than 0 and at most {limit:g}, got {value:g}")
        return value

    return check


def _positive_or_auto(value: int) -> int:
    return value if value == 0 else int(_positive(value))


def _spam_score(value: float) -> float:
    if not 0 < value <= 100:
        raise Invalid(
            f"must be a SpamAssassin score between 0 and 100 (mail servers reject from 5), got {value}"
        )
    return value


def _not_negative(value: float) -> float:
    if value < 0:
        raise Invalid(f"must be 0 or more, got {value}")
    return value


def _percentage(value: float) -> float:
    if not 0 <= value <= 100:
        raise Invalid(f"must be a percentage from 0 to 100, got {value:g}")
    return value


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str:
        if value not in choices:
            raise Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _one_line(value: str) -> str:
    # Category Cc: control characters, tab included; Zl, Zp: the Unicode line and paragraph separators.
    # Any of them in a header-bound value would break or forge mail headers.
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise Invalid(f"must be on one line, without control characters, got {value!r}")
    return value


def _address(value: str) -> str:
    address = parseaddr(_one_line(value))[1]
    local, _, domain = address.partition("@")
    if not local or "." not in domain:
        raise Invalid(f"is not an email address: {value!r}")
    return value


def _named_address(value: str) -> str:
    if not parseaddr(_address(value))[0]:
        raise Invalid(f"must look like 'Name <address>', got {value!r}")
    return value


def _optional_address(value: str) -> str:
    return _address(value) if value else ""


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _optional_url(value: str) -> str:
    return _url(value) if value else ""


def _filename_pattern(pattern: str) -> str:
    try:
        name = pattern.format(number=1)
    except (KeyError, IndexError, ValueError):
        raise Invalid(f"may only use {{number}}, got {pattern!r}") from None
    if name == pattern.format(number=2) or "/" in name or not name.endswith(".md"):
        raise Invalid(f"must contain {{number}}, no '/', and end in .md, got {pattern!r}")
    return pattern


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _weekday_or_empty(value: str) -> str:
    day = value.strip().lower()
    if day and day not in WEEKDAYS:
        raise Invalid(f"must be a day of the week (monday ... sunday) or empty, got {value!r}")
    return day


def _title_pattern(pattern: str) -> str:
    try:
        title = pattern.format(name="Name", number=1)
    except (KeyError, IndexError, ValueError):
        raise Invalid(f"may only use {{name}} and {{number}}, got {pattern!r}") from None
    if title == pattern.format(name="Name", number=2):
        raise Invalid(f"must contain {{number}}, got {pattern!r}")
    return _one_line(pattern)


def _main_if_empty(branch: str) -> str:
    return branch or "main"


def _texts(value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise Invalid(f"must be a list of non-empty texts in quotes, got {value!r}")
    return tuple(item.strip() for item in value)


_GITHUB_BLOB = re.compile(r"^https://github\.com/([^/]+/[^/]+)/blob/(.+)$")


# --- the schema ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Paths:
    issues: Path = key(Path("issues"), help="issue sources, one N.md per issue, and errata.yaml")
    templates: Path = key(Path("email_templates"), help="the email's Jinja2/MJML templates and CSS")
    archive: Path = key(Path("archive"), help="the Markdown archive (with index and feed)")
    build: Path = key(Path("build"), help="where `build` writes each issue")
    state: Path = key(Path("state"), help="the subscriber and campaign database")


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    enabled: bool = key(True, help="check links over HTTP in check and send")
    timeout: float = key(10.0, help="seconds per request", check=_positive)
    cache_hours: float = key(24.0, help="how long a working link is not asked again", check=_positive)
    per_host: int = key(2, help="connections per host at once", check=_positive)
    concurrency: int = key(16, help="requests in flight", check=_positive)


@dataclass(frozen=True, kw_only=True)
class SmtpSettings:
    host: str = key("localhost", help="the SMTP server")
    port: int = key(587, help="its port", check=_port)
    security: str = key(
        "starttls", help="starttls, tls (implicit, port 465) or none", check=_one_of(*SMTP_SECURITY)
    )
    username: str = key("", help="empty: no login")
    password_env: str = key(
        SMTP_PASSWORD_ENV, help="the name of the environment variable holding the password"
    )
    timeout: float = key(30.0, help="seconds per network operation", check=_positive)


@dataclass(frozen=True, kw_only=True)
class SesSettings:
    region: str = key("us-east-1", help="the AWS region")
    endpoint_url: str = key("", help="empty: the real AWS endpoint")
    configuration_set: str = key("", help="the SES configuration set publishing bounce/complaint events")


@dataclass(frozen=True, kw_only=True)
class SendConfig:
    """The [send] table. Not the campaign runner's ``pipeline.send.delivery.SendSettings``, built from it."""

    concurrency: int = key(8, help="messages in flight", check=_positive)
    max_rate: float = key(14.0, help="messages per second", check=_positive)
    max_attempts: int = key(5, help="tries per message before it is marked failed", check=_positive)
    max_consecutive_failures: int = key(10, help="failures in a row that pause the campaign", check=_positive)
    processes: int = key(
        0,
        help="sender processes; 0: one per core (at most 4) for SES, one otherwise",
        check=_positive_or_auto,
    )
    # The reputation breaker's defaults are the rates at which SES puts an account under review
    # (bounces 5 %, complaints 0.1 %) and Gmail's spam-rate ceiling (0.1 %): see README, Sending.
    max_bounce_rate: float = key(
        5.0, help="hard-bounce rate (% of messages sent) that pauses a campaign", check=_percentage
    )
    max_complaint_rate: float = key(
        0.1, help="complaint rate (% of messages sent) that pauses a campaign", check=_percentage
    )
    breaker_min_sent: int = key(
        500, help="messages a campaign sends before its bounce and complaint rates count", check=_positive
    )
    deadline_hours: float = key(
        48.0,
        help="a campaign unfinished this long after it started resumes only with --late; 0: never late",
        check=_not_negative,
    )


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    host: str = key("127.0.0.1", help="the address the subscriber web service listens on")
    port: int = key(8025, help="its port", check=_port)
    confirm_hours: float = key(48.0, help="how long a confirmation link works", check=_positive)
    resend_minutes: float = key(
        15.0, help="at most one confirmation email per address in this time", check=_positive
    )
    signups_per_ip_per_hour: int = key(
        20, help="sign-ups one client address may make per hour", check=_positive
    )
    signups_per_address_per_day: int = key(5, help="sign-ups for one email address per day", check=_positive)
    header_timeout: float = key(
        10.0,
        help="seconds a client has to send a request's line and headers, from connecting "
        "(or from its first byte on a kept-alive connection); then it is disconnected",
        check=_up_to(300),
    )
    body_timeout: float = key(
        10.0,
        help="seconds a client has to send a request's body once its headers are in; then it is disconnected",
        check=_up_to(300),
    )
    keep_alive_timeout: float = key(
        5.0, help="seconds an idle connection is kept open after a response", check=_up_to(300)
    )
    max_connections: int = key(
        100,
        help="connections at once; a request beyond them is answered 503 at once",
        check=_up_to(10_000),
    )


@dataclass(frozen=True, kw_only=True)
class EventSettings:
    queue_url: str = key("", help="the SQS queue `newsletter events pull` reads")
    region: str = key("", help="empty: [transport.ses] region")
    topic_arns: tuple[str, ...] = key(
        (), help="the SNS topics whose notifications are accepted; any other is refused", check=_texts
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    """The config file, resolved."""
    written: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The keys set in the file ("section.key"); every other key has its default."""

    name: str = key(toml="newsletter.name", help="the newsletter's name", check=_one_line)
    sender: str = key(toml="newsletter.from", help="the From header, 'Name <address>'", check=_named_address)
    reply_to: str = key(
        "", toml="newsletter.reply_to", help="empty: replies go to from", check=_optional_address
    )
    postal_address: str = key(
        toml="newsletter.postal_address", help="printed in every issue (anti-spam laws)"
    )
    archive_base_url: str = key(
        toml="newsletter.archive_base_url",
        help="where the archive is browsed; issue links resolve against it",
        check=_url,
    )
    public_url: str = key(
        "https://news.example.org",
        toml="newsletter.public_url",
        help="the subscriber web service (unsubscribe links)",
        check=_url,
    )
    language: str = key("en", toml="newsletter.language", help="the email's lang attribute")
    send_day: str = key(
        "",
        toml="newsletter.send_day",
        help="the weekday issues go out (e.g. monday): `newsletter new` dates the next issue on it; empty: today",
        check=_weekday_or_empty,
    )
    title_pattern: str = key(
        "{name} #{number}",
        toml="newsletter.title_pattern",
        help="the title `newsletter new` gives an issue; {name} and {number} are filled in",
        check=_title_pattern,
    )
    paths: Paths = table()
    max_html_bytes: int = key(
        102_000,
        toml="check.max_html_bytes",
        help="HTML size budget (Gmail clips past ~102 KB)",
        check=_positive,
    )
    spamassassin: bool = key(
        True,
        toml="check.spamassassin",
        help="score the sample message with SpamAssassin, when it is on PATH (takes ~3 s)",
    )
    spam_warn: float = key(
        3.0, toml="check.spam_warn", help="SpamAssassin score check warns above", check=_spam_score
    )
    spam_fail: float = key(
        5.0, toml="check.spam_fail", help="SpamAssassin score check refuses above", check=_spam_score
    )
    archive_filename: str = key(
        "{number}.md",
        toml="archive.filename",
        help="an issue's file name in the archive",
        check=_filename_pattern,
    )
    archive_raw_base_url: str = key(
        "",
        toml="archive.raw_base_url",
        help="where the archive's files are served as they are (images, the feed); "
        "empty: derived from a GitHub archive_base_url, else archive_base_url",
        check=_optional_url,
    )
    archive_remote: str = key(
        "", toml="archive.remote", help="git URL or path of a bare repository; empty: the archive stays local"
    )
    archive_branch: str = key(
        "main", toml="archive.branch", help="the archive's branch", check=_main_if_empty
    )
    links: LinkSettings = table()
    transport: str = key(
        "maildir", toml="transport.kind", help="maildir, smtp or ses", check=_one_of(*TRANSPORTS)
    )
    maildir: Path = key(
        Path("outbox"), toml="transport.maildir.path", help="the Maildir messages are written to"
    )
    smtp: SmtpSettings = table("transport.smtp")
    ses: SesSettings = table("transport.ses")
    send: SendConfig = table()
    serve: ServeSettings = table()
    events: EventSettings = table()

    def archive_url(self, number: int) -> str:
        """Where issue ``number`` can be read in the public archive."""
        return f"{self.archive_base_url}/{self.archive_name(number)}"

    def archive_name(self, number: int) -> str:
        return self.archive_filename.format(number=number)

    @property
    def raw_base_url(self) -> str:
        """Where the archive's files themselves are served: images and the feed must come from there.

        A GitHub ``/blob/`` URL serves a web page around the file; the same file as it is comes
        from ``raw.githubusercontent.com``, which is what ``raw_base_url`` defaults to for it.
        """
        if self.archive_raw_base_url:
            return self.archive_raw_base_url
        github = _GITHUB_BLOB.match(self.archive_base_url)
        if github:
            owner_repo, branch_path = github.groups()
            return f"https://raw.githubusercontent.com/{owner_repo}/{branch_path}"
        return self.archive_base_url


@dataclass(frozen=True)
class Key:
    """One key of newsletter.toml, as its field declares it."""

    section: str
    name: str
    attribute: tuple[str, ...]
    """Where the value is on Config: ("smtp", "port") for config.smtp.port."""
    kind: Any
    default: Any
    help: str
    check: Check | None

    @property
    def location(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def required(self) -> bool:
        return self.default is MISSING


def _keys(cls: type, section: str = "", attribute: tuple[str, ...] = ()) -> Iterator[Key]:
    kinds = get_type_hints(cls)
    for spec in fields(cls):
        if "table" in spec.metadata:
            yield from _keys(kinds[spec.name], spec.metadata["table"] or spec.name, (*attribute, spec.name))
        elif "help" in spec.metadata:
            place_section, _, name = (spec.metadata["toml"] or f"{section}.{spec.name}").rpartition(".")
            yield Key(
                place_section,
                name,
                (*attribute, spec.name),
                kinds[spec.name],
                spec.default,
                spec.metadata["help"],
                spec.metadata["check"],
            )


KEYS: tuple[Key, ...] = tuple(_keys(Config))
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS))

# What TOML writes for each Python type of a key, and how an error names it.
_TOML_KINDS: dict[Any, type] = {Path: str, tuple[str, ...]: list}
_KIND_NAMES = {
    str: "text in quotes",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list of texts in quotes",
}


# --- the environment --------------------------------------------------------------------------------


def variable(name: str | None, purpose: str, *, secret: bool = False, default: str = "") -> Any:
    """An environment variable the program reads. No name: the one [transport.smtp] password_env names."""
    return field(default=default, metadata={"variable": name, "purpose": purpose, "secret": secret})


@dataclass(frozen=True, kw_only=True)
class Environment:
    """The environment variables the program reads, each read with its default applied.

    Read where it is needed (``Environment.from_os().secret``), as it was before: a config loaded
    earlier must not pin a secret that has been set since.
    """

    config_path: str = variable(CONFIG_ENV, "the config file, when --config is not given")
    secret: str = variable(SECRET_ENV, "signs unsubscribe and confirmation links", secret=True)
    previous_secret: str = variable(
        PREVIOUS_SECRET_ENV,
        "the secret before NEWSLETTER_SECRET, while rotating it: links signed with it still work",
        secret=True,
    )
    forwarded_allow_ips: str = variable(
        "FORWARDED_ALLOW_IPS",
        "proxies whose X-Forwarded-For `newsletter serve` believes",
        default="127.0.0.1",
    )
    smtp_password: str = variable(
        None, "the SMTP password (its name: transport.smtp.password_env)", secret=True
    )
    smtp_password_env: str = SMTP_PASSWORD_ENV
    given: frozenset[str] = frozenset()
    """The names of the variables that are set."""

    @classmethod
    def from_os(cls, smtp_password_env: str = SMTP_PASSWORD_ENV) -> Environment:
        names = {spec.name: _name(spec.metadata, smtp_password_env) for spec in _variables()}
        found = {attribute: os.environ[name] for attribute, name in names.items() if name in os.environ}
        return cls(**found, smtp_password_env=smtp_password_env, given=frozenset(names[a] for a in found))

    def settings(self) -> list[Setting]:
        """Each variable with its value (secrets masked) and whether it is set ("env") or not ("default")."""
        result = []
        for spec in _variables():
            name = _name(spec.metadata, self.smtp_password_env)
            value = getattr(self, spec.name)
            shown = MASK if spec.metadata["secret"] and value else value
            source = "env" if name in self.given else "default"
            result.append(Setting("environment", name, shown, source, spec.metadata["purpose"]))
        return result


def _variables() -> list[Field[Any]]:
    return [spec for spec in fields(Environment) if "variable" in spec.metadata]


def _name(metadata: Mapping[str, Any], smtp_password_env: str) -> str:
    return metadata["variable"] or smtp_password_env


# --- loading ---------------------------------------------------------------------------------------


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    from_environment = Environment.from_os().config_path
    return Path(from_environment) if from_environment else Path.cwd() / CONFIG_NAME


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    config_path = find_config_path(path).resolve()
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            config_path, f"config file not found (set {CONFIG_ENV} or run from the newsletter's folder)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(config_path, "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(config_path, f"invalid TOML: {error}") from None

    tables = _tables(config_path, raw)
    values = {k.attribute: _value(config_path, k, tables[k.section]) for k in KEYS}
    written = frozenset(k.location for k in KEYS if k.name in tables[k.section])
    config: Config = _build(Config, values, path=config_path, written=written)
    if config.spam_warn > config.spam_fail:
        raise ConfigError(
            config_path,
            f"check.spam_warn ({config.spam_warn}) must not be above check.spam_fail ({config.spam_fail})",
        )
    # The two values that depend on another: a local archive remote resolves against the config's
    # folder like every path, and the events region defaults to the SES transport's.
    return replace(
        config,
        archive_remote=_remote(config_path.parent, config.archive_remote),
        events=replace(config.events, region=config.events.region or config.ses.region),
    )


def _tables(path: Path, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each section's table as written ({} when absent), once unknown sections and keys are refused."""
    top_level = [section for section in SECTIONS if "." not in section]
    for section in raw:
        if section not in top_level:
            raise ConfigError(path, f"unknown section [{section}] (known: {', '.join(top_level)})")
    tables: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        given: Any = raw
        for part in section.split("."):
            given = given.get(part, {}) if isinstance(given, dict) else given
        if not isinstance(given, dict):
            raise ConfigError(path, f"{section} must be a table ([{section}])")
        keys = [k.name for k in KEYS if k.section == section]
        subsections = sorted(s.rpartition(".")[2] for s in SECTIONS if s.startswith(section + "."))
        for name in given:
            if name not in keys and name not in subsections:
                known = ", ".join([*keys, *subsections])
                raise ConfigError(path, f"unknown key {section}.{name} (known: {known})")
        tables[section] = given
    return tables


def _value(path: Path, spec: Key, written: dict[str, Any]) -> Any:
    if spec.name in written:
        value = written[spec.name]
        kind = _TOML_KINDS.get(spec.kind, spec.kind)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(path, f"{spec.location} must be {_KIND_NAMES[kind]}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(path, f"{spec.location} must be a finite number, got {value}")
        if kind is str and spec.required and not value.strip():
            raise ConfigError(path, f"{spec.location} must not be empty")
    elif spec.required:
        raise ConfigError(path, f"missing key {spec.location}")
    else:
        value = spec.default
    if spec.kind is Path:
        value = (path.parent / value).resolve()
    if spec.check is None:
        return value
    try:
        return spec.check(value)
    except Invalid as invalid:
        raise ConfigError(path, f"{spec.location} {invalid}") from None


def _build(
    cls: type, values: Mapping[tuple[str, ...], Any], attribute: tuple[str, ...] = (), **extra: Any
) -> Any:
    """An instance of ``cls`` with its keys from ``values`` and its tables built the same way."""
    kinds = get_type_hints(cls)
    arguments = dict(extra)
    for spec in fields(cls):
        here = (*attribute, spec.name)
        if "table" in spec.metadata:
            arguments[spec.name] = _build(kinds[spec.name], values, here)
        elif here in values:
            arguments[spec.name] = values[here]
    return cls(**arguments)


def _remote(base: Path, remote: str) -> str:
    """A git URL as given; a relative local path resolves against the config's folder like every path."""
    if not remote or "://" in remote or remote.startswith(("/", "git@")) or ":" in remote.split("/")[0]:
        return remote
    return str((base / remote).resolve())


# --- showing ---------------------------------------------------------------------------------------

MASK = "********"


@dataclass(frozen=True)
class Setting:
    """One line of ``newsletter config show``: a key or an environment variable, secrets already masked."""

    section: str
    name: str
    value: Any
    source: str
    """"file", "env" or "default"."""
    help: str


def settings(config: Config) -> list[Setting]:
    """Every key's effective value (paths resolved), and whether the file set it or it is the default."""
    return [
        Setting(
            k.section,
            k.name,
            reduce(getattr, k.attribute, config),
            "file" if k.location in config.written else "default",
            k.help,
        )
        for k in KEYS
    ]
