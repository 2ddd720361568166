"""Compression job parts: config checks, source and teacher choice, measurements, report table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from shard_models import SELECTED_TEST_SAMPLES, publish_shard_trained
from torch import nn

from headrace.errors import ConfigError, DatasetError, ModelNotFound, RepositoryError
from security.adversarial import AdversarialConfig
from security.watermark.embed import finetune_config
from serving.model_config import ModelConfig, PreprocessingSpec, TensorSpec
from serving.repository import ModelRepository, ModelVersion
from training.compression.config import CompressConfig, parse_model_ref
from training.compression.measure import compare_latency, onnx_accuracy
from training.compression.report import (
    CompressionReport,
    ReportRow,
    build_report,
    format_report,
    stored_weights,
)
from training.compression.sources import (
    Renormalized,
    load_teacher,
    uncompressed_version,
)
from training.datasets.base import ImageArrays
from training.export import export_onnx
from training.models import build_model
from training.published import WEIGHTS_FILE, load_published_model, save_weights

SPEC = PreprocessingSpec(mean=[0.1], std=[0.3])


def test_config_needs_a_method_and_valid_values() -> None:
    with pytest.raises(ValidationError, match="nothing to do"):
        CompressConfig(source="m")
    with pytest.raises(ValidationError, match="sparsity needs a pruning method"):
        CompressConfig(source="m", quant="int8", sparsity=0.3)
    for sparsity in (0.0, 1.0, 1.5):
        with pytest.raises(ValidationError, match="sparsity"):
            CompressConfig(source="m", prune="l1", sparsity=sparsity)
    with pytest.raises(ValidationError, match="quant"):
        CompressConfig(source="m", quant="int2")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="invalid model reference"):
        CompressConfig(source="m", distill_from="teacher:zero")
    config = CompressConfig(source="m", prune="l2", quant="int4", distill_from="t:3")
    assert config.target_sparsity == 0.5 and config.quant_bits == 4
    assert config.summary() == "prune-l2-0.5+distill+int4"


def test_model_references() -> None:
    assert parse_model_ref("lenet5-digits") == ("lenet5-digits", None)
    assert parse_model_ref("lenet5-digits:12") == ("lenet5-digits", 12)
    for bad in ("a:0", "a:-1", "../x", "a:b"):
        with pytest.raises(ValueError):
            parse_model_ref(bad)


def _publish(
    repo: ModelRepository,
    tmp: Path,
    name: str,
    classes: int = 10,
    lineage: dict | None = None,
    weights: bool = True,
    spec: PreprocessingSpec = SPEC,
    dp_epsilon: float | None = None,
    watermark_id: str | None = None,
) -> ModelVersion:
    torch.manual_seed(0)  # the same weights whichever tests ran before (QAT export checks)
    model = build_model("lenet5", num_classes=classes)
    onnx_file = export_onnx(model, (1, 28, 28), tmp / f"{name}.onnx")
    config = ModelConfig(
        name=name,
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[classes])],
        preprocessing=spec,
    )
    extra = {WEIGHTS_FILE: save_weights(model, tmp / f"{name}.pt")} if weights else {}
    return repo.publish(
        config, onnx_file, architecture="lenet5", lineage=lineage or {}, extra_files=extra,
        dp_epsilon=dp_epsilon, watermark_id=watermark_id,
    )  # fmt: skip


def test_source_is_the_latest_uncompressed_version(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    _publish(repo, tmp_path, "m")
    _publish(repo, tmp_path, "m")
    compressed = {"compressed_from": "m:2", "compression": "int8"}
    _publish(repo, tmp_path, "m", lineage=compressed, weights=False)
    assert uncompressed_version(repo, "m", None).version == 2
    assert uncompressed_version(repo, "m", 1).version == 1
    with pytest.raises(ConfigError, match=r"already compressed .*--model m --from-version 2"):
        uncompressed_version(repo, "m", 3)
    _publish(repo, tmp_path, "only", lineage=compressed, weights=False)
    with pytest.raises(ModelNotFound, match="only compressed versions"):
        uncompressed_version(repo, "only", None)
    # a compressed version has no torch weights: loading it says where it came from
    with pytest.raises(RepositoryError, match=r"compressed model \(int8, from m:2\).*use its"):
        load_published_model(repo.get("m", 3))


def test_teacher_must_fit_the_student(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    student = _publish(repo, tmp_path, "student")
    _publish(repo, tmp_path, "five", classes=5)
    with pytest.raises(ConfigError, match=r"does not fit student student:1: 5 vs 10 classes"):
        load_teacher(repo, "five", student)
    with pytest.raises(ConfigError, match="teacher 'missing' not found"):
        load_teacher(repo, "missing", student)
    _publish(repo, tmp_path, "same")
    teacher, version = load_teacher(repo, "same:1", student)
    assert version.name == "same" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    other = PreprocessingSpec(mean=[0.5], std=[0.2])
    _publish(repo, tmp_path, "renorm", spec=other)
    wrapped, _ = load_teacher(repo, "renorm", student)
    assert isinstance(wrapped, Renormalized)
    compressed = {"compressed_from": "same:1", "compression": "int8"}
    _publish(repo, tmp_path, "same", lineage=compressed, weights=False)
    hint = r"distill from its source instead \(--distill-from same:1\)"
    with pytest.raises(ConfigError, match=hint):
        load_teacher(repo, "same:2", student)


def test_renormalized_teacher_sees_its_own_normalisation() -> None:
    student, own = SPEC, PreprocessingSpec(scale=1.0, mean=[100.0], std=[50.0])
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

    pixels = np.random.default_rng(0).integers(0, 256, (2, 1, 4, 4)).astype(np.uint8)
    Renormalized(Probe(), student, own)(torch.from_numpy(student.apply(pixels)))
    np.testing.assert_allclose(seen[0].numpy(), own.apply(pixels), rtol=1e-5, atol=1e-5)


def test_onnx_accuracy_and_latency(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    path = export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    pixels = np.random.default_rng(0).integers(0, 256, (20, 1, 28, 28)).astype(np.uint8)
    with torch.no_grad():
        predicted = model(torch.from_numpy(SPEC.apply(pixels))).argmax(1).numpy()
    labels = predicted.copy()
    labels[:5] = (labels[:5] + 1) % 10  # exactly 5 of 20 wrong
    measured = onnx_accuracy(path, ImageArrays(pixels, labels), SPEC, batch=8)
    assert measured.accuracy == pytest.approx(0.75) and measured.samples == 20
    timed = compare_latency({"a": path, "b": path}, (1, 28, 28), batches=(1, 4), seconds=0.05)
    for latency in timed.values():
        assert set(latency.seconds) == {1, 4} and all(s > 0 for s in latency.seconds.values())
    assert stored_weights(path) == sum(p.numel() for p in model.parameters())


def test_report_table() -> None:
    rows = [
        ReportRow(
            ref="m:1", compression="original", source=None, accuracy=0.99, test_samples=180,
            model_bytes=250_000, weights=61_706, latency_s={1: 4e-5, 64: 2e-3},
        ),
        ReportRow(
            ref="m:2", compression="int4", source="m:1", accuracy=0.9889, test_samples=180,
            model_bytes=34_000, weights=61_706, latency_s={1: 1e-4, 64: 3e-3},
            accuracy_delta=-0.0011, size_ratio=0.136, latency_ratio={1: 2.5, 64: 1.5},
        ),
    ]  # fmt: skip
    text = format_report(CompressionReport(name="m", rows=rows, latency_batches=[1, 64]))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["version", "compression", "source", "accuracy"]
    assert lines[1].split()[:4] == ["m:1", "original", "-", "99.00%"]
    assert lines[2].split()[:6] == ["m:2", "int4", "m:1", "98.89%", "-0.11", "pt"]
    assert "0.136" in lines[2]
    assert "0.040" in lines[1] and "2.000" in lines[1]  # latencies in ms
    assert lines[2].split()[-2:] == ["2.50", "1.50"]
    assert "180 test images" in lines[-1]


def test_a_report_without_compressed_versions_says_how_to_make_one() -> None:
    """The table of a model never compressed listed its originals with every ratio '-'
    and a note on ratios 'against the source row', of which there was none."""
    row = ReportRow(
        ref="m:1", compression="original", source=None, accuracy=0.99, test_samples=180,
        model_bytes=250_000, weights=61_706, latency_s={1: 4e-5, 64: 2e-3},
    )  # fmt: skip
    lines = format_report(CompressionReport(name="m", rows=[row], latency_batches=[1, 64]))
    assert lines.splitlines()[-1] == (
        "no compressed version of m yet: `headrace compress --model m --quant int8` "
        "(or --prune l1) makes one"
    )


def test_the_report_tells_fine_tunes_from_originals(tmp_path: Path) -> None:
    """A watermarked fine-tune (`watermark embed --from-model`) was listed as "original",
    with no source to compare it with."""
    repo = ModelRepository(tmp_path / "repo")
    lineage = {"dataset": "digits", "seed": 0}
    _publish(repo, tmp_path, "m", lineage=lineage)
    tuned = {**lineage, "finetuned_from": "m:1"}
    _publish(repo, tmp_path, "m", lineage=tuned, watermark_id="ab" * 12)
    _publish(repo, tmp_path, "m", lineage=tuned)
    rows = build_report(repo, "m", latency_seconds=0.01).rows
    assert [(r.ref, r.compression, r.source) for r in rows] == [
        ("m:1", "original", None),
        ("m:2", "fine-tuned + watermark", "m:1"),
        ("m:3", "fine-tuned", "m:1"),
    ]
    assert rows[1].accuracy_delta is not None and rows[1].size_ratio == 1.0


def test_a_version_whose_files_are_missing_is_named_not_a_traceback(tmp_path: Path) -> None:
    """`compress report` of a model one of whose versions lost its model.onnx ended in ONNX
    Runtime's NoSuchFile traceback (exit 1); it is the repository error `compress` gives."""
    repo = ModelRepository(tmp_path / "repo")
    _publish(repo, tmp_path, "m", lineage={"dataset": "digits", "seed": 0})
    damaged = _publish(repo, tmp_path, "m", lineage={"dataset": "digits", "seed": 0})
    damaged.model_file.unlink()
    with pytest.raises(RepositoryError, match="'m' version 2: model.onnx is missing or does not"):
        build_report(repo, "m", latency_seconds=0.01)


