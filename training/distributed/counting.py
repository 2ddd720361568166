"""Counting the bytes handed to collectives: a process group that wraps another and tallies.

`CountingGroup` is a `torch.distributed.ProcessGroup` written in Python that
forwards every collective to the real (gloo) group and adds up
`numel * element_size` of each tensor this rank hands over: the buffer of an
allreduce or broadcast, this rank's own contribution to an allgather. Every
compression hook, torch's PowerSGD hook included, is given this group, so the
figure is what the hooks actually sent, not a formula. For two workers, gloo's
ring allreduce puts exactly the buffer's size on the wire per rank, so the
count equals the payload bytes each worker sends (headers excluded).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors' elements (not counting Python or framing overhead)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class ByteCounter:
    """A running total of bytes sent, readable and resettable between epochs."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, count: int) -> None:
        self.total += int(count)

    def take(self) -> int:
        """The bytes counted since the last `take`, and start again from zero."""
        value, self.total = self.total, 0
        return value


class CountingGroup(dist.ProcessGroup):
    """A process group that forwards to `inner` and counts what this rank hands over."""

    def __init__(self, inner: dist.ProcessGroup, counter: ByteCounter) -> None:
        super().__init__(inner.rank(), inner.size())  # type: ignore[call-arg]  # (rank, size) form
        self.inner = inner
        self.counter = counter

    def getBackendName(self) -> str:  # noqa: N802 - torch's method name
        return f"counting-{self.inner.name()}"

    def allreduce(self, tensors: Any, opts: Any = None) -> Any:  # type: ignore[override]
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else tensors
        self.counter.add(tensor_bytes(tensors))
        if opts is None:
            return self.inner.allreduce(tensors)
        return self.inner.allreduce(tensors, opts)

    def allgather(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Any:
        self.counter.add(tensor_bytes(input_tensors))
        if opts is None:
            return self.inner.allgather(output_tensors, input_tensors)
        return self.inner.allgather(output_tensors, input_tensors, opts)

    def broadcast(self, tensors: Any, opts: Any = None) -> Any:  # type: ignore[override]
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else tensors
        root = 0 if opts is None else int(opts.rootRank)
        if root == self.rank():  # only the root sends
            self.counter.add(tensor_bytes(tensors))
        if opts is None:
            return self.inner.broadcast(tensors)
        return self.inner.broadcast(tensors, opts)

    def barrier(self, opts: Any = None) -> Any:
        return self.inner.barrier() if opts is None else self.inner.barrier(opts)
