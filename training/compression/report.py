"""`headrace compress report NAME`: the original against each compressed version, measured now.

Rows: every version of NAME, the versions compressed from NAME under other
names, and the sources of NAME's compressed versions. Every row is measured in
this process on ONNX Runtime, so the figures compare like with like:

- accuracy on the version's own test split (rebuilt from its lineage: dataset,
  seed, split fractions and, for a model trained on ingested shards, the same
  shard selection, read from `data_root`) through its served preprocessing;
- size of `model.onnx` on disk, and the number of weights it stores;
- latency at batch 1 and 64, all rows timed in interleaved rounds on one thread
  (`training.compression.measure.compare_latency`).

Ratios and differences are against the row's source: the version it was
compressed or fine-tuned from. Every version's files are checked against their
sha256 first, as a compression job checks its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import BaseModel

from security.watermark.embed import FINETUNED_FROM
from serving.repository import ModelRepository, ModelVersion
from training.compression.measure import (
    LATENCY_BATCHES,
    compare_latency,
    file_bytes,
    onnx_accuracy,
)
from training.compression.sources import COMPRESSED_FROM, version_ref
from training.datasets import DatasetSplits, lineage_splits, unread_data_dir, unread_root

_WEIGHT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}


class ReportRow(BaseModel):
    """One version's measurements."""

    ref: str
    compression: str
    source: str | None
    accuracy: float | None
    test_samples: int
    model_bytes: int
    weights: int
    latency_s: dict[int, float]
    accuracy_delta: float | None = None
    size_ratio: float | None = None
    latency_ratio: dict[int, float] | None = None


class CompressionReport(BaseModel):
    """The table `headrace compress report` prints (`--json` prints this)."""

    name: str
    rows: list[ReportRow]
    latency_batches: list[int]


def stored_weights(path: Path) -> int:
    """Elements of the weight tensors an ONNX file stores (float or integer, not scalars)."""
    proto = onnx.load(str(path), load_external_data=False)
    return sum(
        int(np.prod(t.dims))
        for t in proto.graph.initializer
        if t.dims and t.data_type in _WEIGHT_TYPES
    )


def report_versions(repository: ModelRepository, name: str) -> list[ModelVersion]:
    """NAME's versions, versions compressed from NAME elsewhere, and sources elsewhere."""
    found = {(name, n): repository.get(name, n) for n in repository.versions(name)}
    for other in repository.list_models():
        if other == name:
            continue
        for number in repository.versions(other):
            version = repository.get(other, number)
            origin = str(version.metadata.lineage.get(COMPRESSED_FROM, ""))
            if origin.partition(":")[0] == name:
                found[(other, number)] = version
    models = repository.list_models()
    for version in list(found.values()):
        ref = str(version.metadata.lineage.get(COMPRESSED_FROM, ""))
        source_name, _, source_number = ref.rpartition(":")
        if not source_number.isdecimal() or source_name not in models:
            continue
        key = (source_name, int(source_number))
        if key not in found and key[1] in repository.versions(source_name):
            found[key] = repository.get(*key)
    return [found[key] for key in sorted(found)]


def _split_key(version: ModelVersion) -> tuple[Any, ...] | None:
    lineage = version.metadata.lineage
    if "dataset" not in lineage:
        return None
    return (
        lineage["dataset"],
        lineage.get("seed", 0),
        lineage.get("val_fraction", 0.1),
        lineage.get("test_fraction", 0.1),
        lineage.get("data_source"),
        lineage.get("data_up_to_offset"),
    )


def unread_data_flags(
    repository: ModelRepository, name: str, data_dir: Path | None, data_root: Path | None
) -> list[str]:
    """Why the --data-dir or --data-root given would be read by no version the report measures
    (each version is measured on its own dataset's test split: a folder of files, or ingested
    shards under a data root). Empty when every flag given is read by some version."""
    measured = [v for v in report_versions(repository, name) if _split_key(v) is not None]
    problems = []
    for flag, value, unread in (
        ("--data-dir", data_dir, unread_data_dir),
        ("--data-root", data_root, unread_root),
    ):
        if value is None:
            continue
        if not measured:
            problems.append(
                f"{flag}: no version of {name!r} records the dataset it was trained on, so "
                f"none is measured and nothing is read; leave {flag} out"
            )
            continue
        why = [p for v in measured if (p := unread(v.metadata.lineage, version_ref(v)))]
        if len(why) == len(measured):
            others = len(measured) - 1
            also = f" (and so for the other {others} versions)" if others else ""
            problems.append(why[0] + also)
    return problems


