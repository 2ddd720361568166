"""Checks an inference request against its model's config before it is queued.

Every problem is an `InvalidInput` naming the offending input, so a client can
fix its request; nothing here allocates in proportion to the request.
`check_inputs` reads only the inputs' names, datatypes and shapes, so a transport
can run it (through `DataPlane.check_inputs`) before it decodes their data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from headrace.errors import InvalidInput
from serving.classification import check_classifiable
from serving.model_config import ModelConfig, TensorSpec
from serving.types import InferRequest


class TensorLayout(Protocol):
    """What `check_inputs` reads of an input: no data (an `InferTensor` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], batched: bool, max_batch: int) -> None:
    dims = spec.dims
    if len(shape) != len(dims) + batched:
        expected = ([-1] if batched else []) + list(dims)
        raise InvalidInput(
            f"input {spec.name!r}: expected {len(expected)} dims {expected}, got {list(shape)}"
        )
    if batched and not 1 <= shape[0] <= max_batch:
        raise InvalidInput(
            f"input {spec.name!r}: batch size {shape[0]} must be between 1 and {max_batch}"
        )
    for got, want in zip(shape[1:] if batched else shape, dims, strict=True):
        if want != -1 and got != want:
            expected = ([-1] if batched else []) + list(dims)
            raise InvalidInput(f"input {spec.name!r}: expected shape {expected}, got {list(shape)}")


def non_finite_problem(arrays: Mapping[str, np.ndarray]) -> str | None:
    """What is wrong with floating-point inputs holding NaN or infinity (the first such
    input), or None: the one check that reads the data."""
    for name, data in arrays.items():
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            return f"input {name!r} holds NaN or infinite values"
    return None


def check_finite(request: InferRequest, config: ModelConfig) -> None:
    """Raise `InvalidInput` for a floating-point input holding NaN or infinity, when the
    model's config rejects them."""
    if not config.reject_non_finite:
        return
    problem = non_finite_problem({tensor.name: tensor.data for tensor in request.inputs})
    if problem is not None:
        raise InvalidInput(problem)


def _specs_of(inputs: Sequence[TensorLayout], config: ModelConfig) -> Sequence[TensorSpec]:
    """The config's spec of each input, in the inputs' order; refuses unknown and missing
    names."""
    if len(inputs) == len(config.inputs) == 1 and inputs[0].name == config.inputs[0].name:
        return config.inputs  # the usual case, without the sets below
    specs = {spec.name: spec for spec in config.inputs}
    given = {tensor.name for tensor in inputs}
    if given != specs.keys():
        unknown = sorted(given - specs.keys())
        if unknown:
            raise InvalidInput(
                f"unknown input {unknown[0]!r} for model {config.name!r}; "
                f"it expects {sorted(specs)}"
            )
        missing = sorted(specs.keys() - given)
        raise InvalidInput(f"missing input {missing[0]!r} for model {config.name!r}")
    return [specs[tensor.name] for tensor in inputs]


def check_inputs(inputs: Sequence[TensorLayout], config: ModelConfig) -> int:
    """Raise `InvalidInput` unless the inputs' names, datatypes and shapes fit `config`;
    returns the batch size (rows)."""
    if not inputs:
        raise InvalidInput("the request has no inputs")
    batched = config.max_batch_size > 0
    rows: set[int] = set()
    for tensor, spec in zip(inputs, _specs_of(inputs, config), strict=True):
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {tensor.name!r}: expected datatype {spec.datatype}, got {tensor.datatype}"
            )
        _check_shape(spec, tensor.shape, batched, config.max_batch_size)
        rows.add(tensor.shape[0] if batched else 1)
    if len(rows) > 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
    return rows.pop()


def validate_request(request: InferRequest, config: ModelConfig, values: bool = True) -> int:
    """Raise `InvalidInput` unless the request fits `config`; returns its batch size (rows).
    `values=False` leaves out `check_finite`, for a caller whose batcher screens the values
    of whole batches (`DynamicBatcher`'s `screen`)."""
    rows = check_inputs(request.inputs, config)
    if values:
        check_finite(request, config)
    if not request.requested_outputs:
        return rows
    known_outputs = {spec.name for spec in config.outputs}
    seen: set[str] = set()
    for name in request.requested_outputs:
        if name not in known_outputs:
            raise InvalidInput(
                f"unknown output {name!r} requested; "
                f"model {config.name!r} has {sorted(known_outputs)}"
            )
        if name in seen:  # as in Triton: each copy could ask for another classification
            raise InvalidInput(f"output {name!r} is requested more than once; request it once")
        seen.add(name)
    if request.class_counts:
        check_classifiable(config, request.class_counts)
    return rows
