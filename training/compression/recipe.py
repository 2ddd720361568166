"""The compression job: a published version -> [prune] -> fine-tune -> [QAT] -> ONNX -> publish.

`CompressRecipe` is the fine-tuning recipe (`security.watermark.embed.FineTuneRecipe`,
the training recipe starting from a published model) with these steps changed:

- `initial_model` prunes channels (`training.compression.pruning`) and/or wraps
  the model for quantization-aware training (`training.compression.quantization`);
- `hooks` adds the distillation hook when a teacher is named;
- `run` has up to two phases: fine-tuning (after pruning or with a teacher,
  `epochs`) and then QAT (`qat_epochs`), each the ordinary training loop;
- `save` exports ONNX (QDQ with integer weights after QAT, plain otherwise),
  checks ONNX Runtime against torch, measures test accuracy, size and latency
  on ONNX Runtime next to the source's, and publishes a new version.

Compressed versions are new versions of the source's model name (or `name`),
with the same config.json (inputs, outputs, labels) and the source version's
own preprocessing (in their metadata.json), so serving hot-reloads them
unchanged; their lineage holds `compressed_from`, the settings and the source's
split (dataset, seed, fractions and, for shards, the shard selection), their
metrics the measurements. They carry no `weights.pt`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from headrace.errors import ConfigError
from headrace.settings import load_settings
from security.watermark.embed import FineTuneRecipe, finetune_config, refuse_private
from serving.repository import ModelRepository, ModelVersion
from training.compression.config import CompressConfig
from training.compression.distillation import DistillationHook
from training.compression.measure import compare_latency, file_bytes, onnx_accuracy
from training.compression.onnx_export import export_quantized, verify_quantized
from training.compression.pruning import count_parameters, prune_channels
from training.compression.quantization import QatSession
from training.compression.sources import (
    COMPRESSED_FROM,
    load_teacher,
    passed_over,
    uncompressed_version,
    version_ref,
)
from training.config import TrainConfig
from training.datasets import DatasetSplits, unread_data_dir, unread_root
from training.datasets.shards import SHARD_LINEAGE_KEYS
from training.export import export_onnx, verify_onnx
from training.hooks import PublishInfo, TrainingHook
from training.loop import EpochCallback, FitResult, Trainer
from training.recipe import REPORT_FILE, TrainReport

QDQ_TOLERANCE = 0.05
"""Largest logit difference ever allowed between ONNX Runtime and torch on a QDQ model: the two
round an activation sitting exactly between two steps differently now and then. Models with small
logits are allowed less (`training.compression.onnx_export.allowed_difference`)."""


class CompressReport(TrainReport):
    """What a compression job reports (`headrace compress --json` prints it).

    `test_accuracy` is measured on ONNX Runtime with the exported file (what
    serving runs); `torch_test_accuracy` is the torch model's before export.
    """

    source: str
    compression: str
    source_test_accuracy: float
    torch_test_accuracy: float
    test_samples: int
    model_bytes: int
    source_model_bytes: int
    parameters: int
    source_parameters: int
    latency_s: dict[int, float]
    source_latency_s: dict[int, float]

    @property
    def size_ratio(self) -> float:
        return self.model_bytes / self.source_model_bytes

    @property
    def parameter_ratio(self) -> float:
        return self.parameters / self.source_parameters


def compression_train_config(compress: CompressConfig, source: ModelVersion) -> TrainConfig:
    """The fine-tuning config: the source's dataset, split and preprocessing, the job's schedule."""
    finetune = _has_finetune(compress)  # else QAT is the only phase
    overrides: dict[str, Any] = {
        "epochs": compress.epochs if finetune else compress.qat_epochs,
        "learning_rate": compress.learning_rate if finetune else compress.qat_learning_rate,
        "batch_size": compress.batch_size,
        "name": compress.name or source.name,
        "repository": compress.repository,
        "runs_dir": compress.runs_dir,
        "publish": False,  # this recipe publishes its own way (save)
        "progress": compress.progress,
    }
    if compress.seed is not None:
        overrides["seed"] = compress.seed
    lineage = source.metadata.lineage
    if compress.data_dir is not None and (problem := unread_data_dir(lineage, version_ref(source))):
        raise ConfigError(problem)
    # HEADRACE_DATA_DIR, a default for every dataset, is not checked
    data_dir = compress.data_dir or load_settings().data_dir
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if compress.data_root is not None and (problem := unread_root(lineage, version_ref(source))):
        raise ConfigError(problem)
    try:
        return finetune_config(source, data_root=compress.data_root, **overrides)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"cannot fine-tune {version_ref(source)}: {problems}") from None


def _has_finetune(compress: CompressConfig) -> bool:
    return compress.prune is not None or compress.distill_from is not None


class CompressRecipe(FineTuneRecipe):
    """The fine-tuning recipe with pruning, distillation and QAT (see the module docstring)."""

    def __init__(
        self,
        compress: CompressConfig,
        source: ModelVersion,
        teacher: nn.Module | None = None,
        teacher_ref: str | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        super().__init__(compression_train_config(compress, source), source, on_epoch)
        self.compress = compress
        self.teacher = teacher
        self.teacher_ref = teacher_ref
        self.qat: QatSession | None = None
        self.fits: list[FitResult] = []
        self.source_parameters = 0

    def initial_model(self, splits: DatasetSplits) -> nn.Module:
        """The published model, pruned and/or wrapped for QAT as the job asks."""
        model = super().initial_model(splits)
        cfg = self.compress
        self.source_parameters = count_parameters(model)
        if cfg.prune is not None:
            model = prune_channels(
                model, cfg.target_sparsity, self._example_input(splits), method=cfg.prune
            ).train()
        if cfg.quant_bits is not None and not _has_finetune(cfg):
            self.qat = QatSession(model, cfg.quant_bits, cfg.quantize_activations)
        return model

    def _example_input(self, splits: DatasetSplits) -> torch.Tensor:
        pixels = splits.train.images[:8]
        spec = self.source.config.preprocessing
        x = spec.apply(pixels) if spec is not None else pixels.astype("float32")
        return torch.from_numpy(x)

    def hooks(self) -> list[TrainingHook]:
        """The fine-tuning hooks, plus distillation from the teacher when there is one."""
        hooks = super().hooks()
        if self.teacher is None:
            return hooks
        cfg = self.compress
        return [
            *hooks,
            DistillationHook(self.teacher, temperature=cfg.temperature, alpha=cfg.alpha),
        ]

    def run(self) -> None:
        """Fine-tune (after pruning / with a teacher), then QAT; evaluate the result in torch."""
        cfg = self.compress
        trainer, splits = self._require()
        if _has_finetune(cfg) and cfg.quant_bits is not None:
            self.fits.append(trainer.fit(self.on_epoch))
            self.qat = QatSession(trainer.model, cfg.quant_bits, cfg.quantize_activations)
            qat_config = self.config.model_copy(
                update={"epochs": cfg.qat_epochs, "learning_rate": cfg.qat_learning_rate}
            )
            self._trainer = Trainer(
                trainer.model, splits, trainer.pipeline, qat_config, self.run_dir / "qat",
                self.hooks(),
            )  # fmt: skip
        super().run()
        if self._fit is not None:
            self.fits.append(self._fit)

    def save(self) -> CompressReport:
        """Export, verify, measure and (when `publish`) publish; returns the report."""
        trainer, splits = self._require()
        fit, test = self._fit, self._test
        if fit is None or test is None:
            raise RuntimeError("run() must finish before save()")
        cfg = self.compress
        model = self.qat.export_model() if self.qat is not None else trainer.model.eval()
        shape = splits.input_shape
        spec = self.source.config.preprocessing
        with tempfile.TemporaryDirectory(prefix="headrace-compress-") as tmp:
            path = Path(tmp) / "model.onnx"
            if self.qat is not None:
                export_quantized(model, shape, path, self.qat.bits)
                test_inputs = trainer.pipeline.eval_batch(torch.from_numpy(splits.test.images))
                noise = torch.randn((64, *shape), generator=torch.Generator().manual_seed(0))
                diff = verify_quantized(model, path, [test_inputs, noise], QDQ_TOLERANCE)
            else:
                export_onnx(model, shape, path)
                diff = verify_onnx(model, path, shape)
            accuracy = onnx_accuracy(path, splits.test, spec)
            source_accuracy = onnx_accuracy(self.source.model_file, splits.test, spec)
            latency = compare_latency(
                {"source": self.source.model_file, "compressed": path},
                shape,
                seconds=cfg.latency_seconds,
            )
            report = CompressReport(
                model=self.config.model,
                name=self.config.model_name,
                dataset=self.config.dataset,
                version=None,
                test_accuracy=accuracy.accuracy,
                test_balanced_accuracy=test.balanced_accuracy,
                test_loss=test.loss,
                val_loss=fit.best_val_loss,
                epochs_run=sum(f.epochs_run for f in self.fits),
                best_epoch=fit.best_epoch,
                stopped_early=fit.stopped_early,
                train_seconds=sum(f.train_seconds for f in self.fits),
                onnx_max_abs_diff=diff,
                run_dir=str(self.run_dir),
                repository=str(cfg.repository) if cfg.publish else None,
                source=version_ref(self.source),
                compression=cfg.summary(),
                source_test_accuracy=source_accuracy.accuracy,
                torch_test_accuracy=test.accuracy,
                test_samples=accuracy.samples,
                model_bytes=file_bytes(path),
                source_model_bytes=file_bytes(self.source.model_file),
                parameters=count_parameters(model),
                source_parameters=self.source_parameters,
                latency_s=latency["compressed"].seconds,
                source_latency_s=latency["source"].seconds,
            )
            if cfg.publish:
                report.version = self._publish_compressed(path, report, trainer)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / REPORT_FILE).write_text(report.model_dump_json(indent=2))
        return report

    # -- publishing --------------------------------------------------------------------------

    def _publish_compressed(self, path: Path, report: CompressReport, trainer: Trainer) -> int:
        cfg = self.compress
        repository = ModelRepository(cfg.repository)
        config = self.source.config.model_copy(update={"name": report.name})
        info = PublishInfo()
        for hook in trainer.hooks:
            info = info.merged(hook.publish_info(trainer.model))
        source_lineage = self.source.metadata.lineage
        metrics = {
            "test_accuracy": report.test_accuracy,
            "torch_test_accuracy": report.torch_test_accuracy,
            "source_test_accuracy": report.source_test_accuracy,
            "model_bytes": float(report.model_bytes),
            "source_model_bytes": float(report.source_model_bytes),
            "size_ratio": report.size_ratio,
            "parameters": float(report.parameters),
            "source_parameters": float(report.source_parameters),
            "parameter_ratio": report.parameter_ratio,
            "onnx_max_abs_diff": report.onnx_max_abs_diff or 0.0,
            "epochs_run": float(report.epochs_run),
            **{f"latency_b{b}_s": s for b, s in report.latency_s.items()},
            **{f"source_latency_b{b}_s": s for b, s in report.source_latency_s.items()},
            **info.metrics,
        }
        lineage: dict[str, str | int | float | bool | None] = {
            **{k: source_lineage[k] for k in _SPLIT_KEYS if k in source_lineage},
            **info.lineage,
            COMPRESSED_FROM: report.source,
            "compression": report.compression,
            "compression_prune": cfg.prune,
            "compression_sparsity": cfg.target_sparsity if cfg.prune else None,
            "compression_quant": cfg.quant,
            "compression_activations": cfg.quantize_activations if cfg.quant else None,
            "compression_distill_from": self.teacher_ref,
            "run_dir": str(self.run_dir),
            "compressed_at_unix": int(time.time()),
        }
        published = repository.publish(
            config,
            path,
            architecture=self.source.metadata.architecture,
            # The source's width/dropout: what its layers, quantized, are matched against when
            # a watermark's signature is read back (security/watermark/weights.py).
            architecture_options=self.source.metadata.architecture_options,
            metrics=metrics,
            lineage=lineage,
        )
        return published.version


_SPLIT_KEYS = (
    "dataset", "seed", "val_fraction", "test_fraction", "preprocess",
    *SHARD_LINEAGE_KEYS,
)  # fmt: skip
"""Source lineage copied to a compressed version: enough to rebuild its test split."""


def _say_passed_over(
    on_note: Callable[[str], None] | None,
    repository: ModelRepository,
    taken: ModelVersion,
    doing: str,
    flag: str,
) -> None:
    """Tell `on_note` which version a job defaulted to if it passed over newer folders."""
    if on_note is not None and (why := passed_over(repository, taken)) is not None:
        on_note(
            f"{doing} {version_ref(taken)}, the latest complete uncompressed version: {why}; "
            f"pass {flag} to choose"
        )


def compress_published(
    config: CompressConfig,
    on_epoch: EpochCallback | None = None,
    on_note: Callable[[str], None] | None = None,
) -> CompressReport:
    """Run a whole compression job as `config` says; returns its report. `on_note` hears
    which version a job defaulted to when newer folders of the model were passed over."""
    torch.set_num_threads(1)
    repository = ModelRepository(config.repository)
    repository.require_folder()  # else a mistyped --repository said 'no models are published'
    source = uncompressed_version(repository, config.source, config.source_version)
    if config.source_version is None:
        _say_passed_over(on_note, repository, source, "compressing", "--from-version N")
    refuse_private(source, "compressing it")  # before the teacher loads
    if config.publish:  # fail now, not after training; preprocessing may differ (per version)
        target = config.name or source.name
        repository.check_interface(source.config.model_copy(update={"name": target}))
    teacher, teacher_ref = None, None
    if config.distill_from is not None:
        teacher, teacher_version = load_teacher(repository, config.distill_from, source)
        teacher_ref = version_ref(teacher_version)
        if ":" not in config.distill_from:
            _say_passed_over(
                on_note,
                repository,
                teacher_version,
                "distilling from",
                "--distill-from NAME:VERSION",
            )
    job = CompressRecipe(config, source, teacher, teacher_ref, on_epoch)
    try:
        job.setup()
        job.run()
        return job.save()
    finally:
        job.cleanup()
