"""`streams.eager` and the stream consumer's message delivery built on it: a delivery that
need not wait runs inline; one that waits is raced against a rebalance as Faust does."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

from streams import eager
from streams.faust_app import new_app


async def _answer() -> int:
    return 42


def test_a_coroutine_that_never_waits_finishes_in_start() -> None:
    assert eager.start(_answer()) == (True, 42)


def test_an_error_before_the_first_wait_propagates_from_start() -> None:
    async def broken() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        eager.start(broken())


def test_a_waiting_coroutine_is_finished_by_awaiting_it_with_what_it_waited_for() -> None:
    async def scenario() -> tuple[str, list[str]]:
        steps: list[str] = []
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def two_steps() -> str:
            steps.append("before")
            got = await gate
            steps.append("after")
            return got.upper()

        finished, pending = eager.start(two_steps())
        assert not finished and steps == ["before"]
        asyncio.get_running_loop().call_later(0.01, gate.set_result, "woken")
        return await asyncio.ensure_future(pending), steps

    assert asyncio.run(scenario()) == ("WOKEN", ["before", "after"])


def test_an_error_after_resuming_propagates() -> None:
    async def scenario() -> None:
        async def fails_later() -> None:
            await asyncio.sleep(0)
            raise KeyError("late")

        finished, pending = eager.start(fails_later())
        assert not finished
        await pending

    with pytest.raises(KeyError, match="late"):
        asyncio.run(scenario())


def test_cancelling_the_task_that_finishes_it_cancels_the_coroutine() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []

        async def waits_forever() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            finally:
                seen.append("cleaned up")

        finished, pending = eager.start(waits_forever())
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(scenario()) == ["cancelled", "cleaned up"]


def test_closing_an_abandoned_coroutine_runs_its_cleanup() -> None:
    seen: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            seen.append("cleaned up")

    async def scenario() -> None:
        finished, pending = eager.start(waits())
        assert not finished
        pending.close()

    asyncio.run(scenario())
    assert seen == ["cleaned up"]


# -- the consumer's delivery (`streams.faust_app._Consumer.wait_first`) ---------------------------


def _consumer() -> Any:
    app = new_app("test-eager-delivery", ["kafka://127.0.0.1:1"])  # never started: no broker
    return app.consumer


def test_a_delivery_with_room_runs_inline_and_leaves_no_unawaited_coroutine() -> None:
    async def scenario() -> tuple[Any, bool]:
        consumer = _consumer()
        caller = asyncio.current_task()
        ran_in: list[Any] = []

        async def deliver() -> str:
            ran_in.append(asyncio.current_task())
            return "delivered"

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "coroutine ... was never awaited" fails the test
            result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        return result, ran_in == [caller]

    result, inline = asyncio.run(scenario())
    assert result.results == ["delivered"] and not result.stopped
    assert inline, "the delivery ran in a task of its own"


def test_a_delivery_that_must_wait_still_finishes() -> None:
    async def scenario() -> tuple[list[Any], int]:
        consumer = _consumer()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(1)

        async def deliver() -> str:
            await buffer.put(2)
            return "delivered"

        asyncio.get_running_loop().call_later(0.02, buffer.get_nowait)  # the agent takes one
        result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
        return result.results, buffer.qsize()

    assert asyncio.run(scenario()) == (["delivered"], 1)


def test_a_rebalance_abandons_a_delivery_stuck_on_a_full_buffer() -> None:
    async def scenario() -> tuple[Any, int, list[str]]:
        consumer = _consumer()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(1)
        seen: list[str] = []

        async def deliver() -> None:
            try:
                await buffer.put(2)
            except asyncio.CancelledError:
                seen.append("abandoned")
                raise

        asyncio.get_running_loop().call_later(0.02, consumer.stop_flow)  # a rebalance begins
        result = await asyncio.wait_for(
            consumer.wait_first(deliver(), consumer.suspend_flow.wait()), timeout=5
        )
        await asyncio.sleep(0)  # let the cancelled delivery run its handler
        return result.done, buffer.qsize(), seen

    done, queued, seen = asyncio.run(scenario())
    assert len(done) == 1 and "Event.wait" in repr(done[0])  # the rebalance won the race
    assert queued == 1 and seen == ["abandoned"]
