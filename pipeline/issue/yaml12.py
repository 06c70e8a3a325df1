"""The pipeline's one YAML dialect: YAML 1.2 through ruamel.yaml, for front matter and errata.yaml.

Reading and writing with the same library and schema is what makes a round trip safe: under
YAML 1.1 (PyYAML) ``on``, ``off``, ``yes`` and ``no`` are booleans, so a replacement text
``off`` written by a 1.2 writer came back as ``False``. Here a value is read back as written.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError


class YamlProblem(Exception):
    """Why a YAML text could not be read, and on which line (1-based) when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def round_trip_yaml() -> YAML:
    """Loads into dicts and lists that remember their comments, layout and lines; dumps them back."""
    yaml = YAML(typ="rt", pure=True)
    yaml.width = 100
    return yaml


def load_yaml(text: str) -> Any:
    """Parse ``text``; the mappings returned know the line of each key (``.lc``)."""
    try:
        return round_trip_yaml().load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise YamlProblem(str(error.problem or error.context), mark.line + 1 if mark else None) from None
    except ReaderError as error:  # a character YAML does not allow in a file, e.g. a literal ESC
        line = text.count("\n", 0, error.position) + 1
        raise YamlProblem(f"{error.reason}: U+{error.character:04X}", line) from None
    except YAMLError as error:
        raise YamlProblem(str(error), None) from None
