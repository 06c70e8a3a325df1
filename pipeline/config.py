"""Load and validate ``newsletter.toml``.

Every relative path in the file is resolved against the file's own folder, so
a whole newsletter (config, issues, templates, archive) can live anywhere.
Unknown sections and keys are errors: a typo must never pass silently.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import ConfigError

CONFIG_ENV = "NEWSLETTER_CONFIG"
CONFIG_NAME = "newsletter.toml"

REQUIRED = object()
_KIND_NAMES = {
    str: "text in quotes",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list of texts in quotes",
}

# section -> key -> (type, default). REQUIRED marks keys without a default.
SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "newsletter": {
        "name": (str, REQUIRED),
        "from": (str, REQUIRED),
        "reply_to": (str, ""),
        "postal_address": (str, REQUIRED),
        "archive_base_url": (str, REQUIRED),
        "public_url": (str, "https://news.example.org"),
        "language": (str, "en"),
    },
    "paths": {
        "issues": (str, "issues"),
        "templates": (str, "email_templates"),
        "archive": (str, "archive"),
        "build": (str, "build"),
        "state": (str, "state"),
    },
    "check": {
        "max_html_bytes": (int, 102_000),
    },
    "archive": {
        "filename": (str, "{number}.md"),
        "remote": (str, ""),
        "branch": (str, "main"),
    },
    "links": {
        "enabled": (bool, True),
        "timeout": (float, 10.0),
        "cache_hours": (float, 24.0),
        "per_host": (int, 2),
        "concurrency": (int, 16),
    },
    "transport": {
        "kind": (str, "maildir"),
    },
    "transport.maildir": {
        "path": (str, "outbox"),
    },
    "transport.smtp": {
        "host": (str, "localhost"),
        "port": (int, 587),
        "security": (str, "starttls"),
        "username": (str, ""),
        "password_env": (str, "SMTP_PASSWORD"),
        "timeout": (float, 30.0),
    },
    "transport.ses": {
        "region": (str, "us-east-1"),
        "endpoint_url": (str, ""),
        "configuration_set": (str, ""),
    },
    "send": {
        "concurrency": (int, 8),
        "max_rate": (float, 14.0),
        "max_attempts": (int, 5),
        "max_consecutive_failures": (int, 10),
        "processes": (int, 0),
    },
    "serve": {
        "host": (str, "127.0.0.1"),
        "port": (int, 8025),
        "confirm_hours": (float, 48.0),
        "resend_minutes": (float, 15.0),
        "signups_per_ip_per_hour": (int, 20),
        "signups_per_address_per_day": (int, 5),
    },
    "events": {
        "queue_url": (str, ""),
        "region": (str, ""),
        "topic_arns": (list, []),
    },
}
TRANSPORTS = ("maildir", "smtp", "ses")
SMTP_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class Paths:
    issues: Path
    templates: Path
    archive: Path
    build: Path
    state: Path


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str
    username: str
    password_env: str
    timeout: float


@dataclass(frozen=True)
class SesSettings:
    region: str
    endpoint_url: str
    configuration_set: str


@dataclass(frozen=True)
class SendSettings:
    concurrency: int
    max_rate: float
    max_attempts: int
    max_consecutive_failures: int
    processes: int
    """Sender processes; 0: one per core (at most 4) for SES, one for the other transports."""


@dataclass(frozen=True)
class ServeSettings:
    host: str
    port: int
    confirm_hours: float
    resend_minutes: float
    signups_per_ip_per_hour: int
    signups_per_address_per_day: int


@dataclass(frozen=True)
class EventSettings:
    queue_url: str
    region: str
    """Empty: the SES transport's region."""
    topic_arns: tuple[str, ...]
    """When set, notifications from any other SNS topic are refused."""


@dataclass(frozen=True)
class LinkSettings:
    enabled: bool
    timeout: float
    cache_hours: float
    per_host: int
    concurrency: int


