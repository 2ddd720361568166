"""The `--from-shards` / `--up-to-offset` / `--data-root` flags of `headrace train`.

They become `TrainConfig.data_source` (a `training.datasets.shards.ShardSource`):
train on the records `headrace data ingest` wrote, everything ingested so far
or, with `--up-to-offset 0=500,1=480`, only those partitions below those offsets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from headrace.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option(
        "--from-shards",
        is_flag=True,
        help="Train on the shards `headrace data ingest` wrote instead of the dataset's files.",
    ),
    click.option(
        "--up-to-offset",
        "up_to_offset",
        multiple=True,
        help="With shards: PARTITION=OFFSET[,...] -- only these partitions, records below these "
        "offsets (implies --from-shards; `headrace data profile --ingested` prints them).",
    ),
    click.option(
        "--data-root",
        type=click.Path(path_type=Path),
        help="With shards: the data root (default HEADRACE_DATA_ROOT or ./data).",
    ),
]


def shard_options(command: F) -> F:
    """Add the flags above to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def parse_bounds(values: tuple[str, ...]) -> dict[int, int]:
    """`0=500,1=480` (one or more times) -> {0: 500, 1: 480}; `ConfigError` says what is wrong."""
    bounds: dict[int, int] = {}
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            partition, sep, offset = item.partition("=")
            if not sep or not partition.strip().isdecimal() or not offset.strip().isdecimal():
                raise ConfigError(
                    f"--up-to-offset {item!r}: write PARTITION=OFFSET, e.g. 0=500,1=480"
                )
            if int(partition) in bounds:  # the last one won: a typo trained on other records
                raise ConfigError(
                    f"--up-to-offset gives partition {int(partition)} twice; give each "
                    "partition one bound"
                )
            bounds[int(partition)] = int(offset)
    return bounds


def shard_settings(
    from_shards: bool,
    up_to_offset: tuple[str, ...],
    data_root: Path | None,
    default_root: Path,
    data_dir: Path | None = None,
) -> dict[str, Any] | None:
    """The `data_source` section for `TrainConfig`, or None to train on the dataset's files.

    `data_dir` is the --data-dir flag: shards and a dataset folder exclude each other, and a
    flag the choice would not read is refused (`train --data-root R` trained on the files)."""
    if not from_shards and not up_to_offset:
        if data_root is not None:
            raise ConfigError(
                "--data-root only applies with --from-shards (or --up-to-offset): without "
                "them training reads the dataset's files (--data-dir)"
            )
        return None
    if data_dir is not None:
        raise ConfigError(
            "--data-dir is not read with --from-shards: training reads the ingested shards "
            "under --data-root; leave --data-dir out"
        )
    return {
        "kind": "shards",
        "root": data_root or default_root,
        "up_to_offset": parse_bounds(up_to_offset) if up_to_offset else None,
    }
