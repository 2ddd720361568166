"""Training checkpoints: all a run needs to resume, loaded without pickle (`weights_only`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from headrace.errors import CheckpointError

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(run_dir: Path) -> Path:
    """Where a run keeps its latest checkpoint."""
    return run_dir / CHECKPOINT_FILE


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a killed run leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    torch.save(state, temp)
    os.replace(temp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint file, or the checkpoint inside a run folder."""
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; pass a run folder or its {CHECKPOINT_FILE}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from exc
    except Exception as exc:  # torch raises several types for bad files
        # not torch's text: for a file that is no checkpoint it is '105', or a page that ends
        # in advice to load it with weights_only=False (arbitrary code execution)
        raise CheckpointError(
            f"{path} is not a torch checkpoint (damaged, truncated or another kind of file); "
            f"pass a run folder or its {CHECKPOINT_FILE}"
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a headrace training checkpoint")
    return state
