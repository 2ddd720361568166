"""Hot reload for stream workers: follow `model-updates` and poll the model repository.

Every worker of a consumer group must reload, so the follower reads
`model-updates` without a group (from the latest record on) and asks the model
manager to sync at once; polling the repository on a timer catches versions
published without an announcement (or while the broker was away).

The follower runs as a Faust task, and a task that raises crashes the whole worker. Its
consumer's start raised `KafkaConnectionError: Unable to bootstrap` when the broker went
away in the seconds after the worker's first assignment (when Faust starts its tasks), and
the worker exited. A Kafka error now makes the follower start again after
`RETRY_S` (one warning per run of failures); the repository poll goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from streams.job_messages import UPDATES_TOPIC, ModelUpdate

log = logging.getLogger(__name__)
RETRY_S = 5.0


async def follow_model_updates(
    bootstrap: str,
    on_update: Callable[[ModelUpdate], Awaitable[None]],
    topic: str = UPDATES_TOPIC,
) -> None:
    """Call `on_update` for every announcement from now on; runs until cancelled."""
    failing = False

    def started() -> None:
        nonlocal failing
        if failing:
            log.info("following %s again", topic)
        failing = False

    while True:
        try:
            await _follow(bootstrap, on_update, topic, started)
        except KafkaError as exc:
            if not failing:
                log.warning(
                    "not following %s (%s); trying again every %g s, and new model versions "
                    "are still found by polling the repository",
                    topic, exc, RETRY_S,
                )  # fmt: skip
            failing = True
            await asyncio.sleep(RETRY_S)
        else:
            return  # pragma: no cover - the consumer's iteration never ends by itself


async def _follow(
    bootstrap: str,
    on_update: Callable[[ModelUpdate], Awaitable[None]],
    topic: str,
    started: Callable[[], None],
) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
    )
    try:  # stopped after a failed start too: else aiokafka logs 'Unclosed AIOKafkaConsumer'
        await consumer.start()
        started()
        async for record in consumer:
            try:
                update = ModelUpdate.model_validate_json(record.value or b"")
            except ValidationError:
                log.warning("ignored a record on %s that is not a model update", topic)
                continue
            log.info("model update: %s version %d", update.model, update.version)
            await on_update(update)
    finally:
        await consumer.stop()
