"""Package APIs that cost nothing until used (PEP 562), and libraries imported without what we never use.

Each stage package names its public API in ``__all__``, as httpx and sqlite-utils do, and imports
it for type checkers only; at run time a name is imported when first asked for. Importing every
module behind a package up front would make ``newsletter build`` pay for httpx (link checker),
boto3 (SES) and starlette (web service) at start-up.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType


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


class _Deferred(ModuleType):
    """Stands in for a module that a library imports at its top but may never use.

    The first attribute asked of it imports the real module (which by then is no longer
    replaced in ``sys.modules``) and answers from it.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(importlib.import_module(self.__name__), name)


_DEFERRING = threading.Lock()


def import_deferring(module: str, deferred: Sequence[str]) -> ModuleType:
    """Import ``module`` while the ``deferred`` modules it imports are stand-ins, if not loaded yet.

    For libraries whose top-level imports are far costlier than what we use of them: premailer
    imports requests (about 70 ms of ``newsletter build``, bench/README.md) only to fetch remote
    stylesheets, which the renderer forbids. Should the library use a deferred module after all,
    it gets the real one then, so this changes when a module is loaded, never what it does.
    """
    if module in sys.modules:
        return sys.modules[module]
    with _DEFERRING:
        standing_in = {name: _Deferred(name) for name in deferred if name not in sys.modules}
        sys.modules.update(standing_in)
        try:
            return importlib.import_module(module)
        finally:
            for name, stand_in in standing_in.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
