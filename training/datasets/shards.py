"""Dataset shards on disk: what the ingestion worker writes, what training reads "up to offset X".

Layout: `<data_root>/<dataset>/shards/p<partition>-<first_offset>-<last_offset>.npz`,
one file per partition per flushed batch of the topic `data-<dataset>`. The
name's offsets are the range of topic records the batch consumed (bad records,
sent to the DLQ, included), so the files of a partition tell how far ingestion
got: its *coverage*, the offset after the last file. Each file holds the valid
records of that range: `images` uint8 (N, C, H, W), `labels` int64, `offsets`
int64 and `record_ids` (unicode). Files are written to a temporary name, synced
and renamed, so a reader never sees half a shard.

Ingestion is at-least-once: after a crash a record may sit in two files.
Readers de-duplicate by (partition, offset), keeping its first copy, and
return rows in (partition, offset) order, so the same selection always gives
the same arrays. A data root belongs to one topic: if the topic is recreated
(the embedded broker forgets its topics when it restarts), ingest into a new
data root.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from headrace.errors import DatasetError
from headrace.settings import load_settings
from training.datasets.base import ImageArrays
from training.datasets.schema import DatasetSchema

DEFAULT_DATA_ROOT = Path("data")  # HEADRACE_DATA_ROOT's default (`headrace.settings`)
SHARDS_FOLDER = "shards"
SHARD_NAME = re.compile(r"^p(\d+)-(\d+)-(\d+)\.npz$")
PARTITION_SHIFT = 40  # (partition, offset) -> one int64 key; offsets stay below 2**40
Lineage = dict[str, str | int | float | bool | None]


SHARD_LINEAGE_KEYS = ("data_source", "data_up_to_offset", "data_records", "data_shard_files")
"""The lineage keys of a version trained on shards (`ShardSelection.lineage`)."""


class ShardSource(BaseModel):
    """Train on ingested shards instead of the dataset's own files (`TrainConfig.data_source`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["shards"] = "shards"
    root: Path | None = Field(
        default=None,
        description="Data root holding <dataset>/shards; None = the process's data root "
        "(HEADRACE_DATA_ROOT, else ./data).",
    )
    up_to_offset: dict[int, int] | None = Field(
        default=None,
        description="Partition -> offset bound (exclusive): only these partitions, only records "
        "below the bound. None = every partition, everything ingested so far.",
    )

    @field_validator("up_to_offset")
    @classmethod
    def _bounds(cls, value: dict[int, int] | None) -> dict[int, int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one partition, e.g. {0: 500}, or leave it unset")
        for partition, offset in value.items():
            if partition < 0 or offset < 0:
                raise ValueError(f"partition {partition} and offset {offset} must be >= 0")
        return dict(sorted(value.items()))

    def resolved_root(self) -> Path:
        """`root`, or the process's data root (HEADRACE_DATA_ROOT, else ./data) when unset."""
        return self.root if self.root is not None else load_settings().data_root

    @classmethod
    def from_lineage(cls, lineage: Lineage, root: Path | None = None) -> ShardSource | None:
        """The selection a published version trained on (`ShardSelection.lineage` recorded it),
        read from `root`; None for a version trained on the dataset's files."""
        if lineage.get("data_source") != "shards":
            return None
        bounds = json.loads(str(lineage.get("data_up_to_offset") or "{}"))
        return cls(root=root, up_to_offset={int(p): int(b) for p, b in bounds.items()} or None)


def unread_root(lineage: Lineage, what: str) -> str | None:
    """Why a --data-root given for the published version `what` (e.g. `m:2`) would go unread:
    it was trained on its dataset's files, not on ingested shards. None if it read shards."""
    if lineage.get("data_source") == "shards":
        return None
    dataset = lineage.get("dataset") or "digits"
    return (
        f"--data-root: {what} was trained on the {dataset} dataset's files, not on ingested "
        "shards, so no data root is read; leave --data-root out"
    )


def shards_dir(root: Path, dataset: str) -> Path:
    """Where the shards of `dataset` live under a data root."""
    return Path(root) / dataset / SHARDS_FOLDER


@dataclass(frozen=True)
class ShardFile:
    """One shard file and the topic range it covers."""

    path: Path
    partition: int
    first_offset: int
    last_offset: int


def shard_name(partition: int, first_offset: int, last_offset: int) -> str:
    return f"p{partition}-{first_offset}-{last_offset}.npz"


def list_shards(folder: Path) -> list[ShardFile]:
    """The shard files in `folder` (temporary files ignored), by partition and offsets."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = SHARD_NAME.match(path.name)
        if match:
            partition, first, last = (int(g) for g in match.groups())
            found.append(ShardFile(path, partition, first, last))
    return sorted(found, key=lambda s: (s.partition, s.first_offset, s.last_offset))


def remove_temporaries(folder: Path, partition: int) -> int:
    """Delete half-written shards of `partition` a killed writer left behind; how many."""
    stale = list(folder.glob(f".p{partition}-*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def coverage(shards: Sequence[ShardFile]) -> dict[int, int]:
    """Partition -> the offset after the last record a shard covers."""
    covered: dict[int, int] = {}
    for shard in shards:
        covered[shard.partition] = max(covered.get(shard.partition, 0), shard.last_offset + 1)
    return dict(sorted(covered.items()))


def write_shard(
    folder: Path,
    partition: int,
    first_offset: int,
    last_offset: int,
    images: np.ndarray,
    labels: np.ndarray,
    offsets: np.ndarray,
    record_ids: Sequence[str],
) -> ShardFile:
    """Write one shard atomically (temporary file, fsync, rename); it may hold no rows."""
    if not 0 <= first_offset <= last_offset:
        raise ValueError(f"bad offset range {first_offset}..{last_offset}")
    if len(images) and (offsets.min() < first_offset or offsets.max() > last_offset):
        raise ValueError("record offsets outside the shard's range")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / shard_name(partition, first_offset, last_offset)
    temporary = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with temporary.open("wb") as handle:
            np.savez_compressed(
                handle,
                images=np.ascontiguousarray(images, dtype=np.uint8),
                labels=np.asarray(labels, dtype=np.int64),
                offsets=np.asarray(offsets, dtype=np.int64),
                record_ids=np.asarray(list(record_ids), dtype=str),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return ShardFile(final, partition, first_offset, last_offset)


@dataclass(frozen=True)
class ShardRows:
    """De-duplicated rows of shards, in (partition, offset) order."""

    images: np.ndarray
    labels: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray
    record_ids: np.ndarray
    duplicates: int  # rows dropped because an earlier shard held the same (partition, offset)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_shard(shard: ShardFile, schema: DatasetSchema) -> dict[str, np.ndarray]:
    """One shard's arrays, checked against the dataset schema; `DatasetError` names a bad file."""
    try:
        with np.load(shard.path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("images", "labels", "offsets", "record_ids")}
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(
            f"shard {shard.path.name} is unreadable ({exc}); delete it and restart "
            "`headrace data ingest` from an earlier consumer offset"
        ) from None
    rows = len(arrays["labels"])
    images = arrays["images"]
    problems = []
    if images.dtype != np.uint8 or images.shape != (rows, *schema.shape):
        problems.append(f"images {images.dtype} {images.shape}, expected uint8 (N, {schema.shape})")
    if len(arrays["offsets"]) != rows or len(arrays["record_ids"]) != rows:
        problems.append("labels, offsets and record ids differ in length")
    elif rows and (arrays["labels"].min() < 0 or arrays["labels"].max() >= schema.num_classes):
        problems.append(f"labels outside 0..{schema.num_classes - 1}")
    elif rows and (
        arrays["offsets"].min() < shard.first_offset or arrays["offsets"].max() > shard.last_offset
    ):
        problems.append("offsets outside the range in its name")
    if problems:
        raise DatasetError(
            f"shard {shard.path.name} does not fit {schema.name}: {'; '.join(problems)}"
        )
    return arrays


def read_rows(
    folder: Path, schema: DatasetSchema, bounds: dict[int, int] | None = None
) -> ShardRows:
    """Rows of the shards in `folder`, only partitions in `bounds` and offsets below them
    (every row when `bounds` is None), de-duplicated by (partition, offset)."""
    parts: list[dict[str, np.ndarray]] = []
    for shard in list_shards(folder):
        if bounds is not None and shard.first_offset >= bounds.get(shard.partition, 0):
            continue
        arrays = read_shard(shard, schema)
        if bounds is not None:
            keep = arrays["offsets"] < bounds[shard.partition]
            arrays = {key: value[keep] for key, value in arrays.items()}
        arrays["partitions"] = np.full(len(arrays["labels"]), shard.partition, dtype=np.int64)
        parts.append(arrays)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return ShardRows(
            np.zeros((0, *schema.shape), np.uint8), empty, empty, empty, np.zeros(0, str), 0
        )
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    keys = (joined["partitions"] << PARTITION_SHIFT) | joined["offsets"]
    _, first = np.unique(keys, return_index=True)  # sorted keys, first copy of each
    return ShardRows(
        images=joined["images"][first],
        labels=joined["labels"][first],
        partitions=joined["partitions"][first],
        offsets=joined["offsets"][first],
        record_ids=joined["record_ids"][first],
        duplicates=len(keys) - len(first),
    )


@dataclass(frozen=True)
class ShardSelection:
    """What training on shards used: the rows, the bound per partition and the shard count."""

    rows: ShardRows
    bounds: dict[int, int]
    shards: int

    @property
    def arrays(self) -> ImageArrays:
        return ImageArrays(self.rows.images, self.rows.labels)

    def lineage(self) -> Lineage:
        """Recorded with the published version: enough to select the same records again."""
        return {
            "data_source": "shards",
            "data_up_to_offset": json.dumps({str(p): b for p, b in self.bounds.items()}),
            "data_records": len(self.rows),
            "data_shard_files": self.shards,
        }


def select_shards(dataset: str, schema: DatasetSchema, source: ShardSource) -> ShardSelection:
    """The records `source` selects; refuses bounds beyond what has been ingested."""
    folder = shards_dir(source.resolved_root(), dataset)
    shards = list_shards(folder)
    if not shards:
        raise DatasetError(
            f"no shards of {dataset!r} in {folder}: if they were ingested under another data "
            "root, pass it with --data-root (or HEADRACE_DATA_ROOT); else ingest records first "
            f"with `headrace data ingest --dataset {dataset}`"
        )
    covered = coverage(shards)
    if source.up_to_offset is None:
        bounds = covered
    else:
        bounds = dict(source.up_to_offset)
        short = [
            f"partition {p}: ingested up to offset {covered.get(p, 0)}, below the bound {b}"
            for p, b in bounds.items()
            if covered.get(p, 0) < b
        ]
        if short:
            raise DatasetError(
                "cannot train on records not ingested yet (" + "; ".join(short) + "); wait for "
                "`headrace data ingest` to catch up or lower --up-to-offset "
                "(`headrace data profile --ingested` shows how far each partition got)"
            )
    rows = read_rows(folder, schema, bounds)
    if len(rows) == 0:
        raise DatasetError(
            f"the shards of {dataset!r} hold no records below {bounds}; raise --up-to-offset"
        )
    used = sum(1 for s in shards if s.partition in bounds and s.first_offset < bounds[s.partition])
    return ShardSelection(rows=rows, bounds=bounds, shards=used)
