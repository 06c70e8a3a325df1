"""The subscriber web service beside the stages: double opt-in sign-up (``signup``), unsubscribe
pages and one-click (``links``), the SES webhook (``webhook``), security headers and limits
(``security``), deadlines on slow clients (``timeouts``), assembled into one Starlette app and served
by uvicorn (``app``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.web.app import create_app, serve
    from pipeline.web.state import Service

__all__ = ["Service", "create_app", "serve"]
__getattr__, __dir__ = lazy_exports(__name__, __all__, ("app", "state"))
