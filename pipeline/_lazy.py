"""Package APIs that cost nothing until used (PEP 562).

Each stage package names its public API in ``__all__``, as httpx and sqlite-utils do, and imports
it for type checkers only; at run time a name is imported when first asked for. Importing every
module behind a package up front would make ``newsletter build`` pay for httpx (link checker),
boto3 (SES) and starlette (web service) at start-up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence


def lazy_exports(
    package: str, names: Sequence[str], modules: Sequence[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each of ``names`` is looked up in its
    ``modules`` (relative names, in order), which are imported only then."""
    public = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in public:
            for module in modules:
                found = importlib.import_module(f"{package}.{module}")
                if hasattr(found, name):
                    value = getattr(found, name)
                    setattr(sys.modules[package], name, value)  # found once, then a plain attribute
                    return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(public)

    return __getattr__, __dir__
