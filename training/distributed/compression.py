"""Gradient compression: DDP communication hooks and parameter-server payloads.

On the allreduce path each compression setting is a DDP communication hook
that hands its buffers to a `CountingGroup` (so bytes are counted):

- none: the bucket, averaged by one allreduce (float32);
- fp16: the bucket cast to float16, allreduced, cast back;
- topk: the largest `ratio` of entries (by magnitude) of each parameter's
  gradient in a bucket (so small layers are not starved), values and int32
  indices packed in one float32 buffer and all-gathered, then summed into a
  dense gradient; with error feedback what was not sent is added to the same
  bucket's next gradient (Stich et al., "Sparsified SGD with memory");
- powersgd: torch's own `powerSGD_hook` (rank `rank`, error feedback and warm
  start on; the first `max(warmup_steps, 2)` steps go uncompressed because DDP
  rebuilds its buckets after step one).

On the parameter-server path workers push `Push` payloads: float32, float16,
or top-k values + indices (error feedback kept per shard on the worker).

No `from __future__ import annotations` here: DDP checks the hooks' `bucket`
annotation against `dist.GradBucket` at registration, so it must not be a string.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from training.distributed.config import Compression, PowerSgdCompression, TopKCompression

Future = torch.futures.Future


class TopKSparsifier:
    """Keeps the largest entries of flat gradients, remembering the rest per key."""

    def __init__(self, ratio: float, error_feedback: bool) -> None:
        if not 0 < ratio <= 1:
            raise ValueError("top-k ratio must be in (0, 1]")
        self.ratio = ratio
        self.error_feedback = error_feedback
        self.residuals: dict[int, torch.Tensor] = {}

    def k_of(self, numel: int) -> int:
        """How many entries of a `numel`-long gradient are sent."""
        return max(1, min(numel, math.ceil(self.ratio * numel)))

    def sparsify(
        self, key: int, flat: torch.Tensor, segments: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values float32, indices int32) of the largest entries of `flat` + its residual.

        With `segments` (sizes that add up to `flat`'s length, e.g. one per parameter)
        each segment keeps its own top `ratio`, so small layers are not starved.
        """
        corrected = flat.detach().to(torch.float32)
        residual = self.residuals.get(key)
        if self.error_feedback and residual is not None and residual.shape == corrected.shape:
            corrected = corrected + residual
        magnitude = corrected.abs()
        picked, offset = [], 0
        for size in segments or [corrected.numel()]:
            _, local = magnitude[offset : offset + size].topk(self.k_of(size), sorted=False)
            picked.append(local + offset)
            offset += size
        indices = torch.cat(picked)
        values = corrected[indices]
        if self.error_feedback:
            left = corrected.clone()
            left[indices] = 0.0
            self.residuals[key] = left
        return values, indices.to(torch.int32)


def densify(values: torch.Tensor, indices: torch.Tensor, numel: int) -> torch.Tensor:
    """The dense vector with `values` at `indices` (repeated indices add up)."""
    dense = torch.zeros(numel, dtype=torch.float32)
    dense.index_add_(0, indices.to(torch.int64), values.to(torch.float32))
    return dense


# -- DDP communication hooks ---------------------------------------------------------------------


@dataclass
class HookState:
    """What the hooks need: the counting group and, for top-k, the sparsifier."""

    group: dist.ProcessGroup
    topk: TopKSparsifier | None = None
    topk_per_tensor: bool = True


def allreduce_hook(state: HookState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """Uncompressed: average the float32 bucket with one allreduce."""
    buffer = bucket.buffer().div_(state.group.size())
    work = dist.all_reduce(buffer, group=state.group, async_op=True)
    assert work is not None
    return work.get_future().then(lambda fut: fut.value()[0])


def fp16_hook(state: HookState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """Average the bucket as float16 (divided first so the sum cannot overflow)."""
    buffer = bucket.buffer()
    half = buffer.to(torch.float16).div_(state.group.size())
    work = dist.all_reduce(half, group=state.group, async_op=True)
    assert work is not None

    def widen(fut: Future[Any]) -> torch.Tensor:
        return buffer.copy_(fut.value()[0])

    return work.get_future().then(widen)


def topk_hook(state: HookState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """All-gather every rank's top-k (values + indices in one buffer); average densely."""
    assert state.topk is not None
    buffer = bucket.buffer()
    segments = [g.numel() for g in bucket.gradients()] if state.topk_per_tensor else None
    values, indices = state.topk.sparsify(bucket.index(), buffer, segments)
    packed = torch.cat([values, indices.view(torch.float32)])
    world = state.group.size()
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=state.group)
    k = values.numel()
    dense = torch.zeros(buffer.numel(), dtype=torch.float32)
    for item in gathered:
        dense.index_add_(0, item[k:].view(torch.int32).to(torch.int64), item[:k])
    buffer.copy_(dense.div_(world))
    done: Future[torch.Tensor] = Future()
    done.set_result(buffer)
    return done


def register_compression(
    model: DistributedDataParallel, compression: Compression, group: dist.ProcessGroup
) -> HookState | powerSGD_hook.PowerSGDState:
    """Install the hook for `compression`, talking through `group`; returns the hook's state."""
    if isinstance(compression, PowerSgdCompression):
        state = powerSGD_hook.PowerSGDState(
            process_group=group,
            matrix_approximation_rank=compression.rank,
            start_powerSGD_iter=max(compression.warmup_steps, 2),
            min_compression_rate=2,
            use_error_feedback=True,
            warm_start=True,
            compression_stats_logging_frequency=1_000_000_000,
        )
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return state
    hook_state = HookState(group=group)
    if isinstance(compression, TopKCompression):
        hook_state.topk = TopKSparsifier(compression.ratio, compression.error_feedback)
        model.register_comm_hook(hook_state, topk_hook)
    elif compression.kind == "fp16":
        model.register_comm_hook(hook_state, fp16_hook)
    else:
        model.register_comm_hook(hook_state, allreduce_hook)
    return hook_state


# -- parameter-server payloads -------------------------------------------------------------------


@dataclass
class Push:
    """One worker's gradient for one server shard, as it travels over Ray."""

    numel: int
    data: np.ndarray  # float32 / float16 dense, or top-k values (float32)
    indices: np.ndarray | None = None  # int32 positions for top-k

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (0 if self.indices is None else self.indices.nbytes))

    def dense(self) -> torch.Tensor:
        """The float32 gradient this payload stands for."""
        data = torch.tensor(self.data)  # a copy: arrays from Ray are read-only
        if self.indices is None:
            return data.to(torch.float32)
        return densify(data, torch.tensor(self.indices), self.numel)


class PushEncoder:
    """Turns a worker's flat shard gradient into a `Push` under one compression setting."""

    def __init__(self, compression: Compression) -> None:
        self.kind = compression.kind
        if self.kind == "powersgd":
            raise ValueError("powersgd applies to allreduce buckets, not parameter-server pushes")
        self.topk = (
            TopKSparsifier(compression.ratio, compression.error_feedback)
            if isinstance(compression, TopKCompression)
            else None
        )

    def encode(self, shard: int, flat: torch.Tensor) -> Push:
        if self.topk is not None:
            values, indices = self.topk.sparsify(shard, flat)
            return Push(flat.numel(), values.numpy(), indices.numpy())
        dtype = torch.float16 if self.kind == "fp16" else torch.float32
        return Push(flat.numel(), flat.detach().to(dtype).numpy().copy())
