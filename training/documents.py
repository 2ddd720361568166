"""Settings documents (job specs, search spaces) read from JSON or YAML text."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from headrace.errors import ConfigError

MAX_DOCUMENT_VALUES = 100_000
"""Most values (mapping entries and list items, counted where they are used) a document may
hold. YAML aliases repeat a part without copying it: nine lines of them ('billion laughs')
read in a millisecond and stand for 10**9 values, which validation would walk for ever."""


def read_document(path: Path, what: str) -> Any:
    """`load_document` of a file's text; a ConfigError naming `what` if it cannot be read or
    is not UTF-8 (a binary file, or text saved in another encoding)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 JSON or YAML"
        ) from None
    return load_document(text, what)


def load_document(text: str, what: str) -> Any:
    """Parse `text` as JSON, else as YAML; a ConfigError naming `what` and the line if neither.

    JSON goes first: PyYAML (YAML 1.1) reads JSON's `1e-05` as a string, not a number.
    A document nested past Python's recursion limit, holding a number of more digits than
    int() reads, or expanding (through YAML aliases) to more than `MAX_DOCUMENT_VALUES`
    values is refused too, as a ConfigError.
    """
    try:
        try:
            data = json.loads(text)
        except ValueError:  # not JSON (or a number json cannot read: YAML says the same)
            data = _load_yaml(text, what)
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply to be read") from None
    except ValueError:  # int() of more than sys.get_int_max_str_digits() digits
        raise ConfigError(
            f"{what} holds a number of more than {sys.get_int_max_str_digits():,} digits, "
            "which no setting takes"
        ) from None
    _check_size(data, what)
    return data


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "neither JSON nor YAML"
        raise ConfigError(f"{what} is not valid JSON or YAML{where}: {problem}") from None


def _check_size(data: Any, what: str) -> None:
    """ConfigError if `data` stands for more than `MAX_DOCUMENT_VALUES` values; the walk
    stops there, however far aliases would expand it."""
    seen = 0
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            items: Any = value.values()
        elif isinstance(value, list):
            items = value
        else:
            continue
        seen += len(value)
        if seen > MAX_DOCUMENT_VALUES:
            raise ConfigError(
                f"{what} stands for more than {MAX_DOCUMENT_VALUES:,} values (YAML aliases "
                "repeating a part?); write the settings out"
            )
        stack.extend(items)
