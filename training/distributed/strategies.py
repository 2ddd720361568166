"""How workers keep one model: allreduce (DDP), local SGD, parameter server, hybrid.

A `Synchronizer` owns the part of a step that differs between strategies.
The worker loop calls `forward` for logits, `zero_grad`, backward on the loss,
then `step`; once per epoch `finish_epoch` (last communication, before
validation) and `end_epoch` (schedules, after validation).

- `AllreduceSync`: DDP over gloo, the compression setting's comm hook on a
  counting group, a local optimizer on every worker (identical updates).
- `LocalSgdSync` (allreduce with `sync_every` k > 1): every worker steps on its
  own gradients; parameters are averaged (float32 allreduce) every k-th step
  and at the end of each epoch. Optimizer state stays per worker.
- `ServerSync` (parameter_server): no local optimizer; each step pushes the
  shard gradients (compressed) to the server actors and copies the returned
  weights into the model.
- `HybridSync`: the parameters of `nn.Linear` layers (the large
  fully-connected ones) go through the servers as in `ServerSync`; the rest
  are averaged by DDP (compression hook included), DDP being told to ignore
  the Linear parameters, with a local optimizer for them.

Floating-point buffers (BatchNorm statistics) are averaged at each epoch's end
through the counting group; DDP does not broadcast them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.config import TrainConfig
from training.distributed.compression import PushEncoder, register_compression
from training.distributed.counting import ByteCounter
from training.distributed.interfaces import ServerClient
from training.distributed.server import partition
from training.loop import build_optimizer, build_scheduler

Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def server_param_names(model: nn.Module, strategy: str) -> list[str]:
    """Parameters that go through the parameter server: all, or those of nn.Linear layers."""
    if strategy == "parameter_server":
        return [name for name, _ in model.named_parameters()]
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            prefix = f"{module_name}." if module_name else ""
            names += [f"{prefix}{name}" for name, _ in module.named_parameters(recurse=False)]
    return names


def shard_layout(model: nn.Module, strategy: str, shards: int) -> list[list[str]]:
    """Parameter names per server shard for `strategy` (empty for allreduce)."""
    if strategy == "allreduce":
        return []
    wanted = set(server_param_names(model, strategy))
    sizes = [(name, p.numel()) for name, p in model.named_parameters() if name in wanted]
    return partition(sizes, shards)


def _step_scheduler(scheduler: Scheduler | None, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def _average(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    """Average float tensors in place across the group with one flat allreduce."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat /= group.size()
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].reshape(tensor.shape))
            offset += tensor.numel()


class Synchronizer:
    """Base: a plain model with a local optimizer over `local_params`."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        group: dist.ProcessGroup,
        local_params: list[nn.Parameter],
    ) -> None:
        self.model = model
        self.config = config
        self.group = group
        self.forward_module: nn.Module = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Scheduler | None = None
        if local_params:
            self.optimizer = build_optimizer(nn.ParameterList(local_params), config)
            self.scheduler = build_scheduler(self.optimizer, config)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_module(inputs)

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()

    def finish_epoch(self) -> None:
        """The epoch's last communication: float buffers (BatchNorm statistics) averaged."""
        _average([b for b in self.model.buffers() if b.is_floating_point()], self.group)

    def end_epoch(self, val_loss: float) -> None:
        """After validation: step the learning-rate schedule."""
        _step_scheduler(self.scheduler, val_loss)

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
        }

    def start(self, state: dict[str, Any] | None, rank: int, generation: int) -> None:
        """Begin an attempt: restore optimizer/scheduler from a checkpoint, if any."""
        if state is None:
            return
        if self.optimizer is not None and state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])


