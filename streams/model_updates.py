"""Hot reload for stream workers: follow `model-updates` and poll the model repository.

Every worker of a consumer group must reload, so the follower reads
`model-updates` without a group (from the latest record on) and asks the model
manager to sync at once; polling the repository on a timer catches versions
published without an announcement (or while the broker was away).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from streams.job_messages import UPDATES_TOPIC, ModelUpdate

log = logging.getLogger(__name__)


async def follow_model_updates(
    bootstrap: str,
    on_update: Callable[[ModelUpdate], Awaitable[None]],
    topic: str = UPDATES_TOPIC,
) -> None:
    """Call `on_update` for every announcement from now on; runs until cancelled."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    try:
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
