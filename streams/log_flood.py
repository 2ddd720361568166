"""Kafka client log lines repeated during an outage, cut to the first of each kind a minute.

With its broker killed (connection refused), a stream worker logged about 6,850 aiokafka
lines a minute ("Unable connect to node with id 111", "Unable to update metadata",
"Failed fetch messages", "Group Coordinator Request failed", each ~25 times a second) and an
ingestion worker about 4,600: the one line that says what happened (`streams.broker_watch`)
drowned; the training agent's kafka-python about 130 in 30 s. `RepeatFilter` lets through
the first record of each kind (logger, level and message template, not its arguments; numbers
and addresses masked, for clients that format a message before logging it, as kafka-python's
"Task <... at 0x7f..> ran for 0.140s" does) and then at most one per `interval_s`; that one
says how many like it were left out since the last. Only the Kafka clients' records (aiokafka,
kafka-python) at WARNING and above are counted; every other record passes untouched.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

REPEAT_INTERVAL_S = 60.0
KAFKA_LOGGERS = ("aiokafka", "kafka")
_DECIDED = "_headrace_repeat_filter"  # a record's verdict, so that every handler agrees
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")  # what differs between lines of one kind


@dataclass
class _Kind:
    passed_at: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Passes the first record of each kind, then one per `interval_s` with the count of those
    suppressed in between. One instance may sit on several handlers: each record is decided
    once."""

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        loggers: tuple[str, ...] = KAFKA_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s, self.loggers, self._clock = interval_s, loggers, clock
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._lock = threading.Lock()

    def _watched(self, record: logging.LogRecord) -> bool:
        name = record.name
        return record.levelno >= logging.WARNING and any(
            name == prefix or name.startswith(prefix + ".") for prefix in self.loggers
        )

    def filter(self, record: logging.LogRecord) -> bool:
        verdict = getattr(record, _DECIDED, None)
        if verdict is None:
            verdict = self._decide(record) if self._watched(record) else True
            setattr(record, _DECIDED, verdict)
        return bool(verdict)

    def _decide(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, _VARYING.sub("#", str(record.msg)))
        now = self._clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                self._kinds[key] = _Kind(passed_at=now)
                return True
            if now - kind.passed_at < self.interval_s:
                kind.suppressed += 1
                return False
            suppressed, kind.passed_at, kind.suppressed = kind.suppressed, now, 0
        if suppressed:
            record.msg = (
                f"{record.getMessage()} [{suppressed} more like this not shown since the last one]"
            )
            record.args = ()
        return True


def install(handlers: Iterable[logging.Handler], repeat_filter: RepeatFilter) -> None:
    """Put `repeat_filter` on each of `handlers` (records propagate to the root's handlers,
    not through its filters, so a filter on a logger would miss its children's records)."""
    for handler in handlers:
        if repeat_filter not in handler.filters:
            handler.addFilter(repeat_filter)