def test_an_adversarially_trained_model_is_fine_tuned_under_its_attack(tmp_path: Path) -> None:
    """Compress and watermark embed fine-tuned a PGD-trained model on clean batches only,
    and published the result, robustness lost, as its next version."""
    from training.compression.recipe import compression_train_config

    trained = AdversarialConfig(epsilon=0.2, steps=5, warmup_epochs=4)
    lineage = {"dataset": "digits", "seed": 0, "adversarial_training": trained.model_dump_json()}
    version = _publish(ModelRepository(tmp_path / "repo"), tmp_path, "robust", lineage=lineage)
    again = trained.model_copy(update={"warmup_epochs": 0})  # the source had the ramp
    assert finetune_config(version).adversarial == again
    compress = CompressConfig(source="robust", quant="int8", repository=tmp_path / "repo")
    assert compression_train_config(compress, version).adversarial == again
    assert finetune_config(version, adversarial=None).adversarial is None  # asked for clean
    plain = _publish(ModelRepository(tmp_path / "repo"), tmp_path, "plain", lineage={})
    assert finetune_config(plain).adversarial is None


def test_a_differentially_private_model_is_not_compressed(tmp_path: Path) -> None:
    from training.compression.recipe import compress_published

    repo = ModelRepository(tmp_path / "repo")
    _publish(repo, tmp_path, "private", dp_epsilon=0.5)
    config = CompressConfig(
        source="private", quant="int8", repository=repo.root, runs_dir=tmp_path / "runs"
    )
    with pytest.raises(ConfigError, match=r"differential privacy \(epsilon 0.5\).*refused"):
        compress_published(config)


