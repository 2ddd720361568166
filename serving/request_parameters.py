"""Triton's request parameters that bound or label an inference request, checked as Triton does.

`timeout` tightens a request's deadline; sequence and priority parameters are accepted
and ignored (no model here is sequence-batched or has priority levels) once their values
have the types Triton accepts; reserved `triton_` keys Triton does not define are refused.
"""

from __future__ import annotations

import time
from typing import Any

from headrace.errors import InvalidInput
from serving.types import InferRequest

# Triton's request parameter bounding a request's time in the server, in microseconds.
TIMEOUT_PARAMETER = "timeout"
# Triton's request parameters for sequence batching and priority levels. Triton ignores them
# for a model configured with neither (it schedules such a request as any other), and no
# model here has either: they are ignored too, once their values have the types Triton
# accepts (it refuses others with INVALID_ARGUMENT).
SEQUENCE_ID_PARAMETER = "sequence_id"
SEQUENCE_FLAG_PARAMETERS = ("sequence_start", "sequence_end")
PRIORITY_PARAMETER = "priority"
# Triton reserves request parameter keys starting with this prefix for itself and refuses
# (INVALID_ARGUMENT) any such key it does not define, rather than passing it on. Of the ones
# it defines, a client sends triton_enable_empty_final_response (a bool; tritonclient's
# stream_infer sets it): an empty final response only follows a decoupled model's last one,
# and no model here is decoupled (each response is final), so it changes nothing here.
RESERVED_PREFIX = "triton_"
RESERVED_BOOL_PARAMETERS = ("triton_enable_empty_final_response",)


def check_request_parameters(parameters: dict[str, Any]) -> None:
    """Refuse (as Triton does) reserved `triton_` keys it does not define, and sequence,
    priority and reserved parameters of the wrong type; their values are then ignored (see
    SEQUENCE_ID_PARAMETER, RESERVED_PREFIX)."""
    for key, value in parameters.items():
        if not key.startswith(RESERVED_PREFIX):
            continue
        if key not in RESERVED_BOOL_PARAMETERS:
            raise InvalidInput(
                f"parameter {key!r}: keys starting with {RESERVED_PREFIX!r} are reserved for "
                f"the protocol, and the only one a request may carry is "
                f"{', '.join(RESERVED_BOOL_PARAMETERS)}; rename the parameter"
            )
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter {key!r} must be a bool, got {value!r}")
    if SEQUENCE_ID_PARAMETER in parameters:
        value = parameters[SEQUENCE_ID_PARAMETER]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise InvalidInput(
                f"parameter {SEQUENCE_ID_PARAMETER!r} must be an integer or a string, got {value!r}"
            )
    for key in SEQUENCE_FLAG_PARAMETERS:
        if key in parameters and not isinstance(parameters[key], bool):
            raise InvalidInput(f"parameter {key!r} must be a bool, got {parameters[key]!r}")
    if PRIORITY_PARAMETER in parameters:
        value = parameters[PRIORITY_PARAMETER]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(
                f"parameter {PRIORITY_PARAMETER!r} must be a whole number >= 0, got {value!r}"
            )


def apply_timeout(request: InferRequest) -> None:
    """Tighten the request's deadline by its `timeout` parameter (microseconds; 0 = none)."""
    value = request.parameters.get(TIMEOUT_PARAMETER)
    if value is None or value == 0:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"parameter {TIMEOUT_PARAMETER!r} must be a whole number of microseconds >= 0, "
            f"got {value!r}"
        )
    deadline = time.monotonic() + value / 1e6
    if request.deadline is None or deadline < request.deadline:
        request.deadline = deadline
