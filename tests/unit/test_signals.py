"""`stop_requested`: SIGTERM/SIGHUP set a flag inside the block; the old handlers come back."""

from __future__ import annotations

import os
import signal

from headrace.signals import stop_requested


def test_a_signal_sets_the_request_and_the_old_handler_returns() -> None:
    before = signal.getsignal(signal.SIGHUP)
    with stop_requested() as stop:
        assert not stop.is_set() and stop.name == ""
        os.kill(os.getpid(), signal.SIGHUP)  # handled in this (main) thread before kill returns
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set() and stop.name == "SIGHUP" and stop.exit_code == 129
    assert signal.getsignal(signal.SIGHUP) == before
