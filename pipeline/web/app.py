"""The subscriber web service (``newsletter serve``): sign-up with double opt-in, the confirmation
link, unsubscribe pages with RFC 8058 one-click unsubscribe, and the SES webhook (SNS).

Routes (every page is plain HTML: no script, nothing fetched, a strict Content-Security-Policy):

    GET  /, /subscribe          the sign-up form
    POST /subscribe             always "check your inbox" (400 for a malformed address, 429 over the per-IP limit)
    GET  /confirm/{token}       a page with one button; GET never changes anything (mail scanners follow links)
    POST /confirm/{token}       the button: activate a pending subscriber (410 expired or superseded,
                                404 forged, 403 bounced/complained)
    GET  /unsubscribe/{token}   a page with one button; GET never changes anything (mail scanners follow links)
    POST /unsubscribe/{token}   the button, or a mail provider's one-click POST (RFC 8058)
    POST /webhooks/ses          SNS notifications of SES bounces and complaints (pipeline.events);
                                403 for every message while ``[events] topic_arns`` is empty
    GET  /healthz               "ok", for the reverse proxy

Deployment: it listens on ``serve.host`` (127.0.0.1 by default) behind a reverse proxy that
terminates TLS for ``newsletter.public_url``. ``X-Forwarded-For`` (the client address the per-IP
sign-up limit counts) is believed only from the addresses in ``$FORWARDED_ALLOW_IPS``, by default
127.0.0.1: the proxy on the same machine. Every link in a page or an email is built from
``public_url``, never from the request's Host header, so a forged Host cannot plant links; no
redirect is ever made (a path with a trailing slash is a 404). Slow clients are disconnected and
connections limited by the ``[serve]`` settings (:func:`make_server`, :mod:`pipeline.web.timeouts`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pipeline.audience.tokens import load_previous_secret, load_secret
from pipeline.config import Config, Environment
from pipeline.errors import ServeError
from pipeline.events.sns import SnsVerifier
from pipeline.send.transports import Transport
from pipeline.web.links import unsubscribe_link
from pipeline.web.security import BodyTooLarge, SecurityHeaders
from pipeline.web.signup import confirm_link, signup
from pipeline.web.state import Service
from pipeline.web.webhook import webhook

log = logging.getLogger(__name__)


# --- The application and the server -----------------------------------------------------------


def create_app(
    config: Config,
    *,
    secret: bytes | None = None,
    previous_secret: bytes | None = None,
    transport: Transport | None = None,
    verifier: SnsVerifier | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The ASGI app. ``secret`` defaults to NEWSLETTER_SECRET (the same rule as sending), and then
    ``previous_secret`` to NEWSLETTER_SECRET_PREVIOUS; ``transport`` to the configured one (opened on
    first mail), ``verifier`` to an SNS verifier for the configured topics."""
    if secret is None:
        secret = load_secret(allow_development=config.transport == "maildir")
        previous_secret = load_previous_secret()
    service = Service(config, secret, previous_secret, transport, verifier, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return PlainTextResponse(f"{exc.detail}\n", exc.status_code, headers=exc.headers)
        return service.pages.page("not_found.html", 404)

    async def too_large(request: Request, exc: Exception) -> Response:
        log.warning("%s: request body over the limit, refused", request.url.path.split("/")[1] or "/")
        return PlainTextResponse("Request body too large.\n", 413)

    async def gone(request: Request, exc: Exception) -> Response:
        # The client left (or was disconnected for sending its body too slowly): nobody to answer.
        return PlainTextResponse("", 400)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Plain words, no traceback (that goes to the log, where uvicorn writes it).
        return PlainTextResponse("Something went wrong on our side. Please try again later.\n", 500)

    app = _Application(
        routes=[
            Route("/", signup, methods=["GET"]),
            Route("/subscribe", signup, methods=["GET", "POST"]),
            Route("/confirm/{token}", confirm_link, methods=["GET", "POST"]),
            Route("/unsubscribe/{token}", unsubscribe_link, methods=["GET", "POST"]),
            Route("/webhooks/ses", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={
            HTTPException: not_found,
            BodyTooLarge: too_large,
            ClientDisconnect: gone,
            Exception: server_error,
        },
        lifespan=lifespan,
        style_hash=service.pages.style_hash,
    )
    # Starlette would answer "/subscribe/" with a redirect built from the request's Host header:
    # anyone could make us point a visitor at their own site. Every URL we emit comes from
    # public_url; a path with a stray slash is simply not found.
    app.router.redirect_slashes = False
    app.state.service = service
    return app


class _Application(Starlette):
    """Starlette with :class:`SecurityHeaders` around everything. Added as user middleware, it would sit
    inside Starlette's ServerErrorMiddleware, and a 500 would go out without the headers."""

    def __init__(self, *args: Any, style_hash: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.style_hash = style_hash

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), self.style_hash)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not (before anything else starts)."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ServeError(f"cannot listen on {where}: {getattr(error, 'strerror', None) or error}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        hint = " (another server is running there; choose one with --port)" if error.errno == 98 else ""
        raise ServeError(f"cannot listen on {where}: {error.strerror}{hint}") from None
    return sock


def make_server(app: Starlette) -> Any:
    """The uvicorn server ``serve`` runs (tests run the same one), with the [serve] limits on slow
    clients: uvicorn's own keep-alive timeout, header buffer bound and connection limit, and the
    deadlines on reading a request it lacks (:mod:`pipeline.web.timeouts`)."""
    import uvicorn

    from pipeline.web.timeouts import deadline_protocol

    settings = app.state.service.config.serve
    return uvicorn.Server(
        uvicorn.Config(
            app,
            http=deadline_protocol(settings.header_timeout, settings.body_timeout),
            timeout_keep_alive=settings.keep_alive_timeout,
            limit_concurrency=settings.max_connections,
            h11_max_incomplete_event_size=16 * 1024,  # a request head still incomplete past it: 400
            proxy_headers=True,
            forwarded_allow_ips=Environment.from_os().forwarded_allow_ips,
            server_header=False,
            access_log=False,  # its lines carry whole URLs, tokens included; we log our own
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )


def serve(config: Config, host: str, port: int) -> None:
    """Run the service until Ctrl-C. A taken port or a bad host is a ServeError (one line)."""
    sock = bind(host, port)
    try:
        app = create_app(config)
        _log_to_stderr()
        bound = sock.getsockname()
        if not config.events.topic_arns:
            log.warning(
                "%s: [events] topic_arns is empty: the SES webhook (POST /webhooks/ses) refuses every "
                "SNS message until it is set to the ARN of your SES events topic",
                config.path,
            )
        log.info("listening on http://%s:%d/ for %s (Ctrl-C stops)", bound[0], bound[1], config.public_url)
        make_server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn has already shut down gracefully and re-raised the signal
    finally:
        sock.close()
    log.info("stopped")


def _log_to_stderr() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("pipeline", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