def test_a_differentially_private_model_is_not_fine_tuned_by_watermark_embed(
    tmp_path: Path,
) -> None:
    """`watermark embed --from-model` fine-tuned a private model without privacy and
    published it as the model's next version, without dp_epsilon, replacing the private one
    in serving; compress refused the same source."""
    version = _publish(ModelRepository(tmp_path / "repo"), tmp_path, "private", dp_epsilon=0.5)
    with pytest.raises(ConfigError, match=r"privacy \(epsilon 0.5\); fine-tuning it .*refused"):
        finetune_config(version)


def test_fine_tuning_keeps_the_split_of_its_source(tmp_path: Path) -> None:
    """`compress --seed 0` of a model trained with seed 3 fine-tuned on seed 0's split, whose
    test images the source had trained on, measured source and result there, and recorded
    seed 3 in the compressed version's lineage."""
    from training.compression.recipe import compression_train_config

    lineage = {"dataset": "digits", "seed": 3, "val_fraction": 0.1, "test_fraction": 0.1}
    version = _publish(ModelRepository(tmp_path / "repo"), tmp_path, "m", lineage=lineage)
    assert finetune_config(version).seed == 3
    assert finetune_config(version, seed=3, test_fraction=0.1).seed == 3
    with pytest.raises(ConfigError, match=r"another seed \(0; it was trained with 3\)"):
        finetune_config(version, seed=0)
    with pytest.raises(ConfigError, match=r"another test_fraction \(0.2; it was trained"):
        finetune_config(version, test_fraction=0.2)
    compress = CompressConfig(source="m", quant="int8", seed=0, repository=tmp_path / "repo")
    with pytest.raises(ConfigError, match="another seed"):
        compression_train_config(compress, version)
    # a version whose lineage predates the seed: the seed given is taken
    bare = _publish(ModelRepository(tmp_path / "repo"), tmp_path, "bare", lineage={})
    assert finetune_config(bare, seed=4).seed == 4