def build_report(
    repository: ModelRepository,
    name: str,
    data_dir: Path | None = None,
    latency_seconds: float = 0.3,
    data_root: Path | None = None,
) -> CompressionReport:
    """Measure every version `report_versions` lists (see the module docstring); a version
    trained on ingested shards is measured on their test split, read from `data_root`
    (default the process's data root)."""
    versions = report_versions(repository, name)
    for version in versions:  # a missing or altered file: RepositoryError naming the version
        version.verify()
    splits: dict[tuple[Any, ...], DatasetSplits] = {}
    shape = list(versions[0].config.inputs[0].dims)
    latency = compare_latency(
        {version_ref(v): v.model_file for v in versions if list(v.config.inputs[0].dims) == shape},
        shape,
        seconds=latency_seconds,
    )
    rows: dict[str, ReportRow] = {}
    for version in versions:
        key = _split_key(version)
        accuracy, samples = None, 0
        if key is not None:
            if key not in splits:
                splits[key] = lineage_splits(version.metadata.lineage, data_dir, data_root)
            measured = onnx_accuracy(
                version.model_file, splits[key].test, version.config.preprocessing
            )
            accuracy, samples = measured.accuracy, measured.samples
        compression, origin = _provenance(version)
        ref = version_ref(version)
        rows[ref] = ReportRow(
            ref=ref,
            compression=compression,
            source=origin,
            accuracy=accuracy,
            test_samples=samples,
            model_bytes=file_bytes(version.model_file),
            weights=stored_weights(version.model_file),
            latency_s=latency[ref].seconds if ref in latency else {},
        )
    for row in rows.values():
        source = rows.get(row.source) if row.source else None
        if source is None:
            continue
        if row.accuracy is not None and source.accuracy is not None:
            row.accuracy_delta = row.accuracy - source.accuracy
        row.size_ratio = row.model_bytes / source.model_bytes
        row.latency_ratio = {
            b: s / source.latency_s[b] for b, s in row.latency_s.items() if b in source.latency_s
        }
    return CompressionReport(
        name=name, rows=list(rows.values()), latency_batches=list(LATENCY_BATCHES)
    )


def _provenance(version: ModelVersion) -> tuple[str, str | None]:
    """The row's compression label and the version it was made from: a compressed version
    names its compression, a fine-tune (`watermark embed --from-model`) says so (it is not
    compressed, but not the original either), anything else is an original."""
    lineage = version.metadata.lineage
    compressed = lineage.get(COMPRESSED_FROM)
    if compressed:
        return str(lineage.get("compression", "?")), str(compressed)
    finetuned = lineage.get(FINETUNED_FROM)
    if finetuned:
        marked = " + watermark" if version.metadata.watermark_id else ""
        return f"fine-tuned{marked}", str(finetuned)
    return "original", None


def format_report(report: CompressionReport) -> str:
    """The report as an aligned text table (latencies in milliseconds)."""
    batches = report.latency_batches
    header = [
        "version", "compression", "source", "accuracy", "Δ acc", "size KiB", "size ratio",
        "weights", *[f"b{b} ms" for b in batches], *[f"b{b} ratio" for b in batches],
    ]  # fmt: skip
    table = [header]
    for row in report.rows:
        ratios = row.latency_ratio or {}
        table.append(
            [
                row.ref,
                row.compression,
                row.source or "-",
                "-" if row.accuracy is None else f"{row.accuracy:.2%}",
                "-" if row.accuracy_delta is None else f"{row.accuracy_delta * 100:+.2f} pt",
                f"{row.model_bytes / 1024:.1f}",
                "-" if row.size_ratio is None else f"{row.size_ratio:.3f}",
                f"{row.weights:,}",
                *[_ms(row.latency_s.get(b)) for b in batches],
                *["-" if b not in ratios else f"{ratios[b]:.2f}" for b in batches],
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    samples = {row.test_samples for row in report.rows if row.test_samples}
    note = f"accuracy on {', '.join(map(str, sorted(samples)))} test images; " if samples else ""
    lines.append(
        f"{note}ONNX Runtime, 1 thread; ratios are against the source row "
        "(size ratio < 1: smaller; latency ratio < 1: faster)"
    )
    if not any(row.source for row in report.rows):  # nothing to compare: say how to get a row
        lines.append(
            f"no compressed version of {report.name} yet: `headrace compress --model "
            f"{report.name} --quant int8` (or --prune l1) makes one"
        )
    return "\n".join(line.rstrip() for line in lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"
