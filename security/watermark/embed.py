"""Marking models: train a new one with the watermark, or fine-tune a published version with it.

Training a new model is the ordinary recipe with `TrainConfig.watermark` set.
Fine-tuning starts from a published version's torch weights (`weights.pt`,
loaded verified), keeps the preprocessing the version was served with, trains
on its dataset with the hooks the config asks for (the watermark hook among
them, adversarial training when the version had it, or none for a clean fine-tune),
and publishes the result as a new
version with `finetuned_from` in its lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from headrace.errors import ConfigError
from security.adversarial.config import LINEAGE_KEY as ADVERSARIAL_LINEAGE
from security.adversarial.config import AdversarialConfig
from serving.repository import ModelVersion
from training.config import TrainConfig
from training.datasets import DatasetSplits, ShardSource
from training.hooks import PublishInfo, TrainingHook, build_hooks
from training.loop import EpochCallback
from training.preprocess import BatchPipeline, PreprocessConfig
from training.preprocess.normalize import PIXEL_SCALE, ChannelStats
from training.published import load_published_model
from training.recipe import TrainRecipe, TrainReport

ARCHITECTURE_OPTIONS = ("width", "dropout")
"""`TrainConfig` fields a version records in `architecture_options` (`training.recipe`)."""

SPLIT_OPTIONS = ("seed", "val_fraction", "test_fraction")
"""`TrainConfig` fields that pick the train/validation/test split (`load_splits`)."""

FINETUNED_FROM = "finetuned_from"
"""Lineage key of a fine-tuned version: the `name:version` it started from."""


class _FineTuneLineage(TrainingHook):
    """Records which version a fine-tuned model started from."""

    def __init__(self, source: ModelVersion) -> None:
        self.source = source

    def publish_info(self, model: nn.Module) -> PublishInfo:
        return PublishInfo(lineage={FINETUNED_FROM: f"{self.source.name}:{self.source.version}"})


class FineTuneRecipe(TrainRecipe):
    """`TrainRecipe` that starts from a published version instead of fresh weights."""

    def __init__(
        self, config: TrainConfig, source: ModelVersion, on_epoch: EpochCallback | None = None
    ) -> None:
        super().__init__(config, on_epoch)
        self.source = source

    def initial_model(self, splits: DatasetSplits) -> nn.Module:
        """The published model, after checking that the dataset fits it."""
        served = self.source.config
        dims, classes = list(served.inputs[0].dims), served.outputs[0].dims[-1]
        if list(splits.input_shape) != dims or splits.num_classes != classes:
            raise ConfigError(
                f"dataset {self.config.dataset!r} has inputs {list(splits.input_shape)} and "
                f"{splits.num_classes} classes but model {self.source.name!r} takes {dims} and "
                f"answers {classes}; fine-tune on the dataset the model was trained on"
            )
        trained_on = self.source.metadata.lineage.get("train_samples")
        if isinstance(trained_on, int) and trained_on != len(splits.train):
            # another folder of the same dataset: its split is not the source's, so the test
            # images would not be those the source was measured on (some it trained on)
            raise ConfigError(
                f"the {self.config.dataset} data given ({_data_named(self.config)}) splits into "
                f"{len(splits.train)} training images, but {self.source.name!r} version "
                f"{self.source.version} was trained on {trained_on}: pass the data it was "
                "trained on"
            )
        return load_published_model(self.source).train()

    def adapt_pipeline(self, pipeline: BatchPipeline) -> None:
        """Keep the normalisation clients of the published model already apply."""
        spec = self.source.config.preprocessing
        if spec is None:
            return
        if abs(spec.scale - PIXEL_SCALE) > 1e-12:
            raise ConfigError(
                f"model {self.source.name!r} scales pixels by {spec.scale}, not 1/255; "
                "it cannot be fine-tuned by this recipe"
            )
        pipeline.stats = ChannelStats(tuple(spec.mean), tuple(spec.std))

    def hooks(self) -> list[TrainingHook]:
        return [*build_hooks(self.config), _FineTuneLineage(self.source)]


def _data_named(config: TrainConfig) -> str:
    if config.data_source is not None:
        return "ingested shards"
    return "embedded" if config.data_dir is None else f"--data-dir {config.data_dir}"


def finetune_config(
    source: ModelVersion, *, data_root: Path | None = None, **overrides: Any
) -> TrainConfig:
    """A config that continues `source` on its own dataset and publishes beside it.

    Defaults: the version's dataset (or the same selection of ingested shards, read
    from `data_root`, by default the process's data root), seed, split fractions and
    preprocessing (from its lineage), 3 epochs at a constant learning rate, no early
    stopping; `overrides` win (e.g. `epochs`, `learning_rate`, `data_dir`,
    `watermark`, `name`). The architecture and its options (`width`,
    `dropout`) are the version's own and cannot be overridden: training starts
    from its weights, and the result is published with them, so that its
    `weights.pt` loads back. Nor can the seed and split fractions its lineage
    records (they pick its test split), and a version trained with differential
    privacy is refused (`refuse_private`). An adversarially trained version is
    fine-tuned under the same attack (its lineage's `adversarial_training`, without the
    warm-up ramp), so that the result keeps its robustness.
    """
    lineage = source.metadata.lineage
    refuse_private(source, "fine-tuning it")
    architecture = _architecture(source)
    changed = sorted(k for k, v in architecture.items() if k in overrides and overrides[k] != v)
    if changed:
        raise ConfigError(
            f"cannot fine-tune model {source.name!r} with another {', '.join(changed)}: "
            f"fine-tuning keeps the published architecture "
            f"({', '.join(f'{k} {v}' for k, v in architecture.items())}); "
            "train a new model with `headrace train` instead"
        )
    split = {k: lineage[k] for k in SPLIT_OPTIONS if k in lineage}
    moved = sorted(k for k, v in split.items() if k in overrides and overrides[k] != v)
    if moved:
        raise ConfigError(
            f"cannot fine-tune model {source.name!r} version {source.version} with another "
            f"{', '.join(f'{k} ({overrides[k]}; it was trained with {split[k]})' for k in moved)}:"
            " the seed and split fractions pick the train/validation/test split, and another "
            "split would put images it trained on into the test split; leave --seed out"
        )
    values: dict[str, Any] = {
        **architecture,
        "dataset": lineage.get("dataset", "digits"),
        "seed": 0,
        **split,
        # trained on ingested shards: the same records (else its test split would hold
        # training images of the source)
        "data_source": ShardSource.from_lineage(lineage, data_root),
        "epochs": 3,
        "lr_schedule": "none",
        "patience": 0,
        "name": source.name,
        "repository": Path(source.path).parent.parent,
    }
    preprocess = lineage.get("preprocess")
    if isinstance(preprocess, str):
        values["preprocess"] = PreprocessConfig.model_validate_json(preprocess)
    adversarial = lineage.get(ADVERSARIAL_LINEAGE)
    if isinstance(adversarial, str):
        # an adversarially trained source stays robust: its fine-tune trains under the same
        # attack, at full epsilon from the first epoch (the source has been through the ramp)
        trained = AdversarialConfig.model_validate_json(adversarial)
        values["adversarial"] = trained.model_copy(update={"warmup_epochs": 0})
    values.update(overrides)
    return TrainConfig(**values)


def refuse_private(source: ModelVersion, job: str) -> None:
    """ConfigError for a version trained with differential privacy: `job` (fine-tuning,
    compressing) trains on the data without privacy, so its result would lose the guarantee
    while it kept the model's name (and, as its next version, replaced it in serving)."""
    epsilon = source.metadata.dp_epsilon
    if epsilon is not None:
        raise ConfigError(
            f"model {source.name!r} version {source.version} was trained with differential "
            f"privacy (epsilon {epsilon:g}); {job} trains on the data without privacy and "
            "would publish a model without that guarantee, so it is refused; train a new "
            "model privately instead (headrace train --dp-epsilon ...)"
        )


def _architecture(source: ModelVersion) -> dict[str, Any]:
    """The version's architecture and the options it was built with (defaults when its
    metadata predates `architecture_options`)."""
    options = source.metadata.architecture_options
    defaults = TrainConfig.model_fields
    return {
        "model": source.metadata.architecture,
        **{k: options.get(k, defaults[k].default) for k in ARCHITECTURE_OPTIONS},
    }


def finetune_published(
    source: ModelVersion, config: TrainConfig, on_epoch: EpochCallback | None = None
) -> TrainReport:
    """Fine-tune `source` as `config` says and publish it (when `config.publish`)."""
    recipe = FineTuneRecipe(config, source, on_epoch)
    try:
        recipe.setup()
        recipe.run()
        return recipe.save()
    finally:
        recipe.cleanup()
