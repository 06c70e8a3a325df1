"""``POST /webhooks/ses``: SNS notifications of SES bounces and complaints, verified and applied by
:mod:`pipeline.events.apply`.

The answer tells SNS what to do: 200 applied (or a duplicate), 400 never valid (SNS gives up),
503 not now (SNS retries), 403 for every message while ``[events] topic_arns`` is empty.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pipeline.errors import NewsletterError, NotificationDeferred, NotificationRejected
from pipeline.events.apply import handle_sns
from pipeline.web.security import MAX_WEBHOOK_BYTES, read_body
from pipeline.web.state import Service

log = logging.getLogger(__name__)


async def webhook(request: Request) -> Response:
    service: Service = request.app.state.service
    body = await read_body(request, MAX_WEBHOOK_BYTES)
    # On the webhook's own threads, never the pages' pool: see Service.webhook_threads.
    return await asyncio.get_running_loop().run_in_executor(service.webhook_threads, _webhook, service, body)


def _webhook(service: Service, body: bytes) -> Response:
    try:
        verifier = service.verifier()
        if not verifier.topic_arns:
            # Any AWS account's topic (validly signed by SNS) could otherwise report fake bounces.
            log.warning(
                "webhook: refused an SNS message: [events] topic_arns is empty in %s; set it to the "
                "ARN of the SNS topic of your SES events (until then every SNS message is refused)",
                service.config.path,
            )
            return PlainTextResponse("refused: this endpoint accepts no SNS topic yet\n", 403)
        # Signature checks (and the certificate fetch) run outside the lock: only database work
        # holds it, so one slow certificate host does not stall every other notification.
        applied = handle_sns(service.events_db(), verifier, body, db_lock=service.events_lock)
    except NotificationDeferred as error:  # our side cannot check it now: SNS retries a 5xx
        log.warning("webhook: deferred: %s", error)
        return PlainTextResponse("try again later\n", 503)
    except NotificationRejected as error:
        log.warning("webhook: rejected: %s", error)
        return PlainTextResponse("rejected\n", 400)
    except NewsletterError as error:
        log.error("webhook: not applied: %s", error)
        return PlainTextResponse("try again later\n", 503)
    log.info(
        "webhook: %s %s: %s%s",
        applied.kind,
        applied.message_id,
        applied.outcome,
        " (duplicate)" if applied.duplicate else "",
    )
    return PlainTextResponse("ok\n")
