"""A consumer waiting for its group's first assignment says so while it waits.

The embedded broker (Tansu 0.6) never finishes a rebalance of a group again once
the group's leader has left between its JoinGroup and its SyncGroup (a member
stopped in the middle of a rebalance; two stopped at once can do it). The
group's members then wait for partitions for good, and at the default log level
without a word. The stream worker (Faust, on its event loop) and the training
agent (kafka-python, in its polling loop) both ask an `AssignmentWatch` as they
wait; it logs a warning every `UNASSIGNED_WARN_S` (HEADRACE_UNASSIGNED_WARN_S).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# A group join takes 1 to 5 s (DESIGN.md) and waits at most the rebalance timeout (10 s) for
# members to rejoin; a member with no assignment after UNASSIGNED_WARN_S says so, every this
# long.
from headrace.settings import UNASSIGNED_WARN_S

log = logging.getLogger(__name__)


class AssignmentWatch:
    """Warns while a member of `group` has had no assignment yet.

    `members` names the group's processes in the advice ("workers"), `topic` the topic a new
    group would read from its earliest offset; it warns every `warn_s` of waiting."""

    def __init__(
        self,
        group: str,
        members: str,
        topic: str,
        warn_s: float = UNASSIGNED_WARN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group, self.members, self.topic, self.warn_s = group, members, topic, warn_s
        self._clock = clock
        self._started = clock()
        self._warnings = 0

    def check(self, assigned: bool) -> bool:
        """Call this every few seconds until it returns False (assigned: nothing more to
        watch); it warns once each `warn_s` of waiting."""
        if assigned:
            return False
        waited_s = self._clock() - self._started
        if waited_s >= (self._warnings + 1) * self.warn_s:
            self._warnings = int(waited_s // self.warn_s)
            log.warning(
                "no partitions assigned after %.0f s: consumer group %r has not finished a "
                "rebalance. A member may be stuck; on the embedded broker a group whose leader "
                "left in the middle of a rebalance stays stuck until the broker restarts. "
                "Restart the broker, or run the %s with another --group (a new group reads "
                "%s from the earliest offset).",
                waited_s, self.group, self.members, self.topic,
            )  # fmt: skip
        return True
