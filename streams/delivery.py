"""Producing outcomes in two steps: hand them to the producer now, confirm them later.

`send_outcomes` queues every outcome with the Kafka producer and returns a
`PendingOutcomes` without waiting for the broker. Its `confirmed()` waits for the
broker's acknowledgements and sends again what was refused or not acknowledged,
`PRODUCE_ATTEMPTS` times in all, then raises `ProduceFailed` for what still failed.
The stream worker confirms one batch while it runs the next (`streams.app`);
`produce_outcomes` does both steps at once.

A send only appends the record to the producer's buffer, and awaiting a delivery
that is already settled costs nothing, so one coroutine serves a whole batch:
no task per outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from streams.inference import Outcome

log = logging.getLogger(__name__)

PRODUCE_ATTEMPTS = 3
PRODUCE_BACKOFF_S = 0.5

_Item = tuple[Outcome, str | None]  # an outcome and its transactional id (None: none)


class ProduceFailed(Exception):
    """Outcomes could not be produced; their records must not be acked."""


class PendingOutcomes:
    """Outcomes handed to the producer whose acknowledgements are not yet checked."""

    def __init__(self, producer: Any, items: Sequence[_Item], deliveries: list[Any]) -> None:
        self._producer = producer
        self._items = list(items)
        self._deliveries = deliveries

    async def confirmed(self) -> None:
        """Return once the broker acknowledged every outcome; raise `ProduceFailed` if some
        are still refused or unacknowledged after `PRODUCE_ATTEMPTS` sends."""
        pending, deliveries = self._items, self._deliveries
        for attempt in range(1, PRODUCE_ATTEMPTS + 1):
            answers = await _answers(deliveries)
            failed = [item for item, a in zip(pending, answers, strict=True) if a is not None]
            if not failed:
                return
            errors = {repr(a) for a in answers if a is not None}
            log.warning(
                "%d of %d outcomes not produced (attempt %d): %s",
                len(failed), len(pending), attempt, "; ".join(sorted(errors)),
            )  # fmt: skip
            pending = failed
            if attempt == PRODUCE_ATTEMPTS:
                break
            await asyncio.sleep(PRODUCE_BACKOFF_S * attempt)
            deliveries = await _send(self._producer, pending)
        raise ProduceFailed(
            f"{len(pending)} outcomes could not be produced after {PRODUCE_ATTEMPTS} attempts; "
            "check that the broker is reachable and the result topics exist"
        )


async def send_outcomes(
    producer: Any, outcomes: Sequence[Outcome], transactional_ids: Sequence[str] | None = None
) -> PendingOutcomes:
    """Hand every outcome to the producer (with `transactional_ids`, one per outcome, each
    through that transactional producer); the broker's answers are checked by `confirmed()`."""
    if transactional_ids is not None and len(transactional_ids) != len(outcomes):
        raise ValueError(f"{len(transactional_ids)} transactional ids for {len(outcomes)} outcomes")
    ids: Sequence[str | None] = transactional_ids or [None] * len(outcomes)
    items = list(zip(outcomes, ids, strict=True))
    return PendingOutcomes(producer, items, await _send(producer, items))


async def produce_outcomes(
    producer: Any, outcomes: Sequence[Outcome], transactional_ids: Sequence[str] | None = None
) -> None:
    """Produce every outcome and wait for the broker's acknowledgements (retrying a few)."""
    await (await send_outcomes(producer, outcomes, transactional_ids)).confirmed()


async def _send(producer: Any, items: Sequence[_Item]) -> list[Any]:
    """A delivery future per item, or the error that kept it from being queued."""
    deliveries: list[Any] = []
    for outcome, transactional_id in items:
        extra = {"transactional_id": transactional_id} if transactional_id else {}
        try:
            deliveries.append(
                await producer.send(
                    outcome.topic, outcome.key, outcome.value, None, None, outcome.headers, **extra
                )
            )
        except Exception as exc:  # refused before it was queued: counted as not produced
            deliveries.append(exc)
    return deliveries


async def _answers(deliveries: Sequence[Any]) -> list[BaseException | None]:
    """None for each acknowledged delivery, else its error."""
    answers: list[BaseException | None] = []
    for delivery in deliveries:
        if isinstance(delivery, BaseException):
            answers.append(delivery)
            continue
        try:
            await delivery
            answers.append(None)
        except Exception as exc:
            answers.append(exc)
    return answers
