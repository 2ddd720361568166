"""`streams.log_flood.RepeatFilter`: the Kafka client's repeated lines during an outage, cut to
the first of each kind and one a minute with a count; on a clock the test moves."""

from __future__ import annotations

import io
import logging

from streams.log_flood import RepeatFilter, install


def _handlers(repeat: RepeatFilter) -> tuple[logging.Logger, io.StringIO, io.StringIO]:
    """A logger tree like the worker's: two handlers on a parent, records from children."""
    root = logging.getLogger(f"flood-test-{id(repeat)}")
    root.propagate = False
    root.setLevel(logging.DEBUG)
    streams = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(stream) for stream in streams]
    for handler in handlers:
        root.addHandler(handler)
    install(handlers, repeat)
    install(handlers, repeat)  # installing twice changes nothing
    return root, *streams


def test_the_first_of_each_kind_passes_then_one_a_minute_with_the_count() -> None:
    now = [0.0]
    repeat = RepeatFilter(interval_s=60.0, loggers=("aiokafka",), clock=lambda: now[0])
    root, out, spinner = _handlers(repeat)
    repeat.loggers = (f"{root.name}.aiokafka",)
    conn = logging.getLogger(f"{root.name}.aiokafka.client")
    fetcher = logging.getLogger(f"{root.name}.aiokafka.consumer.fetcher")
    ours = logging.getLogger(f"{root.name}.streams.app")
    for second in range(130):  # 25 a second of each, as aiokafka logs with its broker killed
        now[0] = float(second)
        for _ in range(25):
            conn.error("Unable connect to node with id %s: %s", 111, "Connection refused")
            fetcher.error("Failed fetch messages from %s: %s", 111, "NodeNotReadyError")
        if second == 5:
            conn.warning("Marking the coordinator dead (node %s)", 111)  # a new kind: shown
            conn.info("Discovered coordinator %s", 111)  # below WARNING: never counted
            ours.error("stopping: %s", "not a Kafka client line")  # other loggers: untouched
    lines = out.getvalue().splitlines()
    assert lines == [
        "Unable connect to node with id 111: Connection refused",
        "Failed fetch messages from 111: NodeNotReadyError",
        "Marking the coordinator dead (node 111)",
        "Discovered coordinator 111",
        "stopping: not a Kafka client line",
        "Unable connect to node with id 111: Connection refused "
        "[1499 more like this not shown since the last one]",
        "Failed fetch messages from 111: NodeNotReadyError "
        "[1499 more like this not shown since the last one]",
        "Unable connect to node with id 111: Connection refused "
        "[1499 more like this not shown since the last one]",
        "Failed fetch messages from 111: NodeNotReadyError "
        "[1499 more like this not shown since the last one]",
    ]
    assert spinner.getvalue().splitlines() == lines  # every handler got the same lines


def test_lines_formatted_before_logging_are_one_kind_whatever_their_numbers() -> None:
    """kafka-python formats some warnings itself ('Task <Task object at 0x7f..> ran for
    0.140s ...', one per slow step while its broker is frozen): each used to pass as a kind of
    its own. Numbers and addresses do not make another kind."""
    now = [0.0]
    repeat = RepeatFilter(interval_s=60.0, loggers=("kafka",), clock=lambda: now[0])
    root, out, _ = _handlers(repeat)
    repeat.loggers = (f"{root.name}.kafka",)
    selector = logging.getLogger(f"{root.name}.kafka.net.selector")
    for step in range(14):
        now[0] = float(step)
        selector.warning(
            f"Task <kafka.net.selector.Task object at 0x7f7e0{step:x}441e50> ran for "
            f"{0.14 + step / 10:.3f}s (>0.100s threshold). It is blocking the event loop"
        )
    selector.warning("Task %r left RUNNING after step", "t")  # another kind: shown
    assert out.getvalue().splitlines() == [
        "Task <kafka.net.selector.Task object at 0x7f7e00441e50> ran for 0.140s "
        "(>0.100s threshold). It is blocking the event loop",
        "Task 't' left RUNNING after step",
    ]
