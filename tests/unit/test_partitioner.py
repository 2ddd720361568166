"""`streams.partitioner`: the same partition as aiokafka's default (Java-compatible)
partitioner for every key; keyless records to an available partition."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.faust_app import new_app
from streams.partitioner import KeyPartitioner, key_partition


@pytest.mark.parametrize("partition_count", [1, 3, 4, 7, 64])
def test_keys_land_where_aiokafka_puts_them(partition_count: int) -> None:
    rng = random.Random(partition_count)
    partitions = list(range(partition_count))
    reference, ours = DefaultPartitioner(), KeyPartitioner()
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(0, 80))  # every tail length, empty keys too
        assert ours(key, partitions, partitions) == reference(key, partitions, partitions)


def test_known_placements_of_the_java_client() -> None:
    # where the Java client puts these keys among 1,000 partitions (kafka-python's tests)
    partitions = list(range(1000))
    keys = [b"", b"a", b"ab", b"abc", b"123456789", b"\x00 "]
    assert [key_partition(k, partitions) for k in keys] == [681, 524, 434, 107, 566, 742]


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    partitioner = KeyPartitioner()
    assert {partitioner(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert partitioner(None, [5], []) == 5


def test_stream_apps_use_it() -> None:
    app = new_app("partitioner-test", ["kafka://127.0.0.1:9"])
    assert isinstance(app.conf.producer_partitioner, KeyPartitioner)
