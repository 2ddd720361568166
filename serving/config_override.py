"""Triton's load-time config override: `load_model(name, config=JSON)` on this repository.

Triton loads the model with the JSON (a `ModelConfig` of model_config.proto) instead
of the config in the model's folder, until a load without one. Here the override
may set what `config.json` lets a server choose per model: `max_batch_size` (the
batch axis stays as it is), `instance_group` (CPU instances; their counts are
added up), and `dynamic_batching`'s `preferred_batch_size`,
`max_queue_delay_microseconds` and `default_queue_policy.max_queue_size`. Fields
absent from the JSON keep config.json's values (Triton would take its own
defaults), so `get_model_config`'s answer, edited and sent back, works as it is.
The inputs, outputs, labels and preprocessing may only be restated: the first three
serve every version of the model, and each version runs with the preprocessing it was
trained with (an older version's answer restates its own, not config.json's). Anything
else Triton's ModelConfig holds is refused with `InvalidInput` naming the field, never
half-applied. The override lives in this server's model manager
(`ModelManager.load(name, config)`), not in the repository: Kafka workers and other
servers keep config.json, and a restart forgets it, as Triton's does. An autoscaled
model's instance count must lie in its autoscaling range (the autoscaler moves it on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from pydantic import ValidationError

from headrace.errors import InvalidInput
from protos import model_config_pb2 as mc
from serving.grpc_convert import model_config_to_proto
from serving.model_config import (
    MAX_INSTANCES,
    ModelConfig,
    PreprocessingSpec,
    validation_problems,
)
from serving.version_policy import VersionPolicy

PARAMETER = "config"  # the load request parameter carrying the override
# Top-level fields an override may set (others are refused), and the parameters a
# ModelConfig answer carries that are facts of one version, not settings (see
# `DataPlane.version_parameters`): sent back, they are ignored.
SETTABLE = {"name", "platform", "backend", "max_batch_size", "input", "output", "instance_group",
            "dynamic_batching", "version_policy", "parameters"}  # fmt: skip
VERSION_FACTS = {"version", "dp_epsilon", "dp_delta", "watermark_id"}
# protobuf's JSON parser on a name the proto lacks: said as "Message type ... has no field",
# which for Triton's own fields (sequence_batching) reads as if Triton's ModelConfig lacked it.
_UNKNOWN_FIELD = re.compile(r'has no field named "(?P<field>[^"]*)" at "(?P<at>[^"]*)"')
_CPU_KINDS = (mc.ModelInstanceGroup.KIND_AUTO, mc.ModelInstanceGroup.KIND_CPU)


def _refuse(what: str) -> InvalidInput:
    return InvalidInput(f"config override: {what}")


def _stated(message: Any, document: Mapping[str, Any]) -> set[str]:
    """The field names of `message` that `document` (its JSON) states, in either spelling."""
    by_key = {key: f.name for f in message.DESCRIPTOR.fields for key in (f.name, f.json_name)}
    return {by_key[key] for key in document if key in by_key}


def _parse(text: str) -> tuple[mc.ModelConfig, dict[str, Any]]:
    """The override as a ModelConfig, and as the JSON object it was sent as."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise _refuse(f"not JSON ({exc})") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise _refuse("not JSON a server reads: nested too deeply") from None
    if not isinstance(document, dict):
        raise _refuse("a JSON object (a ModelConfig of model_config.proto) is expected")
    if list(document) == ["config"] and isinstance(document["config"], dict):
        raise _refuse(  # tritonclient's get_model_config(as_json=True) answer, sent as it is
            "this is get_model_config's whole answer; send its 'config' member "
            "(json.dumps(answer['config']))"
        )
    _drop_nulls(document)
    message = mc.ModelConfig()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        first_line = str(exc).splitlines()[0].rstrip(".")  # the rest lists the proto's fields
        unknown = _UNKNOWN_FIELD.search(first_line)
        if unknown is not None:  # a field Triton has and this proto leaves out, or a typo
            path = unknown["at"].removeprefix("ModelConfig").lstrip(".").split(".")
            field = ".".join([*filter(None, path), unknown["field"]])
            first_line = f"{field} cannot be set on this server"
        settable = ", ".join(sorted(SETTABLE))
        raise _refuse(f"{first_line}; an override may state {settable}") from None
    return message, document