class AllreduceSync(Synchronizer):
    """DDP with the compression hook on the counting group."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        group: dist.ProcessGroup,
        raw_group: dist.ProcessGroup,
        ignore: list[str] | None = None,
    ) -> None:
        ignored = set(ignore or [])
        local = [p for name, p in model.named_parameters() if name not in ignored]
        super().__init__(model, config, group, local)
        if ignored:
            # DDP's documented-in-source way to leave parameters to another mechanism.
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, sorted(ignored)
            )
        ddp = DistributedDataParallel(model, process_group=raw_group, forward_sync_buffers=False)
        assert config.distributed is not None
        register_compression(ddp, config.distributed.compression, group)
        self.forward_module = ddp


class LocalSgdSync(Synchronizer):
    """Local steps; parameters averaged every `sync_every` steps and at each epoch's end."""

    def __init__(self, model: nn.Module, config: TrainConfig, group: dist.ProcessGroup) -> None:
        super().__init__(model, config, group, list(model.parameters()))
        assert config.distributed is not None
        self.period = config.distributed.sync_every
        self.unsynced = 0

    def step(self) -> None:
        super().step()
        self.unsynced += 1
        if self.unsynced >= self.period:
            self._sync()

    def _sync(self) -> None:
        _average(list(self.model.parameters()), self.group)
        self.unsynced = 0

    def finish_epoch(self) -> None:
        if self.unsynced:
            self._sync()
        super().finish_epoch()


class ServerSync(Synchronizer):
    """Parameters in `layout` go through the server shards; the rest by DDP (hybrid)."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        group: dist.ProcessGroup,
        raw_group: dist.ProcessGroup,
        servers: ServerClient,
        layout: list[list[str]],
        counter: ByteCounter,
    ) -> None:
        assert config.distributed is not None
        served = {name for names in layout for name in names}
        params = dict(model.named_parameters())
        # The rest (hybrid) by DDP; a pure parameter server has no DDP and no local optimizer.
        self.remote: AllreduceSync | None = None
        if len(served) < len(params):
            self.remote = AllreduceSync(model, config, group, raw_group, sorted(served))
        super().__init__(model, config, group, [])
        if self.remote is not None:
            self.forward_module = self.remote.forward_module
        self.servers = servers
        self.shard_params = [[params[name] for name in names] for names in layout]
        self.layout = layout
        self.counter = counter
        self.encoder = PushEncoder(config.distributed.compression)
        self.generation = 0

    def step(self) -> None:
        pushes = []
        for shard, params in enumerate(self.shard_params):
            flat = torch.cat(
                [torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
            )
            pushes.append(self.encoder.encode(shard, flat))
        weights = self.servers.exchange(self.generation, pushes)
        self.counter.add(sum(push.nbytes for push in pushes))
        self.counter.add(sum(int(w.nbytes) for w in weights))
        self._copy_in(weights)
        if self.remote is not None:
            self.remote.step()

    def _copy_in(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for params, flat in zip(self.shard_params, weights, strict=True):
                values = torch.tensor(flat)  # a copy: arrays from Ray are read-only
                offset = 0
                for param in params:
                    param.copy_(values[offset : offset + param.numel()].reshape(param.shape))
                    offset += param.numel()

    def finish_epoch(self) -> None:
        if self.remote is not None:
            self.remote.finish_epoch()
        else:
            super().finish_epoch()

    def end_epoch(self, val_loss: float) -> None:
        if self.remote is not None:
            self.remote.end_epoch(val_loss)
        if self.group.rank() == 0:
            self.servers.end_epoch(val_loss)

    def state(self) -> dict[str, Any]:
        state = self.remote.state() if self.remote is not None else super().state()
        state["servers"] = self.servers.states()
        return state

    def start(self, state: dict[str, Any] | None, rank: int, generation: int) -> None:
        """Rank 0 loads the servers (from the checkpoint or the model); all pull weights."""
        if self.remote is not None:
            self.remote.start(state, rank, generation)
        self.generation = generation
        if rank == 0:
            if state is not None and state.get("servers"):
                shard_states = state["servers"]
            else:
                named = dict(self.model.named_parameters())
                shard_states = [
                    {"params": {name: named[name].detach().clone() for name in names}}
                    for names in self.layout
                ]
            self.servers.load(generation, shard_states)
        dist.barrier()  # the default group: torch does not know the counting wrapper
        self._copy_in(self.servers.weights())
