"""SIGTERM and SIGHUP as a request to stop, for commands that must clean up before they exit.

Python's default for SIGTERM and SIGHUP ends the process at once: no `finally`, no
`atexit`, so whatever it started in the background (NNI's node manager, its tuner
and trials) is orphaned. Inside `stop_requested()` those signals only set a flag
that the command's own loop polls, so it stops the way Ctrl-C stops it. Handlers
are installed in the main thread only (Python allows no other) and the previous
ones are restored on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """Set once one of the signals arrived; remembers which."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    @property
    def name(self) -> str:
        """The signal's name (SIGTERM, ...), or '' while none arrived."""
        return "" if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by that signal (128 + its number)."""
        return 128 + (self.signum or 0)


@contextlib.contextmanager
def stop_requested(signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Within the block, `signums` set the yielded request instead of ending the process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        request.set(signum)

    for signum in signums:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield request
    finally:
        for signum, old in previous.items():  # None: a handler not set from Python
            signal.signal(signum, signal.SIG_DFL if old is None else old)