def test_an_older_version_trained_on_other_statistics_is_compressed(tmp_path: Path) -> None:
    """Each version keeps its own preprocessing, but compress compared the source's with
    config.json's (the latest publish's): version 1 of a model retrained on other statistics
    was refused after training ('already exists with other ... preprocessing')."""
    from training.compression.recipe import compress_published

    repo = ModelRepository(tmp_path / "repo")
    lineage = {"dataset": "digits", "seed": 0}
    _publish(repo, tmp_path, "m", lineage=lineage)
    other = PreprocessingSpec(mean=[0.2], std=[0.4])
    _publish(repo, tmp_path, "m", lineage=lineage, spec=other)
    config = CompressConfig(
        # pruning, not QAT: the quantized export check wants 99% of the classes of a near
        # untrained model's almost tied logits to agree, which depends on its random weights
        source="m", source_version=1, prune="l1", epochs=1, latency_seconds=0.01,
        repository=repo.root, runs_dir=tmp_path / "runs", progress=False,
    )  # fmt: skip
    assert compress_published(config).version == 3
    assert repo.get("m", 3).config.preprocessing == SPEC  # its source's, not config.json's
    assert repo.get("m", 2).config.preprocessing == other
    # another interface under the target name is still refused, before any training
    _publish(repo, tmp_path, "five", classes=5, lineage=lineage)
    wrong = config.model_copy(update={"name": "five"})
    with pytest.raises(ConfigError, match="cannot publish model 'five': its outputs"):
        compress_published(wrong, on_epoch=lambda *_: pytest.fail("trained"))


