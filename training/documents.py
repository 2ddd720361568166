"""Settings documents (job specs, search spaces) read from JSON or YAML text."""

from __future__ import annotations

import json
from typing import Any

import yaml

from headrace.errors import ConfigError


def load_document(text: str, what: str) -> Any:
    """Parse `text` as JSON, else as YAML; a ConfigError naming `what` and the line if neither.

    JSON goes first: PyYAML (YAML 1.1) reads JSON's `1e-05` as a string, not a number.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "neither JSON nor YAML"
        raise ConfigError(f"{what} is not valid JSON or YAML{where}: {problem}") from None
