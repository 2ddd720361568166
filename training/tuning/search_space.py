"""Hyper-parameter search spaces in NNI's format, checked before any trial starts.

A search space maps a `TrainConfig` field to a distribution, as NNI writes it::

    {"learning_rate": {"_type": "loguniform", "_value": [1e-5, 1.0]},
     "optimizer": {"_type": "choice", "_value": ["adam", "sgd"]}}

`load_search_space(None)` gives `DEFAULT_SEARCH_SPACE`; a JSON or YAML file is
validated whole (unknown keys, unknown or unbounded types, bad bounds, values a
`TrainConfig` refuses) and every problem is listed in one `ConfigError`.
`apply_params` turns one sampled point into a validated `TrainConfig`.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from headrace.errors import ConfigError
from training.config import TrainConfig
from training.documents import read_document

DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"_type": "loguniform", "_value": [1e-5, 1.0]},
    "batch_size": {"_type": "choice", "_value": [16, 32, 64, 128, 256]},
    "width": {"_type": "choice", "_value": [0.5, 1.0, 2.0]},
    "dropout": {"_type": "uniform", "_value": [0.0, 0.6]},
    "weight_decay": {"_type": "loguniform", "_value": [1e-6, 1e-1]},
    "optimizer": {"_type": "choice", "_value": ["adam", "sgd"]},
}
"""What `headrace tune` searches when no --search-space file is given."""

TUNABLE: dict[str, type] = {
    "learning_rate": float,
    "batch_size": int,
    "width": float,
    "dropout": float,
    "weight_decay": float,
    "momentum": float,
    "optimizer": str,
    "lr_schedule": str,
    "patience": int,
}
"""TrainConfig fields a search space may tune, with the kind of value each takes."""

MAX_LISTED_VALUES = 5
"""Refused values of one parameter listed in an error; the rest are counted."""
RANGE_TYPES = frozenset({"uniform", "quniform", "loguniform", "qloguniform", "randint"})
BOUNDED_TYPES = RANGE_TYPES | {"choice"}
UNBOUNDED_TYPES = frozenset({"normal", "qnormal", "lognormal", "qlognormal"})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _range_problems(key: str, kind: str, value: Any, field_type: type) -> list[str]:
    """Shape and bound problems of a range distribution's `_value`."""
    arity = 3 if kind in {"quniform", "qloguniform"} else 2
    form = "[low, high, q]" if arity == 3 else "[low, high]"
    if not isinstance(value, list) or len(value) != arity or not all(map(_number, value)):
        return [f"{key}: {kind} takes {form} as numbers, got {value!r}"]
    low, high = value[0], value[1]
    problems = []
    if field_type is str:
        problems.append(f"{key}: takes names; use choice, not {kind}")
    elif field_type is int and kind in {"uniform", "loguniform"}:
        problems.append(f"{key}: takes whole numbers; use choice, randint or q{kind}")
    if not low < high:
        problems.append(f"{key}: low must be below high, got {value!r}")
    if kind in {"loguniform", "qloguniform"} and low <= 0:
        problems.append(f"{key}: {kind} needs low > 0, got {low}")
    if arity == 3 and value[2] <= 0:
        problems.append(f"{key}: q must be > 0, got {value[2]}")
    whole_bounds = float(low).is_integer() and float(high).is_integer()
    if kind == "randint" and not whole_bounds:
        problems.append(f"{key}: randint takes whole-number bounds, got {value!r}")
    if field_type is int and arity == 3:  # NNI samples round(x / q) * q, clipped to the bounds
        if not float(value[2]).is_integer():
            problems.append(f"{key}: takes whole numbers: q must be a whole number, got {value[2]}")
        if not whole_bounds:
            problems.append(
                f"{key}: takes whole numbers: bounds must be whole numbers, got {value!r}"
            )
    return problems


def _extremes(kind: str, value: list[Any]) -> list[Any]:
    """The values of a range distribution to try against TrainConfig: its ends."""
    if kind == "randint":  # NNI draws from [low, high)
        return [int(value[0]), int(value[1]) - 1]
    return [value[0], value[1]]