def test_a_model_trained_on_shards_is_fine_tuned_and_reported_on_its_own_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tuning (compress, watermark embed) and the compression report rebuilt the
    splits from the dataset's files: 600 ingested digits of which 500 were selected gave
    the 180-image test split of all of digits, holding images the model trained on."""
    from training.compression.recipe import compression_train_config

    version, _ = publish_shard_trained(tmp_path, "sharded", SPEC)
    repository = ModelRepository(tmp_path / "repo")
    monkeypatch.setenv("HEADRACE_DATA_ROOT", str(tmp_path / "data"))

    finetune = finetune_config(version)
    assert finetune.data_source is not None
    assert finetune.data_source.up_to_offset == {0: 500}
    assert len(finetune.load_splits().test) == SELECTED_TEST_SAMPLES  # not all of digits' 180

    (row,) = build_report(repository, "sharded", latency_seconds=0.01).rows
    assert row.test_samples == SELECTED_TEST_SAMPLES

    # shards kept under another root than HEADRACE_DATA_ROOT (`train --data-root`): compress,
    # compress report and watermark embed take --data-root, as security robustness does
    # (the error said to pass --data-root, which they did not have)
    moved = tmp_path / "elsewhere"
    (tmp_path / "data").rename(moved)
    with pytest.raises(DatasetError, match="no shards"):
        finetune_config(version).load_splits()
    finetune = finetune_config(version, data_root=moved)
    assert len(finetune.load_splits().test) == SELECTED_TEST_SAMPLES
    compress = CompressConfig(source="sharded", quant="int8", data_root=moved)
    assert compression_train_config(compress, version).data_source == finetune.data_source
    (row,) = build_report(repository, "sharded", latency_seconds=0.01, data_root=moved).rows
    assert row.test_samples == SELECTED_TEST_SAMPLES
    from click.testing import CliRunner

    from headrace.cli import cli

    args = ["compress", "report", "sharded", "--repository", str(repository.root),
            "--latency-seconds", "0.01", "--data-root", str(moved), "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert '"test_samples":50' in result.output


class _Stop(Exception):
    """Ends a compression job at its first epoch: the test wants what came before it."""


def test_compress_says_which_version_it_took_and_why_newer_ones_were_passed_over(
    tmp_path: Path,
) -> None:
    """Before: with a version folder copied by hand without its metadata.json (which the
    repository leaves out), `compress --model m` compressed the version before it and only its
    report's 'from m:1' said so; nor did it say that it passed over compressed versions."""
    from training.compression.recipe import compress_published

    repo = ModelRepository(tmp_path / "repo")
    lineage = {"dataset": "digits", "seed": 0}
    _publish(repo, tmp_path, "m", lineage=lineage)
    _publish(repo, tmp_path, "m", lineage={"compressed_from": "m:1"}, weights=False)
    copied = repo.version_dir("m", 3)
    copied.mkdir()
    (copied / "model.onnx").write_bytes(repo.get("m", 1).model_file.read_bytes())
    notes: list[str] = []

    def stop(*_: object) -> None:
        raise _Stop

    config = CompressConfig(
        source="m", prune="l1", distill_from="m", epochs=1, latency_seconds=0.01,
        repository=repo.root, runs_dir=tmp_path / "runs", progress=False,
    )  # fmt: skip
    with pytest.raises(_Stop):
        compress_published(config, on_epoch=stop, on_note=notes.append)
    why = (
        "version 3 is incomplete (no metadata.json: copied by hand or cut short, and not served "
        "either) and version 2 is compressed (no torch weights)"
    )
    assert notes == [
        f"compressing m:1, the latest complete uncompressed version: {why}; "
        "pass --from-version N to choose",
        f"distilling from m:1, the latest complete uncompressed version: {why}; "
        "pass --distill-from NAME:VERSION to choose",
    ]
    notes.clear()
    named = config.model_copy(update={"source_version": 1, "distill_from": "m:1"})
    with pytest.raises(_Stop):
        compress_published(named, on_epoch=stop, on_note=notes.append)
    assert notes == []  # the versions the user named: nothing to explain


def test_data_that_splits_otherwise_than_the_sources_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """Before: `compress --data-dir` of another MNIST folder than the source's was trained on
    fine-tuned and measured source and result on that folder's split (reproduced: a model
    trained on 48 images compressed on a folder giving 16, published, 'test accuracy' of
    images it had never been measured on); its lineage records the training images it had."""
    from training.compression.recipe import compress_published

    repo = ModelRepository(tmp_path / "repo")
    train_images = finetune_config(_publish(repo, tmp_path, "same")).load_splits().train
    for name, count in (("other", len(train_images) - 1), ("same", len(train_images))):
        lineage = {"dataset": "digits", "seed": 0, "train_samples": count}
        _publish(repo, tmp_path, name, lineage=lineage)
        config = CompressConfig(
            source=name, prune="l1", epochs=1, latency_seconds=0.01, repository=repo.root,
            runs_dir=tmp_path / "runs", progress=False,
        )  # fmt: skip
        if name == "same":
            with pytest.raises(_Stop):
                compress_published(config, on_epoch=_stop)
            continue
        with pytest.raises(ConfigError) as refused:
            compress_published(config, on_epoch=lambda *_: pytest.fail("trained"))
        assert refused.value.message == (
            f"the digits data given (embedded) splits into {len(train_images)} training "
            f"images, but 'other' version 1 was trained on {count}: pass the data it was "
            "trained on"
        )


