"""`headrace.gc_pauses`: startup objects leave the collector's walk; the youngest generation
is collected less often; later garbage is freed; a timed window runs without collections."""

from __future__ import annotations

import gc
import weakref

from headrace.gc_pauses import YOUNG_GENERATION_THRESHOLD, collector_paused, prepare_for_serving


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_startup_objects_are_frozen_and_later_cycles_still_collected() -> None:
    before, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        prepare_for_serving()
        assert gc.get_freeze_count() > before
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *thresholds[1:])
        node = Node()
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_young_collections_wait_for_the_raised_threshold() -> None:
    thresholds = gc.get_threshold()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        prepare_for_serving()
        gc.callbacks.append(count)
        nodes = [Node() for _ in range(YOUNG_GENERATION_THRESHOLD // 2)]  # 700 would collect
        assert collections == []
        nodes += [Node() for _ in range(YOUNG_GENERATION_THRESHOLD)]
        assert collections, "no young collection after the threshold's worth of new objects"
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_no_collection_runs_inside_a_paused_window_and_collecting_resumes_after() -> None:
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        with collector_paused():
            assert not gc.isenabled()
            collections.clear()  # the one collection made on the way in
            nodes = [Node() for _ in range(50_000)]  # far past the youngest threshold (700)
            assert collections == []
        assert gc.isenabled()
        ref = weakref.ref(nodes[0])
        del nodes
        gc.collect()
        assert ref() is None
    finally:
        gc.callbacks.remove(count)


def test_a_paused_window_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
