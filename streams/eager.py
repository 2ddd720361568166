"""Start a coroutine at once and finish it in a task only if it has to wait.

Faust's fetcher hands every message to the agents with mode's `wait_first`,
racing the delivery against the consumer's `suspend_flow` (a rebalance): four
asyncio tasks and an `asyncio.wait` per message, the largest single cost in the
stream worker's fetching (py-spy, docs/performance.md). Almost every delivery
finishes without waiting (the stream buffer has room), so running its first step
inline and racing only the rest keeps Faust's semantics at a fraction of the cost.
This is what Python 3.12's eager task factory does; the worker runs on 3.11.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class Pending:
    """A started coroutine that suspended; await it (once) to finish it."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        return _resume(self.coro, self.yielded)

    def close(self) -> None:
        """Abandon it without finishing (runs the coroutine's `finally` blocks)."""
        self.coro.close()


def start(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run `coro` up to its first suspension: (True, its result) or (False, a `Pending`).
    An exception it raises before suspending propagates."""
    try:
        yielded = coro.send(None)
    except StopIteration as finished:
        return True, finished.value
    return False, Pending(coro, yielded)


def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    # `yield from` semantics, entered after the first step: hand the event loop what the
    # coroutine is waiting for, then pass the wake-up (or a cancellation) back into it.
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as finished:
                return finished.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as finished:
                return finished.value
