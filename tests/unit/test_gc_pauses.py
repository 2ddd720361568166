"""`headrace.gc_pauses`: startup objects leave the collector's walk; later garbage is freed."""

from __future__ import annotations

import gc
import weakref

from headrace.gc_pauses import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_startup_objects_are_frozen_and_later_cycles_still_collected() -> None:
    before = gc.get_freeze_count()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > before
        node = Node()
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
