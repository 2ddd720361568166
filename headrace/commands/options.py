"""Click helpers shared by command modules: config validation errors as one clear message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from headrace.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def build_config(factory: Callable[..., ModelT], **values: Any) -> ModelT:
    """Build a pydantic config, reporting every problem at once as a `ConfigError`."""
    try:
        return factory(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
