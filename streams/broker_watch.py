"""Whether Kafka still answers a worker: one log line when it stops, one when it is back.

A stream or ingestion worker (or the training agent) that loses its broker while idle used to
say nothing at all when the broker was frozen (its requests simply wait) and hundreds to
thousands of Kafka client lines a minute when it was killed, none of which says "Kafka is
away". Its consumer already asks the broker all the time (heartbeats, fetches), so the watch
adds no request of its own: `watch_client` routes an aiokafka `AIOKafkaClient.send` (Faust's
consumer) and `watch_kafka_python` a kafka-python client's request path (the agent's consumer
and producer) through a `BrokerWatch`, which notes when a request was first left unanswered
and when an answer (any response, an error code included) came. `check`, called every
`CHECK_INTERVAL_S` (`check_every` on a worker's loop, `check_until` on a thread of its own),
logs one warning once no request has been answered for `silence_s`, and one line when an
answer comes again, with how long Kafka was away.

`silence_s` must exceed the longest time a healthy broker may hold a request, with one
exception: a JoinGroup is held until every member of the group has joined, up to the group's
rebalance timeout (10 s for the stream workers, `streams.faust_app`; up to an hour for the
training agents, whose rebalance timeout is their max_poll_interval and whose other members
may be busy with a long job). A held JoinGroup is therefore not counted as unanswered; its
answer or failure still counts. A broker that freezes during a join is reported once the
JoinGroup times out and the client's next request goes unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError

from headrace.settings import BROKER_SILENCE_S

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
JOIN_GROUP_API_KEY = 11
"""Kafka's JoinGroup request (the same key in aiokafka's and kafka-python's request classes)."""


def held_by_the_group(request: Any) -> bool:
    """Whether a healthy broker may hold `request` for as long as its group takes to rebalance
    (a JoinGroup): its wait says nothing about whether Kafka answers."""
    return getattr(request, "API_KEY", None) == JOIN_GROUP_API_KEY


class BrokerWatch:
    """When a worker's requests to Kafka were last answered; thread-safe (the Kafka clients
    run on threads of their own, `check` on the worker's loop or another thread)."""

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

    async def send_watched(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not held_by_the_group(request):
            watch.asked()
        try:
            response = await send(node_id, request, *args, **kwargs)
        except KafkaError as exc:
            watch.failed(exc)
            raise
        watch.answered()
        return response

    client.send = send_watched


def watch_kafka_python(client: Any, watch: BrokerWatch) -> bool:
    """Route the requests of `client` (a kafka-python `KafkaConsumer` or `KafkaProducer`)
    through `watch`. Every request of kafka-python 3 goes through its connection manager's
    `send`, which returns a future settled by the answer or by the failure (refused, timed
    out, ...); the clients keep their manager private, hence the attributes read here. False,
    with a warning, for a client without one (kafka-python 2): it is not watched."""
    sender = getattr(client, "_sender", None)  # a producer's client sits in its sender thread
    inner = getattr(sender if sender is not None else client, "_client", None)
    manager = getattr(inner, "_manager", None)
    if manager is None:
        log.warning(
            "this %s keeps no connection manager (kafka-python 3 does): Kafka going away "
            "will not be reported by the %s",
            type(client).__name__, watch.process,
        )  # fmt: skip
        return False
    send = manager.send

    def send_watched(request: Any, *args: Any, **kwargs: Any) -> Any:
        if not request.expect_response():  # settled at once, with nothing from the broker
            return send(request, *args, **kwargs)
        if not held_by_the_group(request):
            watch.asked()
        future = send(request, *args, **kwargs)
        future.add_callback(lambda _response: watch.answered())
        future.add_errback(watch.failed)
        return future

    manager.send = send_watched
    return True


def check_every(loop: asyncio.AbstractEventLoop, watch: BrokerWatch) -> None:
    """Run `watch.check` every `CHECK_INTERVAL_S` on `loop` for as long as it runs."""

    def tick() -> None:
        watch.check()
        loop.call_later(CHECK_INTERVAL_S, tick)

    loop.call_later(CHECK_INTERVAL_S, tick)


def check_until(stop: threading.Event, watch: BrokerWatch) -> threading.Thread:
    """Run `watch.check` every `CHECK_INTERVAL_S` on a daemon thread until `stop` is set (for
    a worker without an event loop, whose own loop may block while Kafka is away)."""

    def run() -> None:
        while not stop.wait(CHECK_INTERVAL_S):
            watch.check()

    thread = threading.Thread(target=run, name="broker-watch", daemon=True)
    thread.start()
    return thread
