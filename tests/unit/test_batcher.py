"""The dynamic batcher: batching rules, bounded queue, deadlines, cancellation, errors, close.

Event-driven: the model's `execute` can block on a `threading.Event` the test
controls, so queues fill deterministically while the only slot is busy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from headrace.errors import (
    BackPressure,
    ConfigError,
    DeadlineExceeded,
    HeadraceError,
    InvalidInput,
    ShuttingDown,
)
from serving.batcher import BatchResult, BatchTiming, DynamicBatcher

pytestmark = pytest.mark.unit

WAIT_S = 5.0  # upper bound for anything awaited; tests finish far sooner


class Model:
    """`y = 2 * x`, recording every batch; blocks while `gate` is clear."""

    def __init__(self, blocked: bool = False, fail: BaseException | None = None) -> None:
        self.gate = threading.Event()
        if not blocked:
            self.gate.set()
        self.fail = fail
        self.batches: list[np.ndarray] = []  # the `x` of every executed batch
        self._started = threading.Condition()
        self.started = 0

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._started:
            self.started += 1
            self._started.notify_all()
        assert self.gate.wait(WAIT_S), "test never released the model"
        self.batches.append(inputs["x"].copy())
        if self.fail is not None:
            raise self.fail
        return {"y": inputs["x"] * 2}

    async def wait_started(self, n: int) -> None:
        """Wait until `execute` has been entered `n` times."""

        def wait() -> bool:
            with self._started:
                return self._started.wait_for(lambda: self.started >= n, WAIT_S)

        assert await asyncio.to_thread(wait), f"execute started {self.started} times, not {n}"

    @property
    def sizes(self) -> list[int]:
        return [len(x) for x in self.batches]

    @property
    def seen(self) -> set[float]:
        return {float(v) for x in self.batches for v in x.ravel()}


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def row(value: float, rows: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=np.float32)}


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (it changes as other tasks run)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def occupy(batcher: DynamicBatcher, model: Model, value: float = -1.0) -> asyncio.Task:
    """Submit one request and wait until it is executing (the only slot is then busy)."""
    task = asyncio.ensure_future(batcher.submit(row(value)))
    await model.wait_started(model.started + 1)
    return task


def spawn(coros: list[Awaitable[BatchResult]]) -> list[asyncio.Task[BatchResult]]:
    return [asyncio.ensure_future(c) for c in coros]


def test_results_are_each_requests_rows_and_all_rows_are_counted() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_us=1000)
        rng = np.random.default_rng(0)
        requests = [{"x": rng.normal(size=(int(rng.integers(1, 5)), 3))} for _ in range(30)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result.outputs["y"], request["x"] * 2)
            assert 1 <= result.batch_size <= 8 and result.queue_s >= 0 and result.compute_s >= 0
        assert sum(model.sizes) == sum(len(r["x"]) for r in requests)
        assert max(model.sizes) <= 8
        assert batcher.queue_depth == 0 and batcher.in_flight == 0
        await batcher.close()

    run(scenario)


def test_batches_form_while_the_slot_is_busy() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=4)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i)) for i in range(10)])
        await until(lambda: batcher.queue_depth == 10)
        assert batcher.in_flight == 1
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        assert model.sizes == [1, 4, 4, 2]
        assert [r.batch_size for r in results[1:]] == [4] * 8 + [2] * 2
        for i, result in enumerate(results[1:]):
            np.testing.assert_array_equal(result.outputs["y"], row(2 * i)["x"])
        await batcher.close()

    run(scenario)


def test_preferred_batch_sizes_dispatch_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(
            model, max_batch_size=8, preferred_batch_sizes=[2, 4], max_queue_delay_us=10_000_000
        )
        first = asyncio.ensure_future(batcher.submit(row(0, rows=2)))  # preferred: sent at once
        await model.wait_started(1)
        tasks = spawn([batcher.submit(row(i)) for i in range(7)])
        await until(lambda: batcher.queue_depth == 7)
        model.gate.set()
        await asyncio.gather(first, *tasks[:6])  # the largest preferred size first: 4, then 2
        assert model.sizes == [2, 4, 2]
        assert not tasks[6].done() and batcher.queue_depth == 1  # waits for the 10 s delay
        await batcher.close(drain=True)  # closing sends it without waiting
        assert (await tasks[6]).batch_size == 1
        assert model.sizes == [2, 4, 2, 1]

    run(scenario)


def test_max_queue_delay_holds_a_lone_request_then_sends_it() -> None:
    async def scenario() -> None:
        delayed = DynamicBatcher(Model(), max_batch_size=8, max_queue_delay_us=50_000)
        started = time.monotonic()
        result = await delayed.submit(row(1))
        assert 0.04 <= time.monotonic() - started < 2.0
        assert 0.04 <= result.queue_s < 2.0 and result.batch_size == 1
        immediate = DynamicBatcher(Model(), max_batch_size=8, max_queue_delay_us=0)
        result = await immediate.submit(row(1))
        assert result.queue_s < 0.03
        await delayed.close()
        await immediate.close()

    run(scenario)


def test_a_lone_request_skips_the_delay_after_a_batch_of_one() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_us=50_000)
        assert (await batcher.submit(row(1))).queue_s >= 0.04  # no batch sent yet: it waits
        assert (await batcher.submit(row(2))).queue_s < 0.03  # after a batch of one: at once
        model.gate.clear()
        first = await occupy(batcher, model)  # also at once
        tasks = spawn([batcher.submit(row(i)) for i in (3, 4)])
        await until(lambda: batcher.queue_depth == 2)
        model.gate.set()
        await asyncio.gather(first, *tasks)
        assert model.sizes == [1, 1, 1, 2]
        assert (await batcher.submit(row(5))).queue_s >= 0.04  # requests met: lone ones wait
        await batcher.close()

    run(scenario)


def test_a_full_queue_rejects_exactly_the_overflow() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=1, max_queue_size=5)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i)) for i in range(8)])
        await until(lambda: sum(t.done() for t in tasks) == 3)
        assert batcher.queue_depth == 5
        assert all(isinstance(t.exception(), BackPressure) for t in tasks[5:])
        assert "queue is full" in str(tasks[5].exception())
        model.gate.set()
        await asyncio.gather(first, *tasks[:5])
        assert model.seen == {-1.0, 0, 1, 2, 3, 4}
        await batcher.close()

    run(scenario)


def test_expired_requests_fail_and_never_reach_the_model() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8)
        with pytest.raises(DeadlineExceeded):  # already expired at submit
            await batcher.submit(row(99), deadline=time.monotonic() - 1)
        first = await occupy(batcher, model)
        deadline = time.monotonic() + 0.03
        tasks = spawn(
            [batcher.submit(row(i), deadline=deadline if i % 2 else None) for i in range(6)]
        )
        await until(lambda: batcher.queue_depth == 6)
        while time.monotonic() <= deadline:  # let the deadline pass while they are queued
            await asyncio.sleep(deadline - time.monotonic() + 0.001)
        model.gate.set()
        await first
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            assert isinstance(outcome, DeadlineExceeded if i % 2 else BatchResult), (i, outcome)
        assert model.seen == {-1.0, 0, 2, 4}  # no 1, 3, 5 and no 99
        assert batcher.queue_depth == 0 and batcher.in_flight == 0
        await batcher.close()

    run(scenario)


def test_a_cancelled_queued_request_leaves_the_queue_unexecuted() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i)) for i in range(3)])
        await until(lambda: batcher.queue_depth == 3)
        tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert batcher.queue_depth == 2
        model.gate.set()
        await asyncio.gather(first, tasks[0], tasks[2])
        assert model.seen == {-1.0, 0, 2} and model.sizes == [1, 2]
        await batcher.close()

    run(scenario)


def test_an_execute_error_fails_the_whole_batch_and_the_batcher_recovers() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i)) for i in range(3)])
        await until(lambda: batcher.queue_depth == 3)
        model.fail = ValueError("boom")  # both the running batch and the queued one fail
        model.gate.set()
        errors = await asyncio.gather(first, *tasks, return_exceptions=True)
        assert model.sizes == [1, 3]
        assert all(type(e) is HeadraceError and "boom" in str(e) for e in errors)
        assert errors[1] is errors[2] is errors[3]  # one error for the whole batch
        assert isinstance(errors[0].__cause__, ValueError)
        model.fail = InvalidInput("bad pixels")  # headrace errors pass through unchanged
        with pytest.raises(InvalidInput, match="bad pixels"):
            await batcher.submit(row(7))
        model.fail = None
        result = await batcher.submit(row(8))
        np.testing.assert_array_equal(result.outputs["y"], row(16)["x"])
        assert batcher.in_flight == 0
        await batcher.close()

    run(scenario)


def test_an_output_row_mismatch_fails_the_batch_clearly() -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher(lambda d: {"y": d["x"][:1]}, max_batch_size=8, name="digits")
        with pytest.raises(HeadraceError, match=r"'y' has 1 rows .* batch has 3 input rows") as e:
            await batcher.submit(row(1, rows=3))
        assert e.value.grpc_status == "INTERNAL"
        scalar = DynamicBatcher(lambda d: {"y": np.array(1.0)}, max_batch_size=8)
        with pytest.raises(HeadraceError, match="has no rows"):
            await scalar.submit(row(1))
        await batcher.close()
        await scalar.close()

    run(scenario)


def test_on_batch_hears_of_every_executed_batch_with_its_rows_and_phases() -> None:
    """One `BatchTiming` per batch executed without error (what ModelStatistics' batch_stats
    are built from): the batch's total rows and its time joining inputs, executing and
    splitting outputs; a batch that fails is not reported."""
    heard: list[BatchTiming] = []

    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=4, on_batch=heard.append)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i, rows=2 if i == 0 else 1)) for i in range(6)])
        await until(lambda: batcher.queue_depth == 6)
        model.gate.set()
        await asyncio.gather(first, *tasks)
        assert model.sizes == [1, 4, 3]
        assert [b.rows for b in heard] == [1, 4, 3]
        for batch in heard:
            assert batch.input_s >= 0 and batch.infer_s > 0 and batch.output_s >= 0
        model.fail = RuntimeError("boom")
        with pytest.raises(HeadraceError):
            await batcher.submit(row(9))
        assert len(heard) == 3
        await batcher.close()

    run(scenario)


def test_batching_off_executes_each_request_alone() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8, enabled=False)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i)) for i in range(5)])
        await until(lambda: batcher.queue_depth == 5)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        assert [r.batch_size for r in results] == [1] * 6 and model.sizes == [1] * 6
        assert [float(x[0, 0]) for x in model.batches] == [-1.0, 0, 1, 2, 3, 4]  # FIFO
        await batcher.close()

    run(scenario)


def test_without_a_batch_axis_each_request_runs_as_it_is() -> None:
    """max_batch_size 0 (Triton's model without a batch axis): requests are never merged,
    axis 0 is not a batch (any size, and outputs need not match it)."""

    def total(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model(inputs)
        return {"y": np.full(3, inputs["x"].sum(), dtype=np.float32)}

    async def scenario() -> None:
        batcher = DynamicBatcher(total, max_batch_size=0, max_queue_delay_us=100_000)
        first = await occupy(batcher, model)
        shapes = [(5, 2), (1, 4), (7,)]
        tasks = spawn([batcher.submit({"x": np.ones(s, dtype=np.float32)}) for s in shapes])
        await until(lambda: batcher.queue_depth == 3)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        assert [x.shape for x in model.batches] == [(1, 3), (5, 2), (1, 4), (7,)]  # one each
        assert [float(r.outputs["y"][0]) for r in results] == [-3.0, 10.0, 4.0, 7.0]
        assert [r.batch_size for r in results] == [1, 1, 1, 1]
        await batcher.close()

    model = Model(blocked=True)
    run(scenario)


def test_only_requests_of_the_same_signature_are_batched() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8)
        first = await occupy(batcher, model)
        kinds = [row(1), row(2, width=5), row(3), {"x": np.full((1, 3), 4.0)}, row(5, width=5)]
        tasks = spawn([batcher.submit(k) for k in kinds])
        await until(lambda: batcher.queue_depth == 5)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        for kind, result in zip(kinds, results[1:], strict=True):
            np.testing.assert_array_equal(result.outputs["y"], kind["x"] * 2)
            assert result.outputs["y"].dtype == kind["x"].dtype
        # FIFO within a signature, the group with the oldest head first.
        assert [(x.shape[1], x.dtype.name, len(x)) for x in model.batches[1:]] == [
            (3, "float32", 2),
            (5, "float32", 2),
            (3, "float64", 1),
        ]
        await batcher.close()

    run(scenario)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": -1},
        {"max_batch_size": 0, "preferred_batch_sizes": [1]},
        {"max_batch_size": 4, "preferred_batch_sizes": [5]},
        {"max_batch_size": 4, "preferred_batch_sizes": [0]},
        {"max_batch_size": 4, "max_queue_size": 0},
        {"max_batch_size": 4, "concurrency": 0},
        {"max_batch_size": 4, "max_queue_delay_us": -1},
        {"max_batch_size": 2.5},
    ],
)
def test_invalid_settings_are_refused_when_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DynamicBatcher(Model(), **kwargs)


def test_invalid_settings_name_every_problem() -> None:
    with pytest.raises(ConfigError, match="max_queue_size.*concurrency"):
        DynamicBatcher(Model(), max_batch_size=4, max_queue_size=0, concurrency=0)
    with pytest.raises(ConfigError):
        DynamicBatcher(Model(), max_batch_size=4).set_concurrency(0)


def test_invalid_requests_are_refused() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=4)
        with pytest.raises(InvalidInput, match="1..4 rows"):
            await batcher.submit(row(1, rows=5))
        with pytest.raises(InvalidInput, match="1..4 rows"):
            await batcher.submit(row(1, rows=0))
        with pytest.raises(InvalidInput, match="disagree"):
            await batcher.submit({"x": np.zeros((2, 3)), "m": np.zeros((3, 1))})
        with pytest.raises(InvalidInput, match="batch axis"):
            await batcher.submit({"x": np.float32(1)})  # type: ignore[dict-item]
        with pytest.raises(InvalidInput, match="non-empty"):
            await batcher.submit({})
        assert batcher.queue_depth == 0 and model.batches == []
        await batcher.close()

    run(scenario)


def test_close_with_drain_finishes_queued_work_then_refuses() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay_us=10_000_000)
        first = asyncio.ensure_future(batcher.submit(row(0, rows=2)))  # full: sent at once
        await model.wait_started(1)
        tasks = spawn([batcher.submit(row(i)) for i in range(3)])
        await until(lambda: batcher.queue_depth == 3)
        closing = asyncio.ensure_future(batcher.close(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await batcher.submit(row(9))
        assert not closing.done()
        model.gate.set()
        await closing
        assert all(t.done() for t in tasks) and [t.result().batch_size for t in tasks] == [2, 2, 1]
        assert first.result().batch_size == 2 and model.sizes == [2, 2, 1]
        with pytest.raises(ShuttingDown):
            await batcher.submit(row(9))

    run(scenario)


def test_close_without_drain_fails_queued_work_and_waits_for_running_batches() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8)
        first = await occupy(batcher, model)
        tasks = spawn([batcher.submit(row(i)) for i in range(3)])
        await until(lambda: batcher.queue_depth == 3)
        closing = asyncio.ensure_future(batcher.close(drain=False))
        errors = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(e, ShuttingDown) for e in errors)
        assert batcher.queue_depth == 0 and not closing.done() and not first.done()
        model.gate.set()
        await closing
        assert first.result().batch_size == 1 and model.seen == {-1.0}

    run(scenario)


def test_set_concurrency_lets_two_batches_run_at_once() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        batcher = DynamicBatcher(model, max_batch_size=8, concurrency=1)
        first = await occupy(batcher, model)
        second = asyncio.ensure_future(batcher.submit(row(2)))
        await until(lambda: batcher.queue_depth == 1)
        assert model.started == 1  # one slot: the second request waits
        batcher.set_concurrency(2)
        await model.wait_started(2)
        assert batcher.in_flight == 2 and batcher.queue_depth == 0
        model.gate.set()
        await asyncio.gather(first, second)
        await batcher.close()

    run(scenario)


def test_a_batcher_built_outside_a_loop_serves_inside_one() -> None:
    batcher = DynamicBatcher(Model(), max_batch_size=8)

    async def scenario() -> None:
        result = await batcher.submit(row(3, rows=2))
        np.testing.assert_array_equal(result.outputs["y"], row(6, rows=2)["x"])
        await batcher.close()

    run(scenario)


def _negative(inputs: dict[str, np.ndarray]) -> str | None:
    """A screen refusing negative values."""
    return "x is negative" if (inputs["x"] < 0).any() else None


class CountingScreen:
    def __init__(self) -> None:
        self.looked_at: list[int] = []  # rows of each input set screened

    def __call__(self, inputs: dict[str, np.ndarray]) -> str | None:
        self.looked_at.append(len(inputs["x"]))
        return _negative(inputs)


def test_the_screen_refuses_only_its_requests_and_the_rest_of_the_batch_runs() -> None:
    async def scenario() -> None:
        model = Model(blocked=True)
        screen = CountingScreen()
        batcher = DynamicBatcher(model, max_batch_size=8, screen=screen)
        first = await occupy(batcher, model, value=0.0)
        values = [1.0, -1.0, 2.0, -2.0, 3.0]
        tasks = spawn([batcher.submit(row(v)) for v in values])
        await until(lambda: batcher.queue_depth == len(values))
        model.gate.set()
        await first
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for value, outcome in zip(values, outcomes, strict=True):
            if value < 0:
                assert isinstance(outcome, InvalidInput) and outcome.message == "x is negative"
            else:
                assert isinstance(outcome, BatchResult) and outcome.batch_size == 3
                np.testing.assert_array_equal(outcome.outputs["y"], row(2 * value)["x"])
        assert model.sizes == [1, 3] and -1.0 not in model.seen and -2.0 not in model.seen
        # the occupying request alone, then the batch of five, then each of its requests
        assert screen.looked_at == [1, 5, 1, 1, 1, 1, 1]
        assert batcher.queue_depth == 0 and batcher.in_flight == 0
        await batcher.close()

    run(scenario)


def test_a_batch_the_screen_refuses_whole_never_runs() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = DynamicBatcher(model, max_batch_size=8, screen=_negative)
        outcomes = await asyncio.gather(
            *(batcher.submit(row(-v)) for v in (1.0, 2.0)), return_exceptions=True
        )
        assert all(isinstance(o, InvalidInput) for o in outcomes) and model.sizes == []
        assert (await batcher.submit(row(4.0))).outputs["y"][0, 0] == 8.0
        await batcher.close()

    run(scenario)
