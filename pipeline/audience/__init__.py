"""The audience beside the stages: addresses, the subscriber list, double opt-in, unsubscribe tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.audience.addresses import (
        address_key,
        ascii_address,
        canonical_address,
        check_address,
        check_name,
    )
    from pipeline.audience.signup import Signup, confirm, request_signup, unsubscribe
    from pipeline.audience.subscribers import (
        ImportReport,
        Subscriber,
        add,
        counts,
        export_csv,
        find,
        import_csv,
        listing,
        remove,
        set_status,
    )
    from pipeline.audience.tokens import load_secret, make_token, verify_token

__all__ = [
    "ImportReport",
    "Signup",
    "Subscriber",
    "add",
    "address_key",
    "ascii_address",
    "canonical_address",
    "check_address",
    "check_name",
    "confirm",
    "counts",
    "export_csv",
    "find",
    "import_csv",
    "listing",
    "load_secret",
    "make_token",
    "remove",
    "request_signup",
    "set_status",
    "unsubscribe",
    "verify_token",
]
__getattr__, __dir__ = lazy_exports(__name__, __all__, ("addresses", "subscribers", "signup", "tokens"))
