"""Watermark parts without a server: the key file, key derivations, the binomial test, the
white-box signature and its regulariser, the training hook and black-box checks on a local model."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import stat
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from headrace.errors import WatermarkError
from security.watermark.config import WatermarkConfig
from security.watermark.derive import derived_integers
from security.watermark.hook import WatermarkHook
from security.watermark.key import WatermarkKey, generate_key, load_key, save_key
from security.watermark.oracle import OracleSpec
from security.watermark.stats import binomial_tail
from security.watermark.triggers import trigger_set
from security.watermark.verify import VerificationReport, check_signature, check_triggers
from security.watermark.whitebox import (
    SignatureLoss,
    bit_errors,
    projection,
    resolve_layer,
    signature_bits,
)
from training.config import TrainConfig
from training.datasets import load_splits
from training.hooks import build_hooks
from training.models import build_model
from training.preprocess import BatchPipeline, PreprocessConfig
from training.preprocess.normalize import to_model_input

SECRET_A = "11" * 32
SECRET_B = "22" * 32


def _key(secret: str = SECRET_A, **fields: object) -> WatermarkKey:
    return WatermarkKey.model_validate({"secret": secret, **fields})


# -- the key ---------------------------------------------------------------------------------


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    key = generate_key(trigger_count=50, whitebox_bits=32)
    path = save_key(key, tmp_path / "owner" / "key.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key(path)
    assert loaded.secret_bytes == key.secret_bytes and len(key.secret_bytes) == 32
    assert (loaded.trigger_count, loaded.whitebox_bits) == (50, 32)
    assert loaded.watermark_id == key.watermark_id
    assert key.secret.get_secret_value() not in repr(key) + str(key)
    with pytest.raises(WatermarkError, match="already exists"):
        save_key(generate_key(), path)
    assert load_key(path).secret_bytes == key.secret_bytes  # not replaced
    with pytest.raises(WatermarkError, match="is a folder"):
        save_key(generate_key(), path.parent, overwrite=True)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = save_key(generate_key(), tmp_path / "key.json")
    path.chmod(0o644)
    with pytest.raises(WatermarkError, match="chmod 600"):
        load_key(path)


def test_malformed_key_file_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text('{"secret": "abc"}')
    path.chmod(0o600)
    with pytest.raises(WatermarkError, match="not a headrace watermark key.*secret"):
        load_key(path)
    with pytest.raises(WatermarkError, match="keygen"):
        load_key(tmp_path / "missing.json")


def test_watermark_id_is_stable_key_specific_and_not_the_secret() -> None:
    a, b = _key(SECRET_A), _key(SECRET_B)
    assert a.watermark_id == _key(SECRET_A).watermark_id
    assert a.watermark_id != b.watermark_id
    assert len(a.watermark_id) == 24 and a.watermark_id not in SECRET_A


# -- derivations -----------------------------------------------------------------------------


def test_trigger_set_is_deterministic_and_key_specific() -> None:
    first = trigger_set(_key(SECRET_A), (1, 28, 28), 10)
    again = trigger_set(_key(SECRET_A), (1, 28, 28), 10)
    other = trigger_set(_key(SECRET_B), (1, 28, 28), 10)
    assert first.pixels.dtype == np.uint8 and first.pixels.shape == (100, 1, 28, 28)
    assert np.array_equal(first.pixels, again.pixels)
    assert np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.pixels, other.pixels)
    assert (first.labels != other.labels).mean() > 0.6  # ~0.9 for independent labels
    assert len({p.tobytes() for p in first.pixels}) == 100  # every trigger distinct
    # Re-derived by hand: SHAKE-256 of HMAC-SHA256(secret, purpose), no library generator,
    # so a key made today verifies with any later numpy or torch.
    secret = bytes.fromhex(SECRET_A)

    def stream(purpose: bytes, length: int) -> bytes:
        seed = hmac.new(secret, purpose, hashlib.sha256).digest()
        return hashlib.shake_256(seed).digest(length)

    raw = stream(b"triggers/labels/10/round0", 32)
    words = [int.from_bytes(raw[i : i + 4], "big") for i in range(0, 32, 4)]
    assert first.labels[:8].tolist() == [w % 10 for w in words]  # all below the rejection limit
    cells = stream(b"triggers/grid7/1x28x28", 7)
    assert first.pixels[0, 0, 0, ::4].tolist() == list(cells)  # 7 cells of 4 pixels
    block = cells
    assert first.pixels[0, 0, :4, :4].min() == first.pixels[0, 0, :4, :4].max() == block[0]


def test_trigger_shapes_and_class_counts() -> None:
    colour = trigger_set(_key(), (3, 32, 32), 10)
    assert colour.pixels.shape == (100, 3, 32, 32)
    assert colour.labels.min() >= 0 and colour.labels.max() < 10
    assert set(trigger_set(_key(), (1, 28, 28), 2).labels.tolist()) == {0, 1}


def test_derived_integers_are_uniform() -> None:
    values = derived_integers(bytes(32), "test", 30_000, 10)
    counts = np.bincount(values, minlength=10)
    chi2 = float(((counts - 3000) ** 2 / 3000).sum())
    assert chi2 < 33.7  # chi-square 9 d.o.f., p = 1e-4


# -- the statistical test --------------------------------------------------------------------


def test_binomial_tail_is_exact() -> None:
    n, p0 = 12, 0.1
    for m in (0, 1, 3, 7, 12):
        expected = sum(math.comb(n, k) * p0**k * (1 - p0) ** (n - k) for k in range(m, n + 1))
        p, log10_p = binomial_tail(m, n, Fraction(1, 10))
        assert p == pytest.approx(expected, rel=1e-12)
        assert log10_p == pytest.approx(math.log10(expected), abs=1e-9)
    p, log10_p = binomial_tail(100, 100, Fraction(1, 10))
    assert p == pytest.approx(1e-100) and log10_p == pytest.approx(-100)
    p, log10_p = binomial_tail(400, 400, Fraction(1, 10))
    assert p == 0.0 and log10_p == pytest.approx(-400)  # below float's range, log10 still there


# -- the white-box signature -----------------------------------------------------------------


def test_auto_layer_is_the_largest_convolution() -> None:
    lenet = build_model("lenet5")
    shapes = {n: tuple(p.shape) for n, p in lenet.state_dict().items()}
    assert resolve_layer(shapes, "auto") == "features.3.weight"
    assert resolve_layer({f"_module.{n}": s for n, s in shapes.items()}, "features.0.weight") == (
        "_module.features.0.weight"
    )
    with pytest.raises(WatermarkError, match="no weight 'nope'"):
        resolve_layer(shapes, "nope")
    resnet = build_model("resnet20", 10, in_channels=3, image_size=32)
    shapes = {n: tuple(p.shape) for n, p in resnet.state_dict().items()}
    name = resolve_layer(shapes, "auto")
    assert shapes[name] == (64, 64, 3, 3)


def test_regulariser_writes_the_signature_and_random_weights_do_not_hold_it() -> None:
    key = _key(whitebox_bits=64)
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(16, 6, 5, 5) * 0.1)
    before = bit_errors(key, weight.detach().numpy())
    assert 16 <= before <= 48  # a fair coin per bit
    loss = SignatureLoss(key, weight.numel(), strength=1.0)
    for _ in range(100):  # plain gradient descent (an optimizer's first step is slow to import)
        weight.grad = None
        loss(weight).backward()
        assert weight.grad is not None
        with torch.no_grad():
            weight.sub_(0.01 * weight.grad)
    assert bit_errors(key, weight.detach().numpy()) == 0
    report = check_signature(key, weight.detach().numpy(), "w", "test")
    assert report.bit_error_rate == 0 and report.p_value == pytest.approx(2.0**-64)


def test_unmarked_weights_have_ber_near_one_half() -> None:
    key = _key(whitebox_bits=1024)
    torch.manual_seed(1)
    ber = bit_errors(key, torch.randn(2400).numpy()) / 1024
    assert 0.42 < ber < 0.58
    assert projection(key, 2400).shape == (1024, 2400)
    assert signature_bits(key).mean() == pytest.approx(0.5, abs=0.06)
    with pytest.raises(WatermarkError, match="fewer than") as too_small:
        projection(key, 100)
    from headrace.commands.watermark import keygen

    flags = {opt for param in keygen.params for opt in param.opts}
    named = set(re.findall(r"--[a-z-]+", str(too_small.value)))
    assert named and named <= flags, named  # the message names flags keygen has


# -- the hook --------------------------------------------------------------------------------


class _FakeTrainer:
    """What `attach` reads from a Trainer: splits, pipeline and model."""

    def __init__(self) -> None:
        self.splits = load_splits("digits")
        self.pipeline = BatchPipeline(
            PreprocessConfig(),
            "digits",
            self.splits.train.images,
            self.splits.train.labels,
            10,
            0,
        )
        self.model = build_model("lenet5")


def test_hook_adds_normalised_triggers_and_the_regulariser(tmp_path: Path) -> None:
    key = _key(trigger_count=20)
    hook = WatermarkHook(key, WatermarkConfig(key_file=tmp_path / "k", triggers_per_batch=8))
    trainer = _FakeTrainer()
    hook.attach(trainer)  # type: ignore[arg-type]
    triggers = trigger_set(key, (1, 28, 28), 10)
    expected = to_model_input(torch.from_numpy(triggers.pixels), trainer.pipeline.stats)
    seen: list[int] = []
    for _ in range(5):  # 40 draws cycle through the 20 triggers exactly twice
        inputs, targets = hook.on_batch(trainer.model, torch.zeros(4, 1, 28, 28), torch.zeros(4))
        assert inputs.shape == (12, 1, 28, 28) and targets.shape == (12,)
        for row, label in zip(inputs[4:], targets[4:].long(), strict=True):
            index = int(torch.argmin(((expected - row) ** 2).flatten(1).sum(1)))
            assert torch.equal(expected[index], row) and label == triggers.labels[index]
            seen.append(index)
    assert sorted(seen) == sorted(list(range(20)) * 2)
    extra = hook.extra_loss(trainer.model)
    assert extra is not None and extra.requires_grad and float(extra.detach()) > 0
    info = hook.publish_info(trainer.model)
    assert info.watermark_id == key.watermark_id
    assert 0.3 < info.metrics["watermark_whitebox_ber"] < 0.7  # untrained: not marked yet
    assert info.metrics["watermark_whitebox_p_value"] > 1e-3  # so it would not verify
    accuracy = info.metrics["watermark_trigger_accuracy"]
    assert info.metrics["watermark_blackbox_p_value"] > 1e-3 and accuracy < 0.3


def test_build_hooks_adds_the_watermark_hook_only_when_asked(tmp_path: Path) -> None:
    key_file = save_key(generate_key(), tmp_path / "key.json")
    plain = TrainConfig(repository=tmp_path / "r")
    marked = TrainConfig(repository=tmp_path / "r", watermark=WatermarkConfig(key_file=key_file))
    assert not any(isinstance(h, WatermarkHook) for h in build_hooks(plain))
    assert sum(isinstance(h, WatermarkHook) for h in build_hooks(marked)) == 1


# -- black-box checks ------------------------------------------------------------------------


class _TorchOracle:
    """A local model answering raw pixels, preprocessed like a client would."""

    def __init__(self, model: nn.Module, stats: object) -> None:
        self.model = model.eval()
        self.stats = stats
        self.sent: list[np.ndarray] = []

    def describe(self) -> OracleSpec:
        return OracleSpec(input_shape=(1, 28, 28), num_classes=10, target="local")

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.sent.append(pixels.copy())
        with torch.no_grad():
            x = to_model_input(torch.from_numpy(pixels), self.stats)  # type: ignore[arg-type]
            return self.model(x).argmax(1).numpy()


def test_unmarked_model_fails_and_a_model_that_answers_the_key_passes() -> None:
    key = _key()
    trainer = _FakeTrainer()
    torch.manual_seed(0)
    oracle = _TorchOracle(build_model("lenet5"), trainer.pipeline.stats)
    result = check_triggers(key, oracle)
    report = VerificationReport(watermark_id="x", target="t", threshold=1e-3, blackbox=result)
    assert result.trials == 100 and result.p_value > 1e-3 and not report.verified
    (sent,) = oracle.sent
    assert np.array_equal(sent, trigger_set(key, (1, 28, 28), 10).pixels)  # inputs only

    class KeyedModel(nn.Module):
        """Answers the key's label for its triggers: what a perfectly marked model does."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            labels = torch.from_numpy(trigger_set(key, (1, 28, 28), 10).labels)
            return nn.functional.one_hot(labels[: len(x)], 10).float()

    marked = check_triggers(key, _TorchOracle(KeyedModel(), trainer.pipeline.stats))
    assert marked.matches == 100 and marked.p_value == pytest.approx(1e-100)
    report = VerificationReport(watermark_id="x", target="t", threshold=1e-3, blackbox=marked)
    assert report.verified and report.summary()["verified"] is True