def _drop_nulls(document: dict[str, Any]) -> None:
    """Remove the members whose value is JSON null, at any depth (iteratively: the JSON may
    nest deeply). A null is no value, so the field keeps config.json's as one left out
    does; protobuf's JSON parser would read it as the field's zero (a queue delay of 0)."""
    stack = [document]
    while stack:
        node = stack.pop()
        for key in [key for key, value in node.items() if value is None]:
            del node[key]
        for value in node.values():
            items = value if isinstance(value, list) else [value]
            stack.extend(item for item in items if isinstance(item, dict))


def _unsupported(message: Any, allowed: set[str], where: str) -> None:
    extra = sorted(f.name for f, _ in message.ListFields() if f.name not in allowed)
    if extra:
        raise _refuse(f"{where}{', '.join(extra)} cannot be set on this server")


def _instances(groups: Any, base: ModelConfig) -> int:
    if not groups:
        raise _refuse(
            'instance_group is empty: give at least one group (e.g. [{"count": 2}]), or '
            "leave instance_group out to keep config.json's instances"
        )
    total = 0
    for group in groups:
        _unsupported(group, {"name", "kind", "count"}, "instance_group: ")
        if group.kind not in _CPU_KINDS:
            kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
            raise _refuse(f"instance_group kind {kind}: this server runs models on CPU only")
        if group.count < 0:
            raise _refuse(f"instance_group count {group.count} is negative")
        total += group.count or 1  # Triton's default count is 1
    if total > MAX_INSTANCES:
        raise _refuse(
            f"instance_group counts add up to {total} instances, more than {MAX_INSTANCES} "
            "(each is an ONNX Runtime session with its own copy of the weights)"
        )
    scaling = base.autoscaling  # the instances a model runs stay within its range
    if scaling is not None:  # config.json's own count lies in it (ModelConfig checks)
        low, high = scaling.min_instances, scaling.max_instances
        if not low <= total <= high:
            raise _refuse(
                f"instance_group counts add up to {total} instances, outside the model's "
                f"autoscaling range {low}..{high} (config.json's autoscaling section moves "
                "its instances within it); give a count in that range, or leave "
                "instance_group out"
            )
    return total


def _batching(
    given: mc.ModelDynamicBatching, document: Mapping[str, Any], base: ModelConfig
) -> dict[str, Any]:
    """config.json's dynamic_batching with the settings `document` states replaced."""
    _unsupported(
        given,
        {"preferred_batch_size", "max_queue_delay_microseconds", "default_queue_policy"},
        "dynamic_batching: ",
    )
    _unsupported(given.default_queue_policy, {"max_queue_size"}, "default_queue_policy: ")
    stated = _stated(given, document)
    update: dict[str, Any] = {}
    if "preferred_batch_size" in stated:
        update["preferred_batch_sizes"] = list(dict.fromkeys(given.preferred_batch_size))
    if "max_queue_delay_microseconds" in stated:
        update["max_queue_delay_us"] = given.max_queue_delay_microseconds
    if "default_queue_policy" in stated:
        queue_size = given.default_queue_policy.max_queue_size
        if queue_size == 0:
            raise _refuse("max_queue_size 0 (no bound) is not offered; give a bound")
        update["max_queue_size"] = queue_size
    return {**base.dynamic_batching.model_dump(), **update}


