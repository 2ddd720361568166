"""Whether Kafka still answers a Faust worker: one log line when it stops, one when it is back.

A stream or ingestion worker that loses its broker while idle used to say nothing at all when
the broker was frozen (its requests simply wait; one line per minute) and thousands of
aiokafka lines a minute when it was killed, none of which says "Kafka is away". Its
consumer already asks the broker all the time (a heartbeat every 0.3 s, fetches), so the
watch adds no request of its own: `watch_client` routes the consumer's `AIOKafkaClient.send`
through a `BrokerWatch`, which notes when a request was first left unanswered and when an
answer (any response, an error code included) came. `check`, called every `CHECK_INTERVAL_S`
on the worker's loop, logs one warning once no request has been answered for `silence_s`,
and one line when an answer comes again, with how long Kafka was away.

`silence_s` must exceed the longest time a healthy broker may hold a request: a JoinGroup
waits for the group's other members up to the rebalance timeout (10 s, `streams.app`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

BROKER_SILENCE_S = 15.0  # above the 10 s a JoinGroup may be held by a healthy broker
CHECK_INTERVAL_S = 1.0


class BrokerWatch:
    """When a worker's requests to Kafka were last answered; thread-safe (aiokafka's consumer
    runs on a thread of its own, `check` on the worker's loop)."""

    def __init__(
        self,
        bootstrap: str,
        process: str,
        silence_s: float = BROKER_SILENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if silence_s <= 0:
            raise ValueError("silence_s must be positive")
        self.bootstrap, self.process, self.silence_s = bootstrap, process, silence_s
        self._clock = clock
        self._lock = threading.Lock()
        self._asking_since: float | None = None  # first request not answered since an answer
        self._last_error = ""
        self._away_since: float | None = None  # set while an outage has been reported
        self._answered_at: float | None = None  # the answer that ended the outage
        self.outages = 0

    def asked(self) -> None:
        """A request is being sent."""
        with self._lock:
            if self._asking_since is None:
                self._asking_since = self._clock()

    def failed(self, exc: BaseException) -> None:
        """A request failed without an answer (connection refused, timed out, ...)."""
        name, text = type(exc).__name__, str(exc)
        with self._lock:  # aiokafka's errors start with their name already
            self._last_error = text if text.startswith(name) else f"{name}: {text}"

    def answered(self) -> None:
        """The broker answered a request."""
        with self._lock:
            self._asking_since = None
            self._last_error = ""
            if self._away_since is not None and self._answered_at is None:
                self._answered_at = self._clock()

    @property
    def reachable(self) -> bool:
        """False from the reported start of an outage until `check` reports its end."""
        return self._away_since is None

    def unanswered_s(self) -> float:
        """Seconds the oldest request not answered since the last answer has waited (0 if
        every request was answered)."""
        asking_since = self._asking_since
        return 0.0 if asking_since is None else max(0.0, self._clock() - asking_since)

    def check(self) -> None:
        """Log the start of an outage (no answer for `silence_s`) or its end, once each."""
        with self._lock:
            now = self._clock()
            if self._away_since is None:
                since = self._asking_since
                if since is None or now - since < self.silence_s:
                    return
                self._away_since = since
                self.outages += 1
                error = self._last_error or "requests are not answered"
                silent_s = now - since
            else:
                if self._answered_at is None:
                    return
                away_s = self._answered_at - self._away_since
                self._away_since = self._answered_at = None
                silent_s = -1.0
        if silent_s >= 0:
            log.warning(
                "Kafka at %s has not answered the %s for %.0f s (last error: %s). It keeps "
                "its place and goes on by itself once Kafka answers; check the broker.",
                self.bootstrap, self.process, silent_s, error,
            )  # fmt: skip
        else:  # a warning too: at the default log level an INFO line would not be seen
            log.warning("Kafka at %s answers again after %.0f s away", self.bootstrap, away_s)


def watch_client(client: Any, watch: BrokerWatch) -> None:
    """Route `client.send` (an aiokafka `AIOKafkaClient`'s) through `watch`."""
    send = client.send

    async def send_watched(*args: Any, **kwargs: Any) -> Any:
        watch.asked()
        try:
            response = await send(*args, **kwargs)
        except KafkaError as exc:
            watch.failed(exc)
            raise
        watch.answered()
        return response

    client.send = send_watched


def check_every(loop: asyncio.AbstractEventLoop, watch: BrokerWatch) -> None:
    """Run `watch.check` every `CHECK_INTERVAL_S` on `loop` for as long as it runs."""

    def tick() -> None:
        watch.check()
        loop.call_later(CHECK_INTERVAL_S, tick)

    loop.call_later(CHECK_INTERVAL_S, tick)
