"""The Maildir transport: delivers into a local Maildir, for development and for tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pipeline.errors import TemporaryFailure, TransportUnavailable
from pipeline.send.transports.base import Envelope, Transport


class MaildirTransport(Transport):
    """Delivers into a local Maildir: tmp/ then an atomic rename into new/."""

    name = "maildir"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            for folder in ("tmp", "new", "cur"):
                (path / folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TransportUnavailable(f"maildir {path}: {error.strerror}") from None

    def send(self, envelope: Envelope) -> str:
        name = _maildir_name(envelope.key)
        temporary = self.path / "tmp" / name
        try:
            with temporary.open("wb") as handle:
                handle.write(envelope.data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path / "new" / name)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise TemporaryFailure(
                f"maildir {self.path}: {error.strerror}", recipient=envelope.recipient
            ) from None
        return name

    def was_delivered(self, key: str) -> bool:
        # Any host name: the resume may run in another container. A mail client moves read
        # messages to cur/ and appends ":2,<flags>". Keys hold no dot, so "s5.*" never matches "s50".
        return any((self.path / "new").glob(f"{key}.*")) or any((self.path / "cur").glob(f"{key}.*"))


def _maildir_name(key: str) -> str:
    return f"{key}.{socket.gethostname().replace('/', '_').replace(':', '_')}"