def apply_override(
    text: str, base: ModelConfig, policy: VersionPolicy, served: Sequence[ModelConfig] = ()
) -> ModelConfig:
    """`base` (the model's config.json) with the override `text` applied; `policy` is the
    server's version policy (an override may only restate it); `served` are the configs
    the model's loaded versions run with (get_model_config's answers: a parameter may
    restate theirs too). `InvalidInput` naming the field for anything this server cannot
    honour."""
    given, document = _parse(text)
    stated = _stated(given, document)
    refused = sorted(stated - SETTABLE)
    if refused:
        raise _refuse(f"{', '.join(refused)} cannot be set on this server")
    if given.name not in ("", base.name):
        raise _refuse(f"name {given.name!r} is not the model's ({base.name!r})")
    if given.platform not in ("", base.platform) or given.backend not in ("", "onnxruntime"):
        raise _refuse(f"this server runs {base.platform} models only")
    current = model_config_to_proto(base, policy)
    if "version_policy" in stated and given.version_policy != current.version_policy:
        raise _refuse("version_policy is the server's (--version-policy), not a model's")
    for field in ("input", "output"):
        if field in stated and list(getattr(given, field)) != list(getattr(current, field)):
            raise _refuse(
                f"{field} differs from config.json's; a model's inputs and outputs serve "
                "all of its versions and cannot be overridden"
            )
    restatable = [current.parameters] + [model_config_to_proto(c).parameters for c in served]
    _check_parameters(given.parameters, restatable)
    update: dict[str, Any] = {}
    if "max_batch_size" in stated:
        if (given.max_batch_size > 0) != (base.max_batch_size > 0):
            raise _refuse(
                f"max_batch_size {given.max_batch_size} would add or remove the batch axis "
                f"(config.json's is {base.max_batch_size}); a model's batch axis cannot change"
            )
        update["max_batch_size"] = given.max_batch_size
    if "instance_group" in stated:
        update["instance_count"] = _instances(given.instance_group, base)
    preferred_stated = False
    if "dynamic_batching" in stated:
        batching = document.get("dynamic_batching", document.get("dynamicBatching")) or {}
        update["dynamic_batching"] = _batching(given.dynamic_batching, batching, base)
        preferred_stated = "preferred_batch_size" in _stated(given.dynamic_batching, batching)
    _check_preferred(
        update.get("dynamic_batching", base.dynamic_batching.model_dump())["preferred_batch_sizes"],
        update.get("max_batch_size", base.max_batch_size),
        preferred_stated,
    )
    try:
        return ModelConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        raise _refuse(validation_problems(exc, whole="config")) from None


def _check_preferred(sizes: list[int], max_batch_size: int, stated: bool) -> None:
    """Preferred batch sizes must fit the batch axis; named as Triton names them (config.json
    calls them `preferred_batch_sizes`), and whose they are when the override left them out."""
    if all(1 <= size <= max_batch_size for size in sizes):
        return
    field = f"dynamic_batching.preferred_batch_size {sizes}"
    if max_batch_size == 0:
        raise _refuse(f"{field}: a model without a batch axis (max_batch_size 0) batches nothing")
    whose = "" if stated else " (config.json's: state preferred_batch_size too)"
    raise _refuse(f"{field}{whose} must lie in 1..max_batch_size ({max_batch_size})")


def _check_parameters(given: Mapping[str, Any], restatable: Sequence[Mapping[str, Any]]) -> None:
    """`given` may only restate a parameter of config.json's (`restatable[0]`) or of a loaded
    version's config (a version keeps the preprocessing it was trained with)."""
    for key, value in given.items():
        if key in VERSION_FACTS:
            continue
        known = [parameters[key].string_value for parameters in restatable if key in parameters]
        if not known:
            raise _refuse(f"parameters[{key!r}] is not a setting of this server's models")
        if not any(_same_setting(key, value.string_value, text) for text in known):
            raise _refuse(
                f"parameters[{key!r}] differs from config.json's and the loaded versions'; "
                "it cannot be overridden"
            )


def _same_setting(key: str, given: str, known: str) -> bool:
    """Whether two parameter strings state the same setting. Labels and preprocessing are
    JSON: a restatement typed by hand with other spacing, key order or number spelling (0.10
    for 0.1), or leaving out preprocessing fields at their defaults, is the same setting.
    Other strings must match exactly."""
    if given == known:
        return True
    try:
        if key == "preprocessing":
            spec = PreprocessingSpec.model_validate_json
            return spec(given) == spec(known)
        return bool(json.loads(given) == json.loads(known))
    except ValueError:  # not JSON, or not a preprocessing spec (ValidationError is one)
        return False
