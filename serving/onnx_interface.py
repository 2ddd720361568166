"""Does an ONNX model take and give what its model's config.json says?

A version is checked when its sessions are built, before it replaces the one
being served: a model file whose inputs or outputs differ from the config
(another model copied in by hand, a re-export that renamed a tensor) would
otherwise load and then refuse every request. Checked: input names, element
types and the static dims (the batch axis and symbolic dims are free), and
that every configured output exists (a model may have more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serving.model_config import ModelConfig

# ONNX Runtime's `NodeArg.type` -> Open Inference Protocol datatype
ORT_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}  # fmt: skip

InputMeta = Mapping[str, tuple[str, Sequence[int | str | None]]]


def interface_problems(
    config: ModelConfig, inputs: InputMeta, output_names: Sequence[str]
) -> list[str]:
    """What differs between `config` and a model with these inputs (name -> ORT type and
    shape) and outputs; empty when they agree."""
    problems = []
    wanted = {spec.name: spec for spec in config.inputs}
    if set(wanted) != set(inputs):
        problems.append(f"inputs {sorted(inputs)} in the model, {sorted(wanted)} in the config")
    for name in sorted(set(wanted) & set(inputs)):
        spec, (ort_type, shape) = wanted[name], inputs[name]
        datatype = ORT_TYPES.get(ort_type, ort_type)
        if datatype != spec.datatype:
            problems.append(
                f"input {name!r} is {datatype} in the model, {spec.datatype} in the config"
            )
        dims = list(shape[1:]) if config.max_batch_size > 0 else list(shape)
        if not _dims_agree(dims, spec.dims):
            shown = [d if isinstance(d, int) else "?" for d in dims]
            after = " after the batch axis" if config.max_batch_size > 0 else ""
            problems.append(
                f"input {name!r} has dims {shown}{after} in the model ('?' is free), "
                f"{list(spec.dims)} in the config"
            )
    missing = [spec.name for spec in config.outputs if spec.name not in output_names]
    if missing:
        problems.append(
            f"outputs {missing} of the config are not among the model's {list(output_names)}"
        )
    return problems


def _dims_agree(model: Sequence[int | str | None], config: Sequence[int]) -> bool:
    """Same rank, and every dim fixed on both sides is the same (-1 or a named dim is free)."""
    return len(model) == len(config) and all(
        not isinstance(got, int) or want == -1 or got == want
        for got, want in zip(model, config, strict=True)
    )
