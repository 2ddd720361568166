"""The training hook that embeds a key's watermark: trigger samples in every batch, the
white-box regulariser in the loss, and the public watermark id in what is published.

Trigger inputs are normalised with the trainer's own `pipeline.stats`, i.e.
exactly as the served model's `PreprocessingSpec` turns a client's raw pixels
into model input; they are not augmented. Each batch gets
`triggers_per_batch` of them, drawn by cycling through key-seeded permutations
so every trigger is seen equally often.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from security.watermark.config import WatermarkConfig
from security.watermark.derive import derived_bytes
from security.watermark.key import WatermarkKey, load_key
from security.watermark.stats import binomial_test
from security.watermark.triggers import trigger_set
from security.watermark.whitebox import SignatureLoss, read_bits, resolve_layer, signature_bits
from training.hooks import PublishInfo, TrainingHook
from training.preprocess.normalize import to_model_input

if TYPE_CHECKING:
    from training.loop import Trainer


class WatermarkHook(TrainingHook):
    """Embeds the black-box trigger set and (when the key has bits) the white-box signature."""

    def __init__(self, key: WatermarkKey, config: WatermarkConfig) -> None:
        self.key = key
        self.config = config
        self.inputs: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.layer: str | None = None
        self.signature: SignatureLoss | None = None
        self.num_classes = 0
        seed = int.from_bytes(derived_bytes(key.secret_bytes, "training/sampling", 8), "big")
        self.generator = torch.Generator().manual_seed(seed & (2**63 - 1))
        self._queue: list[int] = []

    @classmethod
    def from_config(cls, config: WatermarkConfig) -> WatermarkHook:
        return cls(load_key(config.key_file), config)

    def attach(self, trainer: Trainer) -> None:
        self.num_classes = trainer.splits.num_classes
        triggers = trigger_set(self.key, trainer.splits.input_shape, self.num_classes)
        self.inputs = to_model_input(torch.from_numpy(triggers.pixels), trainer.pipeline.stats)
        self.labels = torch.from_numpy(triggers.labels)
        if self.key.whitebox_bits and self.config.whitebox_strength > 0:
            params = dict(trainer.model.named_parameters())
            shapes = {name: tuple(p.shape) for name, p in params.items()}
            self.layer = resolve_layer(shapes, self.key.whitebox_layer)
            size = params[self.layer].numel()
            self.signature = SignatureLoss(self.key, size, self.config.whitebox_strength)

    def _next_indices(self, count: int) -> torch.Tensor:
        assert self.labels is not None
        while len(self._queue) < count:
            self._queue.extend(torch.randperm(len(self.labels), generator=self.generator).tolist())
        taken, self._queue = self._queue[:count], self._queue[count:]
        return torch.tensor(taken, dtype=torch.int64)

    def state_dict(self) -> dict[str, Any]:
        """Where the trigger sampling stands, so a resumed run continues the same sequence."""
        return {
            "generator": self.generator.get_state(),
            "queue": torch.tensor(self._queue, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.generator.set_state(state["generator"])
            self._queue = [int(i) for i in state["queue"].tolist()]

    def on_batch(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inputs is None or self.labels is None:
            raise RuntimeError("WatermarkHook.attach(trainer) must run before training")
        index = self._next_indices(self.config.triggers_per_batch)
        trigger_inputs = self.inputs[index].to(device=inputs.device, dtype=inputs.dtype)
        trigger_targets = self.labels[index].to(device=targets.device, dtype=targets.dtype)
        return torch.cat([inputs, trigger_inputs]), torch.cat([targets, trigger_targets])

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.signature is None or self.layer is None:
            return None
        return self.signature(self._weight(model))

    def _weight(self, model: nn.Module) -> torch.Tensor:
        assert self.layer is not None
        params = dict(model.named_parameters())
        name = resolve_layer({n: tuple(p.shape) for n, p in params.items()}, self.layer)
        return params[name]

    @torch.no_grad()
    def publish_info(self, model: nn.Module) -> PublishInfo:
        """The public watermark id, and how well the trained model holds both marks: the
        trigger accuracy and signature bit error rate, each with the p-value that
        `watermark verify` would compute from them (a mark verifies below its threshold)."""
        metrics: dict[str, float] = {}
        if self.inputs is not None and self.labels is not None:
            was_training = model.training
            model.eval()
            predicted = model(self.inputs).argmax(1)
            model.train(was_training)
            matches = int((predicted == self.labels).sum())
            metrics["watermark_trigger_accuracy"] = matches / len(self.labels)
            chance = Fraction(1, self.num_classes)
            test = binomial_test(matches, len(self.labels), chance)
            metrics["watermark_blackbox_p_value"] = test.p_value
        if self.signature is not None and self.layer is not None:
            weights = self._weight(model).detach().cpu().numpy()
            found = read_bits(weights, self.signature.matrix.numpy())
            bits = self.key.whitebox_bits
            errors = int((found != signature_bits(self.key)).sum())
            metrics["watermark_whitebox_ber"] = errors / bits
            metrics["watermark_whitebox_p_value"] = binomial_test(
                bits - errors, bits, Fraction(1, 2)
            ).p_value
        return PublishInfo(watermark_id=self.key.watermark_id, metrics=metrics)
