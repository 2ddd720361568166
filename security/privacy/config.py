"""The privacy budget of a training run, what it spent, and what distributed DP supports.

`PrivacyConfig` is the `privacy` section of `TrainConfig` and of a training-job
spec: self-contained, pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from headrace.errors import ConfigError

Accountant = Literal["prv", "rdp"]


class PrivacyConfig(BaseModel):
    """A differential-privacy budget for one training run (DP-SGD)."""

    model_config = ConfigDict(extra="forbid")

    target_epsilon: float = Field(
        gt=0,
        le=1000,
        description="Privacy budget epsilon for the whole run; smaller is more private "
        "(1 strong, 3 typical, 8 weak).",
    )
    target_delta: float = Field(
        default=1e-5,
        gt=0,
        lt=1,
        description="Probability that the epsilon guarantee fails; keep it well below "
        "1 / training-set size.",
    )
    max_grad_norm: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Each sample's gradient is clipped to this L2 norm before noise is added.",
    )
    accountant: Accountant = Field(
        default="prv",
        description="prv: numerical privacy-loss-distribution accounting (Opacus's default, "
        "tightest); rdp: Renyi-DP accounting (looser, classic).",
    )


class PrivacySpent(BaseModel):
    """What a private run spent: the budget that its published model carries."""

    epsilon: float = Field(description="Spent epsilon for `delta`, from the accountant.")
    delta: float
    noise_multiplier: float = Field(description="Noise std / max_grad_norm of every step.")
    sample_rate: float = Field(description="Poisson sampling probability of each sample.")
    steps: int = Field(description="Optimizer steps taken (each one noised and accounted).")
    accountant: Accountant


def check_distributed_privacy(workers: int, strategy: str) -> None:
    """Refuse distributed settings that differentially private training does not support.

    Supported: one training process (`workers == 1`; the strategy is then moot).
    Per-sample clipping, Poisson sampling, noise and the accountant all run in
    that process, and the reported epsilon covers every step it took.

    Refused: more than one worker, whatever the strategy. A correct multi-worker
    DP-SGD needs every worker to Poisson-sample with the global rate, clip each
    sample's gradient before any averaging, and the noise to be added exactly
    once per global step (Opacus's DPDDP and distributed DPOptimizer do this for
    allreduce over torch.distributed). headrace's Ray workers average gradients
    with their own allreduce, parameter servers, local-SGD periods and gradient
    compression, none of which follow those rules, so a budget reported for
    them would not be a guarantee. Train privately with one worker instead.
    Raises `ConfigError` saying so.
    """
    if workers > 1:
        raise ConfigError(
            f"differentially private training runs in one process, not {workers} workers with "
            f"strategy {strategy!r} (the noise and the accountant would not cover their "
            "averaging): set distributed.workers to 1 or drop the privacy section"
        )
