"""An asyncio dynamic batcher with Triton's semantics, in front of a blocking `execute`.

`submit()` queues one request (any rows along axis 0) and awaits its own future.
One dispatcher task, started on the first submit, forms batches and runs them in
a thread pool, at most `concurrency` at a time; while every slot is busy requests
keep queueing, which is where batches grow. A batch is sent when it cannot grow
without exceeding `max_batch_size`, when it reaches the largest preferred size
available, or when its oldest request has waited `max_queue_delay_us` (0: as soon
as a slot is free). One exception to the wait: a lone request that finds the model
idle right after a batch of one request is sent at once, since nothing suggests
company is coming (a single closed-loop client would otherwise pay the full delay
on every request); as soon as a batch of two or more forms, lone requests wait
again. Only requests with the same input names, dtypes and non-batch
shapes are batched together: one FIFO queue per signature, oldest head first.
Every future is settled exactly once: with its rows of the outputs, the batch's
error, the screen's `InvalidInput`, `DeadlineExceeded` or `ShuttingDown` (these
three never executed), or by the caller's cancellation. Use a batcher from one event
loop's thread. An `on_batch` hook, if given, hears of every batch executed without
error (its rows and where its time went), from the executing thread. A `screen`, if
given, looks at each batch's joined inputs before they run (one call per batch,
however many requests it holds) and, when it names a problem, at each request's:
those it refuses fail with `InvalidInput` unexecuted and the others run (the
server's NaN/infinity check: made per request on the event loop, it cost LeNet-5
about 6% of its requests/s).

`max_batch_size=0` is Triton's model without a batch axis: its inputs are passed as
they are, one request per execution, with no check of axis 0 (the queue, deadlines,
cancellation and the concurrency limit still apply).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from headrace.errors import (
    BackPressure,
    ConfigError,
    DeadlineExceeded,
    HeadraceError,
    InvalidInput,
    ShuttingDown,
)

Arrays = dict[str, np.ndarray]
Execute = Callable[[Arrays], Arrays]


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """One executed batch: its rows and where its time went (Triton's batch statistics)."""

    rows: int  # total rows in the batch (1 per request without a batch axis)
    input_s: float  # joining the requests' inputs into the batch's
    infer_s: float  # `execute`
    output_s: float  # checking the outputs and splitting them per request


BatchHook = Callable[[BatchTiming], None]
# What refuses inputs before they run: a problem to answer with (an `InvalidInput`), or None.
Screen = Callable[[Arrays], str | None]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's share of an executed batch."""

    outputs: dict[str, np.ndarray]  # this request's rows only
    queue_s: float  # time from submit to dispatch
    compute_s: float  # time the batch spent in `execute`
    batch_size: int  # total rows in the executed batch
    input_s: float = 0.0  # time the batch took to join its requests' inputs
    output_s: float = 0.0  # time the batch took to check and split its outputs


class _Request:
    # Plain class on purpose: identity equality, so `deque.remove` never compares arrays.
    __slots__ = ("inputs", "rows", "key", "deadline", "submitted", "future", "queued")

    def __init__(
        self, inputs: Arrays, rows: int, key: object, deadline: float | None, fut: asyncio.Future
    ) -> None:
        self.inputs, self.rows, self.key, self.deadline = inputs, rows, key, deadline
        self.submitted = time.monotonic()
        self.future: asyncio.Future[BatchResult] = fut
        self.queued = True


class DynamicBatcher:
    """Batches concurrent `submit()` calls into calls of a blocking `execute`."""

    def __init__(
        self,
        execute: Execute,
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int = 1024,
        concurrency: int = 1,
        executor: concurrent.futures.Executor | None = None,
        enabled: bool = True,
        name: str = "",
        on_batch: BatchHook | None = None,
        screen: Screen | None = None,
    ) -> None:
        label = f"batcher {name!r}" if name else "batcher"
        ints = {
            "max_batch_size": (max_batch_size, 0),
            "max_queue_delay_us": (max_queue_delay_us, 0),
            "max_queue_size": (max_queue_size, 1),
            "concurrency": (concurrency, 1),
        }
        problems = [
            f"{key} must be an integer >= {low}, got {value!r}"
            for key, (value, low) in ints.items()
            if not _int_at_least(value, low)
        ]
        if not callable(execute):
            problems.append("execute must be callable")
        if on_batch is not None and not callable(on_batch):
            problems.append("on_batch must be callable")
        if screen is not None and not callable(screen):
            problems.append("screen must be callable")
        if _int_at_least(max_batch_size, 0) and not all(
            _int_at_least(p, 1) and p <= max_batch_size for p in preferred_batch_sizes
        ):
            problems.append(
                f"preferred_batch_sizes must lie in 1..max_batch_size ({max_batch_size}), "
                f"got {list(preferred_batch_sizes)}"
            )
        if problems:
            raise ConfigError(f"{label}: " + "; ".join(problems))
        self.name, self._label = name, label
        self._execute = execute
        self._on_batch = on_batch
        self._screen = screen
        self._max_batch = max_batch_size
        self._preferred = frozenset(preferred_batch_sizes)
        # Triton: a batch that cannot reach a larger preferred size is sent without waiting.
        self._max_preferred = max(self._preferred, default=max_batch_size)
        self._delay_s = max_queue_delay_us / 1e6
        self._max_queue = max_queue_size
        self._concurrency = concurrency
        self._batch_axis = max_batch_size > 0  # 0: Triton's model without a batch axis
        self._enabled = enabled and self._batch_axis
        self._own_executor = executor is None
        self._executor = executor or self._new_pool(concurrency)
        self._pool_size = concurrency
        self._groups: dict[object, deque[_Request]] = {}  # signature -> FIFO queue
        self._queued = 0
        self._in_flight = 0
        self._running = 0  # batches executing
        self._last_batch = 2  # requests in the last batch sent; 1 = traffic is sparse
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # bound on the first submit
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # dispatcher waits for requests/timer
        self._slot_waiter: asyncio.Future[None] | None = None  # ... or for a free slot

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet dispatched)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests dispatched but not finished."""
        return self._in_flight

    def set_concurrency(self, n: int) -> None:
        """Let `n` batches execute at once (= model instances) from the next dispatch on."""
        if not _int_at_least(n, 1):
            raise ConfigError(f"{self._label}: concurrency must be an integer >= 1, got {n!r}")
        self._concurrency = n
        if self._own_executor and n > self._pool_size:
            # A ThreadPoolExecutor cannot grow; running batches finish on the old one.
            old, self._executor, self._pool_size = self._executor, self._new_pool(n), n
            old.shutdown(wait=False)
        _wake(self._slot_waiter)

    async def submit(self, inputs: Arrays, deadline: float | None = None) -> BatchResult:
        """Queue one request and wait for its rows of the outputs."""
        if self._closed:
            raise ShuttingDown(f"{self._label} is shutting down and accepts no new requests")
        rows, key = self._check(inputs)
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        if self._queued >= self._max_queue:
            raise BackPressure(
                f"{self._label}: queue is full ({self._max_queue} requests waiting); retry later"
            )
        loop = self._start()
        req = _Request(inputs, rows, key, deadline, loop.create_future())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = deque()
        group.append(req)
        self._queued += 1
        _wake(self._waiter)
        try:
            return await req.future
        except asyncio.CancelledError:
            if req.queued:  # the caller gave up: the request leaves the queue unexecuted
                self._unqueue(req)
                group = self._groups.get(key)
                if group is not None:
                    group.remove(req)
                    if not group:
                        del self._groups[key]
            raise

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests; finish (drain) or fail queued ones; wait for executing batches."""
        self._closed = True
        if not drain:
            self._fail_queued(ShuttingDown(f"{self._label} closed before the request ran"))
        _wake(self._waiter)
        _wake(self._slot_waiter)
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task})  # not cancelled if our caller is
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -- submit side --------------------------------------------------------------------------

    def _check(self, inputs: Arrays) -> tuple[int, object]:
        if not isinstance(inputs, dict) or not inputs:
            raise InvalidInput("inputs must be a non-empty dict of input name -> numpy array")
        if not self._batch_axis:
            for name, array in inputs.items():
                if not isinstance(array, np.ndarray):
                    raise InvalidInput(
                        f"input {name!r} must be a numpy array, got {type(array).__name__}"
                    )
            return 1, None  # one request, executed on its own as it is
        rows = -1
        signature = []
        for name, array in inputs.items():
            if not isinstance(array, np.ndarray) or array.ndim == 0:
                raise InvalidInput(
                    f"input {name!r} must be a numpy array with a batch axis (axis 0), "
                    f"got {type(array).__name__} of shape {getattr(array, 'shape', None)}"
                )
            if rows < 0:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size (axis 0): {name!r} has "
                    f"{array.shape[0]} rows, the others {rows}; give every input one row per item"
                )
            signature.append((name, array.dtype, array.shape[1:]))
        if not 1 <= rows <= self._max_batch:
            raise InvalidInput(
                f"a request must have 1..{self._max_batch} rows (max_batch_size), got {rows}; "
                "split larger requests"
            )
        return rows, frozenset(signature) if self._enabled else None

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._loop = loop
            self._task = loop.create_task(self._dispatch_loop(), name=f"{self._label} dispatcher")
        elif loop is not self._loop:
            raise HeadraceError(f"{self._label} is bound to another event loop")
        return loop

    def _unqueue(self, req: _Request) -> None:
        req.queued = False
        self._queued -= 1

    def _fail_queued(self, error: HeadraceError) -> None:
        groups, self._groups = self._groups, {}
        for group in groups.values():
            for req in group:
                self._unqueue(req)
                _fail(req.future, error)

    # -- dispatcher ---------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._running >= self._concurrency or (self._closed and not self._queued):
                    if not self._running:
                        return  # closed, queue empty, nothing executing
                    self._slot_waiter = loop.create_future()
                    await self._slot_waiter
                    continue
                now = time.monotonic()
                batch, wake_at = self._next_batch(now)
                if batch:
                    self._launch(loop, batch, now)
                    continue
                self._waiter = waiter = loop.create_future()
                timer = None if wake_at is None else loop.call_later(wake_at - now, _wake, waiter)
                await waiter
                if timer is not None:
                    timer.cancel()
        except BaseException as exc:
            self._closed = True
            if isinstance(exc, asyncio.CancelledError):
                self._fail_queued(ShuttingDown(f"{self._label} stopped with its event loop"))
            else:
                self._fail_queued(HeadraceError(f"{self._label} dispatcher failed: {exc!r}"))
            raise

    def _next_batch(self, now: float) -> tuple[list[_Request], float | None]:
        """The batch to send now (the ready group with the oldest head), or when to look again."""
        best: deque[_Request] | None = None
        best_n = 0
        wake_at: float | None = None
        for key, group in list(self._groups.items()):
            n, at = self._plan(group, now)
            if not group:
                del self._groups[key]
            elif n and (best is None or group[0].submitted < best[0].submitted):
                best, best_n = group, n
            elif not n and at is not None and (wake_at is None or at < wake_at):
                wake_at = at
        if best is None:
            return [], wake_at
        batch = [best.popleft() for _ in range(best_n)]
        if not best:
            del self._groups[batch[0].key]
        for req in batch:
            self._unqueue(req)
        return batch, None

    def _plan(self, group: deque[_Request], now: float) -> tuple[int, float | None]:
        """Triton's rule for one group: how many head requests to send now, else when to recheck.

        Drops expired (failed with DeadlineExceeded) and cancelled requests on the way.
        """
        pending = n = best_n = 0
        send_now = False
        i = 0
        while i < len(group):
            req = group[i]
            if req.future.done() or (req.deadline is not None and req.deadline <= now):
                del group[i]
                self._unqueue(req)
                waited_ms = (now - req.submitted) * 1e3
                _fail(
                    req.future,
                    DeadlineExceeded(
                        f"deadline passed after {waited_ms:.1f} ms "
                        "in the queue; the request was not executed"
                    ),
                )
                continue
            if not self._enabled:
                return 1, None
            if pending and pending + req.rows > self._max_preferred and not best_n:
                best_n = n  # the batch cannot grow to a larger preferred size: send this much
            if pending + req.rows > self._max_batch:
                send_now = True
                break
            pending += req.rows
            i = n = i + 1
            if pending in self._preferred:
                best_n = n
        if not n:
            return 0, None
        oldest = group[0].submitted
        delay_exceeded = self._closed or (self._delay_s > 0 and now - oldest >= self._delay_s)
        if best_n and not delay_exceeded:
            return best_n, None
        if send_now or pending >= self._max_preferred or delay_exceeded or not self._delay_s:
            return n, None
        if n == 1 and len(group) == 1 and not self._running and self._last_batch == 1:
            return 1, None  # sparse traffic: waiting would only add latency
        return 0, oldest + self._delay_s

    def _launch(self, loop: asyncio.AbstractEventLoop, batch: list[_Request], now: float) -> None:
        self._running += 1
        self._in_flight += len(batch)
        self._last_batch = len(batch)
        queue_s = [now - req.submitted for req in batch]
        try:
            fut = loop.run_in_executor(
                self._executor, self._run, [r.inputs for r in batch], [r.rows for r in batch]
            )
        except Exception as exc:  # e.g. a caller's executor that was shut down
            fut = loop.create_future()
            fut.set_exception(exc)
        fut.add_done_callback(partial(self._finish, batch, queue_s))

    def _run(
        self, inputs: list[Arrays], rows: list[int]
    ) -> tuple[BatchTiming | None, list[Arrays | InvalidInput]]:
        """In a worker thread: screen, concatenate, execute, check rows, split back per
        request. A request the screen refuses gets its `InvalidInput` in place of outputs
        and is not executed (timing None: the screen refused every request)."""
        started = time.perf_counter()
        merged = _merge(inputs)
        refused: dict[int, InvalidInput] = {}
        if self._screen is not None and self._screen(merged) is not None:
            # One look at the whole batch found a problem: find whose it is.
            for i, one in enumerate(inputs):
                problem = self._screen(one)
                if problem is not None:
                    refused[i] = InvalidInput(problem)
            if refused:
                kept = [i for i in range(len(inputs)) if i not in refused]
                if not kept:
                    return None, [refused[i] for i in range(len(inputs))]
                inputs, rows = [inputs[i] for i in kept], [rows[i] for i in kept]
                merged = _merge(inputs)
        timing, parts = self._execute_merged(merged, rows, started)
        if not refused:
            return timing, list(parts)
        executed = iter(parts)
        answers = [refused.get(i) or next(executed) for i in range(len(refused) + len(parts))]
        return timing, answers

    def _execute_merged(
        self, merged: Arrays, rows: list[int], started: float
    ) -> tuple[BatchTiming, list[Arrays]]:
        total = sum(rows)
        executing = time.perf_counter()
        outputs = self._execute(merged)
        executed = time.perf_counter()
        compute_s = executed - executing
        if not isinstance(outputs, dict):
            raise HeadraceError(
                f"{self._label}: execute must return a dict of output name -> numpy array, "
                f"got {type(outputs).__name__}"
            )
        if self._batch_axis:  # without one, outputs are the request's as they are
            for name, value in outputs.items():
                got = value.shape[0] if isinstance(value, np.ndarray) and value.ndim else "no"
                if got != total:
                    raise HeadraceError(
                        f"{self._label}: output {name!r} has {got} rows (axis 0) but the batch "
                        f"has {total} input rows; the model must return one output row per "
                        "input row"
                    )
        if len(rows) == 1:
            parts = [outputs]
        else:
            parts, start = [], 0
            for n in rows:
                parts.append({name: value[start : start + n] for name, value in outputs.items()})
                start += n
        timing = BatchTiming(total, executing - started, compute_s, time.perf_counter() - executed)
        if self._on_batch is not None:
            self._on_batch(timing)
        return timing, parts

    def _finish(self, batch: list[_Request], queue_s: list[float], fut: asyncio.Future) -> None:
        self._running -= 1
        self._in_flight -= len(batch)
        _wake(self._slot_waiter)
        if fut.cancelled():
            error: BaseException | None = HeadraceError(f"{self._label}: batch was cancelled")
        else:
            error = fut.exception()
        if error is None:
            t, parts = fut.result()
            for req, waited, outputs in zip(batch, queue_s, parts, strict=True):
                if req.future.done():  # the caller may have cancelled meanwhile
                    continue
                if isinstance(outputs, InvalidInput):
                    req.future.set_exception(outputs)
                elif t is not None:
                    req.future.set_result(
                        BatchResult(outputs, waited, t.infer_s, t.rows, t.input_s, t.output_s)
                    )
            return
        if not isinstance(error, HeadraceError):
            wrapped = HeadraceError(f"{self._label}: model execution failed: {error}")
            wrapped.__cause__ = error
            error = wrapped
        for req in batch:
            _fail(req.future, error)

    @staticmethod
    def _new_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="batcher")


def _merge(inputs: list[Arrays]) -> Arrays:
    """The requests' inputs joined along axis 0 (one request: its arrays as-is, no copy)."""
    if len(inputs) == 1:
        return inputs[0]
    return {name: np.concatenate([d[name] for d in inputs]) for name in inputs[0]}


def _int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _wake(waiter: asyncio.Future[Any] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _fail(fut: asyncio.Future[BatchResult], error: BaseException) -> None:
    if not fut.done():  # a future the caller cancelled stays cancelled
        fut.set_exception(error)