@dataclass(frozen=True)
class Config:
    path: Path
    name: str
    sender: str
    reply_to: str
    postal_address: str
    archive_base_url: str
    public_url: str
    language: str
    paths: Paths
    max_html_bytes: int
    archive_filename: str
    archive_remote: str
    archive_branch: str
    links: LinkSettings
    transport: str
    maildir: Path
    smtp: SmtpSettings
    ses: SesSettings
    send: SendSettings
    serve: ServeSettings
    events: EventSettings

    def archive_url(self, number: int) -> str:
        """Where issue ``number`` can be read in the public archive."""
        return f"{self.archive_base_url}/{self.archive_name(number)}"

    def archive_name(self, number: int) -> str:
        return self.archive_filename.format(number=number)


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path.cwd() / CONFIG_NAME


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

    values = _validate(config_path, raw)
    base = config_path.parent
    news = values["newsletter"]
    return Config(
        path=config_path,
        name=news["name"],
        sender=_address(config_path, "newsletter.from", news["from"], with_name=True),
        reply_to=_address(config_path, "newsletter.reply_to", news["reply_to"]) if news["reply_to"] else "",
        postal_address=news["postal_address"],
        archive_base_url=_url(config_path, "newsletter.archive_base_url", news["archive_base_url"]),
        public_url=_url(config_path, "newsletter.public_url", news["public_url"]),
        language=news["language"],
        paths=Paths(**{key: (base / value).resolve() for key, value in values["paths"].items()}),
        max_html_bytes=_positive(config_path, "check.max_html_bytes", values["check"]["max_html_bytes"]),
        archive_filename=_filename_pattern(config_path, values["archive"]["filename"]),
        archive_remote=_remote(base, values["archive"]["remote"]),
        archive_branch=values["archive"]["branch"] or "main",
        links=LinkSettings(
            **{
                key: value if isinstance(value, bool) else _positive(config_path, f"links.{key}", value)
                for key, value in values["links"].items()
            }
        ),
        transport=_choice(config_path, "transport.kind", values["transport"]["kind"], TRANSPORTS),
        maildir=(base / values["transport.maildir"]["path"]).resolve(),
        smtp=SmtpSettings(
            **dict(
                values["transport.smtp"],
                security=_choice(
                    config_path,
                    "transport.smtp.security",
                    values["transport.smtp"]["security"],
                    SMTP_SECURITY,
                ),
                port=_positive(config_path, "transport.smtp.port", values["transport.smtp"]["port"]),
            )
        ),
        ses=SesSettings(**values["transport.ses"]),
        send=SendSettings(
            **{
                key: value
                if key == "processes" and value == 0
                else _positive(config_path, f"send.{key}", value)
                for key, value in values["send"].items()
            }
        ),
        serve=ServeSettings(
            **{
                key: value if key == "host" else _positive(config_path, f"serve.{key}", value)
                for key, value in values["serve"].items()
            }
        ),
        events=EventSettings(
            queue_url=values["events"]["queue_url"],
            region=values["events"]["region"] or values["transport.ses"]["region"],
            topic_arns=_texts(config_path, "events.topic_arns", values["events"]["topic_arns"]),
        ),
    )


def _validate(path: Path, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    top_level = [name for name in SCHEMA if "." not in name]
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(path, f"unknown section [{section}] (known: {', '.join(top_level)})")
    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given: Any = raw
        for part in section.split("."):
            given = given.get(part, {}) if isinstance(given, dict) else given
        if not isinstance(given, dict):
            raise ConfigError(path, f"{section} must be a table ([{section}])")
        subsections = {name.rpartition(".")[2] for name in SCHEMA if name.startswith(section + ".")}
        for key in given:
            if key not in keys and key not in subsections:
                known = ", ".join([*keys, *sorted(subsections)])
                raise ConfigError(path, f"unknown key {section}.{key} (known: {known})")
        values[section] = {}
        for key, (kind, default) in keys.items():
            if key not in given:
                if default is REQUIRED:
                    raise ConfigError(path, f"missing key {section}.{key}")
                values[section][key] = default
                continue
            value = given[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(path, f"{section}.{key} must be {_KIND_NAMES[kind]}, got {value!r}")
            if kind is str and key not in ("reply_to",) and default is REQUIRED and not value.strip():
                raise ConfigError(path, f"{section}.{key} must not be empty")
            values[section][key] = value
    return values


def _address(path: Path, key: str, value: str, with_name: bool = False) -> str:
    if any(ord(ch) < 32 for ch in value):
        raise ConfigError(path, f"{key} must be on one line")
    name, address = parseaddr(value)
    local, _, domain = address.partition("@")
    if not local or "." not in domain:
        raise ConfigError(path, f"{key} is not an email address: {value!r}")
    if with_name and not name:
        raise ConfigError(path, f"{key} must look like 'Name <address>', got {value!r}")
    return value


def _url(path: Path, key: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(path, f"{key} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _remote(base: Path, remote: str) -> str:
    """A git URL as given; a relative local path resolves against the config's folder like every path."""
    if not remote or "://" in remote or remote.startswith(("/", "git@")) or ":" in remote.split("/")[0]:
        return remote
    return str((base / remote).resolve())


def _choice(path: Path, key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(path, f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _positive(path: Path, key: str, value: Any) -> Any:
    if value <= 0:
        raise ConfigError(path, f"{key} must be positive, got {value}")
    return value


def _texts(path: Path, key: str, value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise ConfigError(path, f"{key} must be a list of non-empty texts in quotes, got {value!r}")
    return tuple(item.strip() for item in value)


def _filename_pattern(path: Path, pattern: str) -> str:
    try:
        name = pattern.format(number=1)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(path, f"archive.filename may only use {{number}}, got {pattern!r}") from None
    if name == pattern.format(number=2) or "/" in name or not name.endswith(".md"):
        raise ConfigError(
            path, f"archive.filename must contain {{number}}, no '/', and end in .md, got {pattern!r}"
        )
    return pattern
