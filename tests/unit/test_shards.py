"""Dataset shards: atomic files, de-duplication by (partition, offset), "up to offset X"
selections, training configs and job specs that name them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headrace.commands.shard_options import parse_bounds, shard_settings
from headrace.errors import ConfigError, DatasetError
from training.datasets import load_splits
from training.datasets.schema import SCHEMAS
from training.datasets.shards import (
    ShardSource,
    coverage,
    list_shards,
    read_rows,
    remove_temporaries,
    select_shards,
    shards_dir,
    write_shard,
)

DIGITS = SCHEMAS["digits"]


def rows(offsets: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Images whose first pixel encodes the offset, labels offset % 10, ids `o<offset>`."""
    images = np.random.default_rng(seed).integers(0, 256, (len(offsets), *DIGITS.shape), np.uint8)
    images[:, 0, 0, 0] = np.asarray(offsets) % 256
    labels = np.asarray(offsets) % 10
    return images, labels, np.asarray(offsets), [f"o{o}" for o in offsets]


def write(folder: Path, partition: int, first: int, last: int, offsets: list[int]) -> None:
    write_shard(folder, partition, first, last, *rows(offsets))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Partition 0: offsets 0..29 in two shards that overlap on 10..14 (a re-ingested range),
    offset 7 refused (not in any shard); partition 1: offsets 0..9."""
    shards = shards_dir(tmp_path, "digits")
    write(shards, 0, 0, 14, [o for o in range(15) if o != 7])
    write(shards, 0, 10, 29, list(range(10, 30)))
    write(shards, 1, 0, 9, list(range(10)))
    return shards


def test_shards_are_renamed_into_place_and_listed_in_order(folder: Path) -> None:
    names = [s.path.name for s in list_shards(folder)]
    assert names == ["p0-0-14.npz", "p0-10-29.npz", "p1-0-9.npz"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temporary files left
    (folder / ".p0-30-40.npz.abcd.tmp").write_bytes(b"half a shard")  # a killed writer's
    (folder / ".p1-10-12.npz.abcd.tmp").write_bytes(b"half a shard")
    assert len(list_shards(folder)) == 3
    assert remove_temporaries(folder, 0) == 1
    assert [p.name for p in folder.glob(".*.tmp")] == [".p1-10-12.npz.abcd.tmp"]
    assert coverage(list_shards(folder)) == {0: 30, 1: 10}


def test_rows_are_deduplicated_by_partition_and_offset(folder: Path) -> None:
    read = read_rows(folder, DIGITS)
    assert len(read) == 29 + 10 and read.duplicates == 5
    assert read.partitions.tolist() == [0] * 29 + [1] * 10
    assert read.offsets.tolist() == [o for o in range(30) if o != 7] + list(range(10))
    assert read.labels.tolist() == [o % 10 for o in read.offsets]
    assert read.images[:, 0, 0, 0].tolist() == read.offsets.tolist()  # each row is its own record
    assert read.record_ids[:3].tolist() == ["o0", "o1", "o2"]


def test_bounds_select_partitions_and_offsets(folder: Path) -> None:
    read = read_rows(folder, DIGITS, {0: 12})
    assert read.offsets.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert set(read.partitions.tolist()) == {0}
    assert len(read_rows(folder, DIGITS, {0: 0, 1: 3})) == 3


def test_a_selection_records_its_bounds_and_count(folder: Path) -> None:
    root = folder.parent.parent
    everything = select_shards("digits", DIGITS, ShardSource(root=root))
    assert everything.bounds == {0: 30, 1: 10} and len(everything.rows) == 39
    part = select_shards("digits", DIGITS, ShardSource(root=root, up_to_offset={1: 5, 0: 20}))
    lineage = part.lineage()
    assert lineage["data_source"] == "shards"
    assert json.loads(str(lineage["data_up_to_offset"])) == {"0": 20, "1": 5}
    assert lineage["data_records"] == 19 + 5 and lineage["data_shard_files"] == 3
    again = ShardSource.from_lineage({"dataset": "digits", **lineage}, root)
    assert again == ShardSource(root=root, up_to_offset={0: 20, 1: 5})
    assert (
        select_shards("digits", DIGITS, again).rows.offsets.tolist() == part.rows.offsets.tolist()
    )
    assert ShardSource.from_lineage({"dataset": "digits", "seed": 0}, root) is None


def test_bounds_beyond_what_was_ingested_are_refused(folder: Path) -> None:
    root = folder.parent.parent
    with pytest.raises(
        DatasetError, match="partition 1: ingested up to offset 10, below the bound"
    ):
        select_shards("digits", DIGITS, ShardSource(root=root, up_to_offset={0: 30, 1: 11}))
    with pytest.raises(DatasetError, match="headrace data ingest --dataset mnist"):
        select_shards("mnist", SCHEMAS["mnist"], ShardSource(root=root))


def test_a_shard_of_another_shape_is_refused_by_name(tmp_path: Path) -> None:
    folder = shards_dir(tmp_path, "cifar10")
    write(folder, 0, 0, 1, [0, 1])
    with pytest.raises(DatasetError, match="p0-0-1.npz does not fit cifar10"):
        read_rows(folder, SCHEMAS["cifar10"])


def test_training_splits_come_from_the_selected_shards(tmp_path: Path) -> None:
    folder = shards_dir(tmp_path, "digits")
    offsets = list(range(120))
    write(folder, 0, 0, 119, offsets)
    source = ShardSource(root=tmp_path, up_to_offset={0: 100})
    splits = load_splits("digits", seed=0, source=source)
    firsts = np.concatenate([s.images[:, 0, 0, 0] for s in (splits.train, splits.val, splits.test)])
    assert sorted(firsts.tolist()) == list(range(100))  # exactly the selected records, once each
    assert splits.lineage["data_records"] == 100
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    again = load_splits("digits", seed=0, source=source)
    assert np.array_equal(again.train.images, splits.train.images)  # reproducible
    with pytest.raises(DatasetError, match="only 5 records"):
        load_splits("digits", source=ShardSource(root=tmp_path, up_to_offset={0: 5}))


def test_train_config_and_job_spec_take_a_shard_source(tmp_path: Path) -> None:
    from streams.job_runner import JobRunner, JobRunnerConfig
    from training.config import TrainConfig
    from training.job_spec import parse_job_spec

    config = TrainConfig.model_validate(  # mnist needs no data_dir when it comes from shards
        {"dataset": "mnist", "data_source": {"up_to_offset": {"0": 5}}}
    )
    assert config.data_source is not None and config.data_source.up_to_offset == {0: 5}
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainConfig.model_validate({"data_source": {"up_to_offset": {0: -1}}})
    spec = parse_job_spec({"model": "lenet5", "data_source": {"kind": "shards"}, "job_id": "j"})
    runner = JobRunner(
        JobRunnerConfig(repository=tmp_path, runs_dir=tmp_path, data_root=Path("rel")),
        lambda *a: None,  # type: ignore[arg-type]
        lambda e: None,
        lambda u: None,
    )
    source = runner.train_config(spec).data_source
    assert source is not None and source.root == Path("rel").resolve()  # absolute for Ray


def test_command_line_bounds() -> None:
    assert parse_bounds(("0=500,1=480", "3=7")) == {0: 500, 1: 480, 3: 7}
    with pytest.raises(ConfigError, match="PARTITION=OFFSET"):
        parse_bounds(("0:500",))
    with pytest.raises(ConfigError, match="partition 0 twice"):  # the last bound won
        parse_bounds(("0=10,1=5", "0=20"))
    assert shard_settings(False, (), None, Path("d")) is None
    assert shard_settings(True, (), None, Path("d")) == {
        "kind": "shards",
        "root": Path("d"),
        "up_to_offset": None,
    }
    assert shard_settings(False, ("1=2",), Path("x"), Path("d"))["up_to_offset"] == {1: 2}  # type: ignore[index]