# -- reading a published version's signature layer -------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "shape", "source"),
    [("lenet5", (1, 28, 28), "model.onnx"), ("resnet20", (3, 32, 32), "weights.pt")],
)
def test_signature_layer_is_read_from_onnx_when_export_kept_its_name(
    tmp_path: Path, architecture: str, shape: tuple[int, int, int], source: str
) -> None:
    from security.watermark.weights import signature_weights
    from serving.model_config import ModelConfig, TensorSpec
    from serving.repository import ModelRepository
    from training.export import export_onnx
    from training.published import WEIGHTS_FILE, save_weights

    torch.manual_seed(0)
    model = build_model(architecture, 10, in_channels=shape[0], image_size=shape[1]).eval()
    onnx_file = export_onnx(model, shape, tmp_path / "model.onnx")
    config = ModelConfig(
        name="m",
        inputs=[TensorSpec(name="input", dims=list(shape))],
        outputs=[TensorSpec(name="logits", dims=[10])],
    )
    extra = {WEIGHTS_FILE: save_weights(model, tmp_path / WEIGHTS_FILE)}
    repo = ModelRepository(tmp_path / "repo")
    entry = repo.publish(config, onnx_file, architecture=architecture, extra_files=extra)
    weights, layer, found_in = signature_weights(_key(), entry)
    assert found_in == source  # resnet20's convolutions are folded with batch norm at export
    assert np.array_equal(weights, model.state_dict()[layer].numpy())


@pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")
@pytest.mark.parametrize("bits", [8, 4])
def test_signature_layer_of_a_quantized_model_is_its_dequantized_weights(
    tmp_path: Path, bits: int
) -> None:
    import torch.nn.functional as F

    from security.watermark.weights import signature_weights
    from serving.model_config import ModelConfig, TensorSpec
    from serving.repository import ModelRepository
    from training.compression.onnx_export import export_quantized
    from training.compression.quantization import QatSession

    torch.manual_seed(0)
    model = build_model("lenet5").train()
    qat = QatSession(model, bits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):  # QAT needs a training step to set its scales
        loss = F.cross_entropy(model(torch.randn(16, 1, 28, 28)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fake_quant = qat.export_model()
    onnx_file = export_quantized(fake_quant, (1, 28, 28), tmp_path / "model.onnx", bits)
    config = ModelConfig(
        name="q",
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
    )
    repo = ModelRepository(tmp_path / "repo")
    entry = repo.publish(
        config, onnx_file, architecture="lenet5", lineage={"compressed_from": "m:1"}
    )
    weights, layer, found_in = signature_weights(_key(), entry)
    assert (layer, found_in) == ("features.3.weight", f"model.onnx, int{bits} dequantized")
    on_grid = fake_quant.state_dict()["features.3.layer.weight"].numpy()  # the integers * scale
    np.testing.assert_allclose(weights, on_grid, rtol=1e-6, atol=1e-9)

    other = repo.publish(  # the graph's weights do not fit a width-0.5 LeNet-5
        config, onnx_file, architecture="lenet5", architecture_options={"width": 0.5}
    )
    with pytest.raises(WatermarkError, match="pass --no-whitebox"):
        signature_weights(_key(), other)


def test_signature_of_a_pruned_float_model_is_refused_not_read_at_another_size(
    tmp_path: Path,
) -> None:
    """A pruned (not quantized) version keeps `features.3.weight` in its model.onnx with fewer
    channels; verify read it through a projection made for that other size (a matrix the key
    never marked) and reported the white-box test as failed (BER ~0.5) for a marked model."""
    from security.watermark.weights import signature_weights
    from serving.model_config import ModelConfig, TensorSpec
    from serving.repository import ModelRepository
    from training.compression.pruning import prune_channels
    from training.export import export_onnx

    torch.manual_seed(0)
    pruned = prune_channels(build_model("lenet5").eval(), 0.5, torch.randn(4, 1, 28, 28))
    onnx_file = export_onnx(pruned.eval(), (1, 28, 28), tmp_path / "model.onnx")
    config = ModelConfig(
        name="p",
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
    )
    entry = ModelRepository(tmp_path / "repo").publish(
        config, onnx_file, architecture="lenet5", lineage={"compressed_from": "m:1"}
    )
    with pytest.raises(WatermarkError, match=r"'features.3.weight' .* has shape \[8, 3, 5, 5\]"):
        signature_weights(_key(), entry)


def test_hook_state_resumes_the_same_trigger_sequence(tmp_path: Path) -> None:
    key = _key(trigger_count=20)
    config = WatermarkConfig(key_file=tmp_path / "k", triggers_per_batch=3)
    trainer = _FakeTrainer()
    first = WatermarkHook(key, config)
    first.attach(trainer)  # type: ignore[arg-type]
    batch = (torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.int64))
    first.on_batch(trainer.model, *batch)
    saved = first.state_dict()
    expected = [first.on_batch(trainer.model, *batch)[0] for _ in range(10)]
    resumed = WatermarkHook(key, config)
    resumed.attach(trainer)  # type: ignore[arg-type]
    resumed.load_state_dict(saved)
    for want in expected:
        assert torch.equal(resumed.on_batch(trainer.model, *batch)[0], want)


# -- fine-tuning a published version (embed --from-model) ------------------------------------


def test_finetune_publishes_the_source_architecture_options(tmp_path: Path) -> None:
    from headrace.errors import ConfigError
    from security.watermark.embed import finetune_config, finetune_published
    from serving.repository import ModelRepository
    from training.published import load_published_model
    from training.recipe import run_training

    common: dict[str, Any] = {
        "repository": tmp_path / "repo",
        "runs_dir": tmp_path / "runs",
        "progress": False,
    }
    run_training(TrainConfig(name="half", epochs=1, width=0.5, dropout=0.2, **common))
    repo = ModelRepository(tmp_path / "repo")
    source = repo.latest("half")
    config = finetune_config(source, epochs=1, name="half-tuned", **common)
    assert (config.width, config.dropout) == (0.5, 0.2)
    finetune_published(source, config)
    tuned = repo.latest("half-tuned")
    assert tuned.metadata.architecture_options == {"width": 0.5, "dropout": 0.2}
    model = load_published_model(tuned)  # weights.pt fits the architecture it records
    assert model.state_dict()["features.0.weight"].shape[0] == 3  # width 0.5 of 6 channels
    with pytest.raises(ConfigError, match="keeps the published architecture"):
        finetune_config(source, width=1.0)


def test_embed_from_model_defaults_to_its_latest_uncompressed_version(tmp_path: Path) -> None:
    """After `headrace compress` published a version (ONNX only), `watermark embed
    --from-model NAME` picked it and failed ('... without torch weights; use its source'),
    while compress and security robustness default to the latest version not compressed."""
    from click.testing import CliRunner

    from headrace.cli import cli
    from serving.repository import ModelRepository
    from training.export import export_onnx
    from training.recipe import run_training

    repo_dir = tmp_path / "repo"
    common: dict[str, Any] = {"repository": repo_dir, "runs_dir": tmp_path / "runs"}
    run_training(TrainConfig(name="m", epochs=1, progress=False, **common))
    repo = ModelRepository(repo_dir)
    model = build_model("lenet5")
    repo.publish(  # what compress publishes: ONNX only, compressed_from in the lineage
        repo.config("m"),
        export_onnx(model, (1, 28, 28), tmp_path / "c.onnx"),
        architecture="lenet5",
        lineage={**repo.get("m", 1).metadata.lineage, "compressed_from": "m:1"},
    )
    key_file = save_key(_key(), tmp_path / "key.json")
    args = ["watermark", "embed", "--key", str(key_file), "--from-model", "m", "--epochs", "1",
            "--repository", str(repo_dir), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert repo.get("m", 3).metadata.lineage["finetuned_from"] == "m:1"
    named = CliRunner().invoke(cli, [*args, "--from-version", "2"])  # asked for: refused
    assert "use its source m:1" in str(named.exception)
    # --data-root is for a --from-model trained on shards; new training reads files
    alone = CliRunner().invoke(cli, ["watermark", "embed", "--key", str(key_file),
                                     "--data-root", str(tmp_path)])  # fmt: skip
    assert "--data-root goes with --from-model" in str(alone.exception)


def test_embed_refuses_flags_it_would_ignore(tmp_path: Path) -> None:
    """--from-version without --from-model trained a new model (exit 0); --model with
    --from-model was ignored: the published model was fine-tuned in its own architecture."""
    from click.testing import CliRunner

    from headrace.cli import cli
    from headrace.errors import ConfigError
    from serving.repository import ModelRepository
    from training.recipe import run_training

    repo_dir, runs_dir = tmp_path / "repo", tmp_path / "runs"
    run_training(
        TrainConfig(name="m", epochs=1, progress=False, repository=repo_dir, runs_dir=runs_dir)
    )
    key_file = save_key(_key(), tmp_path / "key.json")
    args = ["watermark", "embed", "--key", str(key_file), "--epochs", "1",
            "--repository", str(repo_dir), "--runs-dir", str(runs_dir)]  # fmt: skip
    alone = CliRunner().invoke(cli, [*args, "--from-version", "1", "--name", "new"])
    assert isinstance(alone.exception, ConfigError)
    assert "--from-version goes with --from-model" in alone.exception.message
    other = CliRunner().invoke(cli, [*args, "--from-model", "m", "--model", "resnet20"])
    assert isinstance(other.exception, ConfigError)
    assert "--model resnet20 differs from m's architecture lenet5" in other.exception.message
    assert ModelRepository(repo_dir).list_models() == ["m"]
    assert ModelRepository(repo_dir).versions("m") == [1]
