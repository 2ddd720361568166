"""The protocol every job recipe implements: training, tuning trials, fine-tuning, compression."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel


class Recipe(Protocol):
    """A job in four steps, called in this order by whoever runs it (CLI, job agent)."""

    def setup(self) -> None:
        """Load data, build the model; fail here on any configuration problem."""

    def run(self) -> None:
        """Do the long work, reporting progress."""

    def save(self) -> BaseModel:
        """Persist the outcome (export, publish) and return a report."""

    def cleanup(self) -> None:
        """Release resources; safe to call after a failure."""