def _stop(*_: object) -> None:
    raise _Stop


def test_a_model_reference_given_as_model_names_the_flags_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `compress --model m:2` (the form --distill-from takes) was refused as an
    'invalid model name', without the --from-version the user was after."""
    from headrace.cli import main

    argv = ["headrace", "compress", "--model", "m:2", "--quant", "int8"]
    monkeypatch.setattr("sys.argv", [*argv, "--repository", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: --model takes a model name, not 'm:2': for version 2 of m pass "
        "--model m --from-version 2\n"
    )


@pytest.mark.parametrize("command", ["compress", "report"])
def test_a_repository_that_is_not_there_is_named(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: a mistyped --repository gave "model 'm' not found; no models are published
    yet", as if the model had never been trained."""
    from headrace.cli import main

    args = ["--model", "m", "--quant", "int8"] if command == "compress" else ["report", "m"]
    missing = tmp_path / "repo"
    monkeypatch.setattr("sys.argv", ["headrace", "compress", *args, "--repository", str(missing)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: model repository {missing} does not exist; pass --repository (or set "
        "HEADRACE_MODEL_REPOSITORY) to the folder `headrace train` publishes into\n"
    )


@pytest.mark.parametrize(("flags", "expected"), [([], None), (["--name", "m-int8"], "m-int8")])
def test_the_cli_passes_name_through_to_the_job(
    flags: list[str], expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the check for --model NAME:VERSION reused the variable holding --name, so
    `compress --model m --name m-int8` published version 2 of m instead of m-int8."""
    from click.testing import CliRunner

    from headrace.cli import cli

    seen: list[CompressConfig] = []

    def _capture(config: CompressConfig, **_: object) -> None:
        seen.append(config)
        raise _Stop

    monkeypatch.setattr("training.compression.recipe.compress_published", _capture)
    args = ["compress", "--model", "m", "--quant", "int8", "--repository", str(tmp_path), *flags]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, _Stop), result.output
    assert [config.name for config in seen] == [expected]


@pytest.mark.parametrize(
    ("flags", "unread"),
    [
        (["--quant", "int8", "--epochs", "20", "--lr", "0.01"],
         "--epochs (only read with --prune or --distill-from); --lr (only read with --prune or "
         "--distill-from)"),
        (["--prune", "l1", "--temperature", "2", "--alpha", "0.5"],
         "--temperature (only read with --distill-from); --alpha (only read with "
         "--distill-from)"),
        (["--prune", "l1", "--qat-epochs", "3", "--qat-lr", "0.001", "--weights-only"],
         "--qat-epochs (only read with --quant); --qat-lr (only read with --quant); "
         "--weights-only (only read with --quant)"),
        (["--quant", "int8", "--qat-epochs", "2", "--weights-only"], None),
        (["--distill-from", "t", "--temperature", "4", "--epochs", "10"], None),  # defaults typed
    ],
    ids=["epochs with quant only", "temperature without a teacher", "qat flags without quant",
         "quant flags", "distillation flags"],
)  # fmt: skip
def test_flags_of_a_method_not_chosen_are_refused_by_name(
    flags: list[str], unread: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `compress --quant int8 --epochs 20` ran the 5 QAT epochs (--qat-epochs), and
    --temperature without --distill-from, --qat-lr without --quant, went unread the same."""
    from click.testing import CliRunner

    from headrace.cli import cli

    def _capture(config: CompressConfig, **_: object) -> None:
        raise _Stop

    monkeypatch.setattr("training.compression.recipe.compress_published", _capture)
    args = ["compress", "--model", "m", "--repository", str(tmp_path), *flags]
    result = CliRunner().invoke(cli, args)
    if unread is None:
        assert isinstance(result.exception, _Stop), result.output
        return
    assert isinstance(result.exception, ConfigError)
    assert result.exception.message == (
        f"these flags are not read by the compression asked for: {unread}"
    )