def check_search_space(space: Any, source: str = "search space") -> dict[str, dict[str, Any]]:
    """`space` if it is a valid search space; otherwise one ConfigError listing every problem."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{source} must be a non-empty mapping of parameter -> "
            '{"_type": ..., "_value": [...]}, not ' + f"{space!r:.60}"
        )
    problems: list[str] = []
    for key, entry in space.items():
        if key not in TUNABLE:
            problems.append(f"{key}: not a tunable parameter (choose {', '.join(TUNABLE)})")
            continue
        if not isinstance(entry, dict) or set(entry) != {"_type", "_value"}:
            problems.append(f'{key}: must be {{"_type": ..., "_value": [...]}}, got {entry!r:.60}')
            continue
        kind, value = entry["_type"], entry["_value"]
        if kind in UNBOUNDED_TYPES:
            problems.append(f"{key}: {kind} is unbounded; use a bounded type (uniform, choice)")
            continue
        if kind not in BOUNDED_TYPES:
            problems.append(
                f"{key}: unknown _type {kind!r} (choose {', '.join(sorted(BOUNDED_TYPES))})"
            )
            continue
        if kind == "choice":
            if not isinstance(value, list) or not value:
                problems.append(f"{key}: choice takes a non-empty list, got {value!r:.60}")
                continue
            found = _value_problems(key, value)
        else:
            found = _range_problems(key, kind, value, TUNABLE[key])
            if not found:
                found = _value_problems(key, _extremes(kind, value))
        problems.extend(found)
    if problems:
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(problems))
    return copy.deepcopy(space)


def _value_problems(key: str, values: list[Any]) -> list[str]:
    """Values of `key` that TrainConfig refuses, at most `MAX_LISTED_VALUES` of them listed.

    Each distinct value is checked against the field's own type and bounds (microseconds);
    only the smallest and largest numbers that pass, or each name that passes, are checked
    against the whole default TrainConfig, whose cross-field rules on tunable fields only
    ever bound a number from one side (batch_size >= workers). Validating every choice as a
    TrainConfig took 19 s for 99,000 choices.
    """
    refused: list[str] = []
    passed: list[Any] = []
    adapter = _field_adapter(key)
    for value in _distinct(values):
        try:
            adapter.validate_python(_coerce(key, value))
        except ValidationError as exc:
            reason = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            refused.append(f"{key}: value {value!r} is refused: {key}: {reason}")
            continue
        passed.append(value)
    if passed and TUNABLE[key] is not str:
        passed = [min(passed), max(passed)] if len(passed) > 1 else passed
    for value in passed:
        try:
            apply_params(TrainConfig(), {key: value})
        except ConfigError as exc:
            refused.append(f"{key}: value {value!r} is refused: {_first_line(exc.message)}")
    if len(refused) > MAX_LISTED_VALUES:
        cut = len(refused) - MAX_LISTED_VALUES
        refused = [*refused[:MAX_LISTED_VALUES], f"{key}: ... and {cut:,} more values refused"]
    return refused


def _distinct(values: list[Any]) -> list[Any]:
    """`values` without repeats, in order (1, 1.0 and True stay apart: they validate apart)."""
    seen: set[Any] = set()
    out = []
    for value in values:
        marker = (type(value), repr(value) if isinstance(value, list | dict) else value)
        if marker not in seen:
            seen.add(marker)
            out.append(value)
    return out


@functools.cache
def _field_adapter(key: str) -> TypeAdapter[Any]:
    """Validates one value of TrainConfig's field `key` alone (its type and bounds)."""
    field = TrainConfig.model_fields[key]
    return TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else message


def load_search_space(path: Path | None) -> dict[str, dict[str, Any]]:
    """The default search space (`path` None) or a JSON/YAML file's, validated."""
    if path is None:
        return copy.deepcopy(DEFAULT_SEARCH_SPACE)
    data = read_document(path, f"search space {path}")
    return check_search_space(data, f"search space {path}")


def _coerce(key: str, value: Any) -> Any:
    """NNI's samples as TrainConfig wants them (whole floats for int fields, e.g. quniform)."""
    if TUNABLE.get(key) is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def apply_params(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """A copy of `base` with the sampled hyper-parameters set, validated through TrainConfig."""
    unknown = sorted(set(params) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"not tunable: {', '.join(unknown)} (tunable: {', '.join(TUNABLE)})")
    data = base.model_dump()
    data.update({key: _coerce(key, value) for key, value in params.items()})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigError("invalid hyper-parameters:\n  " + "\n  ".join(problems)) from None
