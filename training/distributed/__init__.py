"""Distributed training on Ray: allreduce (DDP), parameter server, hybrid, gradient compression.

`DistributedConfig` (the job spec's `distributed:` section) lives in `config.py`;
`fit_distributed` (in `fit.py`) is the entry point the training recipe calls.
See docs/distributed.md. `training.config` imports this package for the config
alone, so the engine is loaded on first use (PEP 562) to avoid an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.distributed.config import DistributedConfig

if TYPE_CHECKING:
    from training.distributed.fit import DistributedFit, DistributedSummary, fit_distributed

__all__ = ["DistributedConfig", "DistributedFit", "DistributedSummary", "fit_distributed"]


def __getattr__(name: str) -> Any:
    if name in {"DistributedFit", "DistributedSummary", "fit_distributed"}:
        from training.distributed import fit

        return getattr(fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
