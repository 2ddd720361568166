"""The versioned model repository and the `headrace models` commands."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from headrace.commands.models import models
from headrace.errors import ConfigError, ModelNotFound, RepositoryError
from serving.model_config import (
    MAX_BATCH_SIZE,
    MAX_INSTANCES,
    MAX_QUEUE_DELAY_US,
    ModelConfig,
    PreprocessingSpec,
    TensorSpec,
)
from serving.repository import ModelRepository

pytestmark = pytest.mark.unit


def make_config(name: str = "digits") -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=32,
        inputs=[TensorSpec(name="pixels", dims=[1, 8, 8])],
        outputs=[TensorSpec(name="logits", dims=[10])],
        preprocessing=PreprocessingSpec(mean=[0.5], std=[0.25]),
        labels=[str(i) for i in range(10)],
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"not really onnx, but the repository copies bytes as-is\x00\xff")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "repo")


def publish(repo: ModelRepository, model_file: Path, name: str = "digits", **kwargs: object):
    kwargs.setdefault("architecture", "lenet5")
    return repo.publish(make_config(name), model_file, **kwargs)  # type: ignore[arg-type]


def test_publish_creates_version_1_then_2(repo: ModelRepository, model_file: Path) -> None:
    first = publish(repo, model_file, metrics={"test_accuracy": 0.97})
    assert (first.name, first.version) == ("digits", 1)
    assert first.path == repo.root / "digits" / "1"
    assert first.model_file.read_bytes() == model_file.read_bytes()
    assert first.metadata.metrics == {"test_accuracy": 0.97}

    second = publish(repo, model_file, architecture="lenet5-pruned")
    assert second.version == 2
    assert repo.versions("digits") == [1, 2]
    assert repo.latest("digits").version == 2
    assert repo.get("digits").metadata.architecture == "lenet5-pruned"
    assert repo.get("digits", 1).metadata.architecture == "lenet5"
    assert repo.list_models() == ["digits"]
    assert not [p for p in (repo.root / "digits").iterdir() if p.name.startswith(".")]


def test_metadata_sha256_matches_every_file(
    repo: ModelRepository, model_file: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    published = publish(
        repo,
        model_file,
        extra_files={"labels.txt": labels},
        lineage={"dataset": "digits", "seed": 0, "resumed": False, "parent": None},
        dp_epsilon=3.0,
        dp_delta=1e-5,
        watermark_id="wm-42",
    )
    files = {p.name for p in published.path.iterdir()}
    assert files == {"model.onnx", "labels.txt", "metadata.json"}
    assert set(published.metadata.sha256) == {"model.onnx", "labels.txt"}
    for name, digest in published.metadata.sha256.items():
        assert hashlib.sha256((published.path / name).read_bytes()).hexdigest() == digest
    published.verify()

    on_disk = json.loads((published.path / "metadata.json").read_text())
    assert on_disk["version"] == 1
    assert on_disk["architecture"] == "lenet5"
    assert on_disk["lineage"]["seed"] == 0
    assert on_disk["dp_epsilon"] == 3.0 and on_disk["watermark_id"] == "wm-42"

    (published.path / "labels.txt").write_text("tampered\n")
    with pytest.raises(RepositoryError, match="labels.txt"):
        repo.get("digits").verify()


def test_config_round_trips(repo: ModelRepository, model_file: Path) -> None:
    publish(repo, model_file)
    assert repo.config("digits") == make_config()
    assert repo.get("digits").config == make_config()
    on_disk = ModelConfig.model_validate_json((repo.root / "digits" / "config.json").read_text())
    assert on_disk == make_config()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"inputs": [TensorSpec(name="pixels", dims=[3, 32, 32])]}, "inputs"),
        ({"inputs": [TensorSpec(name="image", dims=[1, 8, 8])]}, "inputs"),
        ({"inputs": [TensorSpec(name="pixels", datatype="UINT8", dims=[1, 8, 8])]}, "inputs"),
        ({"outputs": [TensorSpec(name="logits", dims=[100])]}, "outputs"),
        ({"max_batch_size": 0}, "batch axis"),
        ({"labels": ["airplane", "automobile", *map(str, range(2, 10))]}, "labels"),
    ],
)
def test_publish_refuses_another_interface_under_an_existing_name(
    repo: ModelRepository, model_file: Path, change: dict[str, object], problem: str
) -> None:
    publish(repo, model_file)
    config_file = repo.root / "digits" / "config.json"
    before = config_file.read_bytes()
    other = make_config().model_copy(update=change)
    with pytest.raises(ConfigError, match=rf"its {problem} differ.*another name \(--name\)"):
        repo.publish(other, model_file, architecture="lenet5")
    assert config_file.read_bytes() == before  # older versions keep their config.json
    assert repo.versions("digits") == [1]
    assert not [p for p in (repo.root / "digits").iterdir() if p.name.startswith(".")]


def test_publish_updates_settings_that_keep_the_interface(
    repo: ModelRepository, model_file: Path
) -> None:
    publish(repo, model_file)
    tuned = make_config().model_copy(
        update={
            "max_batch_size": 8,
            "instance_count": 2,
            "preprocessing": PreprocessingSpec(mean=[0.4], std=[0.3]),
        }
    )
    assert repo.publish(tuned, model_file, architecture="lenet5").version == 2
    assert repo.config("digits") == tuned


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "problem"),
    [
        (32, [8, 64], "must lie in 1..max_batch_size"),
        (32, [0], "must lie in 1..max_batch_size"),
        (0, [1], "without a batch axis"),
    ],
)
def test_preferred_batch_sizes_must_fit_the_max_batch_size(
    max_batch_size: int, preferred: list[int], problem: str
) -> None:
    doc = make_config().model_dump()
    doc["max_batch_size"] = max_batch_size
    doc["dynamic_batching"]["preferred_batch_sizes"] = preferred
    with pytest.raises(ValueError, match=problem):
        ModelConfig.model_validate(doc)
    doc["dynamic_batching"]["preferred_batch_sizes"] = [1] if max_batch_size else []
    assert ModelConfig.model_validate(doc).max_batch_size == max_batch_size


def test_max_batch_size_is_bounded_by_what_a_triton_model_config_holds() -> None:
    doc = make_config().model_dump()
    doc["max_batch_size"] = 2**31  # Triton's ModelConfig.max_batch_size is an int32
    with pytest.raises(ValueError, match="max_batch_size"):
        ModelConfig.model_validate(doc)
    doc["max_batch_size"] = MAX_BATCH_SIZE
    assert ModelConfig.model_validate(doc).max_batch_size == MAX_BATCH_SIZE
    assert MAX_BATCH_SIZE < 2**31


def test_max_queue_delay_is_bounded_to_an_hour() -> None:
    doc = make_config().model_dump()
    doc["dynamic_batching"]["max_queue_delay_us"] = MAX_QUEUE_DELAY_US + 1
    with pytest.raises(ValueError, match="max_queue_delay_us"):
        ModelConfig.model_validate(doc)
    doc["dynamic_batching"]["max_queue_delay_us"] = MAX_QUEUE_DELAY_US
    assert ModelConfig.model_validate(doc).dynamic_batching.max_queue_delay_us == 3_600_000_000
    assert MAX_QUEUE_DELAY_US < 2**64  # Triton's ModelConfig field is a uint64


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"instance_count": 100_000}, "instance_count"),
        ({"autoscaling": {"max_instances": 100_000}}, "autoscaling.max_instances"),
        ({"autoscaling": {"min_instances": 100_000, "max_instances": 4}}, "min_instances"),
    ],
)
def test_instance_counts_are_bounded_before_any_session_is_built(
    repo: ModelRepository, model_file: Path, update: dict[str, object], field: str
) -> None:
    """Each instance is an ONNX Runtime session built at load: 100,000 of them grew a server
    by ~150 MB/s until memory ran out. The config is refused naming the field instead."""
    publish(repo, model_file)
    path = repo.root / "digits" / "config.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, **update}))
    with pytest.raises(RepositoryError, match=rf"{field}: Input should be less than or equal to"):
        repo.config("digits")
    at_bound = {"instance_count": MAX_INSTANCES, "autoscaling": {"max_instances": MAX_INSTANCES}}
    path.write_text(json.dumps({**doc, **at_bound}))
    assert repo.config("digits").instance_count == MAX_INSTANCES


def test_an_instance_count_outside_the_autoscaling_range_is_refused(
    repo: ModelRepository, model_file: Path
) -> None:
    """instance_count 10 with autoscaling 2..3 loaded 3 sessions (1 loaded 1, then the
    autoscaler grew it to 2) while get_model_config answered count 10 (or 1). Such a config.json
    is now invalid, naming the range; left out, the count is min_instances."""
    publish(repo, model_file)
    path = repo.root / "digits" / "config.json"
    doc = json.loads(path.read_text())
    scaling = {"min_instances": 2, "max_instances": 3}
    for count in (10, 1):
        path.write_text(json.dumps({**doc, "instance_count": count, "autoscaling": scaling}))
        with pytest.raises(RepositoryError) as refused:
            repo.config("digits")
        assert refused.value.message == (
            f"model 'digits': invalid config.json: instance_count {count} lies outside "
            "autoscaling's min_instances..max_instances (2..3), within which the model's "
            "instances are kept: give a count in that range (where the model starts), or leave "
            "instance_count out to start at min_instances"
        )
    path.write_text(json.dumps({**doc, "instance_count": 3, "autoscaling": scaling}))
    assert repo.config("digits").instance_count == 3
    del doc["instance_count"]
    path.write_text(json.dumps({**doc, "autoscaling": scaling}))
    assert repo.config("digits").instance_count == 2


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "..", "", "x" * 129, "sp ace"])
def test_invalid_names_refused(repo: ModelRepository, model_file: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        repo.get(name)
    with pytest.raises(ConfigError, match="invalid model name"):
        repo.versions(name)
    bad = make_config().model_copy(update={"name": name})  # skips the validator, as a bug would
    with pytest.raises(ConfigError, match="invalid model name"):
        repo.publish(bad, model_file, architecture="lenet5")
    assert not repo.root.exists() or not any(repo.root.iterdir())


def test_bad_publish_arguments(repo: ModelRepository, model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extra file name"):
        publish(repo, model_file, extra_files={"../x": model_file})
    with pytest.raises(ConfigError, match="extra file name"):
        publish(repo, model_file, extra_files={"metadata.json": model_file})
    with pytest.raises(ConfigError, match="test_loss"):
        publish(repo, model_file, metrics={"test_loss": float("nan")})
    with pytest.raises(RepositoryError, match="not a file"):
        publish(repo, tmp_path / "missing.onnx")
    assert repo.list_models() == []


def test_model_not_found(repo: ModelRepository, model_file: Path) -> None:
    with pytest.raises(ModelNotFound, match="no models are published yet"):
        repo.get("digits")
    publish(repo, model_file)
    publish(repo, model_file, name="cifar")
    with pytest.raises(ModelNotFound, match="models: cifar, digits") as not_found:
        repo.get("mnist")
    assert str(repo.root) not in not_found.value.message  # no internal paths for clients
    with pytest.raises(ModelNotFound, match="no version 7; versions: 1"):
        repo.get("digits", 7)
    with pytest.raises(ModelNotFound):
        repo.config("mnist")


def test_incomplete_and_hidden_folders_are_invisible(
    repo: ModelRepository, model_file: Path
) -> None:
    publish(repo, model_file)
    model_dir = repo.root / "digits"
    staging = model_dir / ".staging.1.abcd@elsewhere"  # another host's publish in progress
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"half")
    (staging / "metadata.json").write_text("{}")
    (model_dir / "2").mkdir()  # a version folder without metadata.json
    (model_dir / "2" / "model.onnx").write_bytes(b"half")
    for junk in ("notes", "03", "0", "-1"):
        (model_dir / junk).mkdir()
        (model_dir / junk / "metadata.json").write_text("{}")
    (repo.root / ".trash").mkdir()
    (repo.root / "empty-model").mkdir()

    assert repo.versions("digits") == [1]
    assert repo.latest("digits").version == 1
    assert repo.list_models() == ["digits"]
    with pytest.raises(ModelNotFound):
        repo.get("digits", 2)
    with pytest.raises(ModelNotFound):
        repo.get("empty-model")

    # The next publish skips past the incomplete "2" and leaves the live staging folder alone.
    assert publish(repo, model_file).version == 3
    assert staging.exists()


def test_stale_staging_of_dead_local_publisher_is_removed(
    repo: ModelRepository, model_file: Path
) -> None:
    from serving import repository

    publish(repo, model_file)
    model_dir = repo.root / "digits"
    host = repository._host()
    dead = model_dir / f".staging.999999999.0000@{host}"  # no such pid
    dead.mkdir()
    alive = model_dir / f".staging.1.0000@{host}"  # pid 1 always exists
    alive.mkdir()
    publish(repo, model_file)
    assert not dead.exists()
    assert alive.exists()


def test_corrupt_files_raise_repository_error(repo: ModelRepository, model_file: Path) -> None:
    publish(repo, model_file)
    (repo.root / "digits" / "1" / "metadata.json").write_text("{not json")
    with pytest.raises(RepositoryError, match=r"'digits'.*1/metadata.json"):
        repo.get("digits")
    (repo.root / "digits" / "config.json").write_text('{"name": "digits"}')
    with pytest.raises(RepositoryError, match=r"'digits'.*config.json"):
        repo.config("digits")


@pytest.mark.parametrize(
    ("relative", "content", "expected"),
    [
        ("config.json", "", "invalid config.json: Invalid JSON: EOF while parsing a value"),
        ("config.json", "[]", "invalid config.json: Input should be an object"),
        ("1/metadata.json", "{bad", "invalid 1/metadata.json: Invalid JSON: key must be a string"),
        ("config.json", '{"name": "digits"}', "invalid config.json: inputs: Field required; "),
    ],
)
def test_a_corrupt_file_is_described_on_one_line(
    repo: ModelRepository, model_file: Path, relative: str, content: str, expected: str
) -> None:
    # pydantic's own text: '1 validation error for ModelConfig', the input quoted (the whole
    # file) and 'For further information visit https://errors.pydantic.dev/...', over 3+ lines,
    # in `models show`, serve's and workers' load warnings and gRPC's load errors
    publish(repo, model_file)
    (repo.root / "digits" / relative).write_text(content)
    with pytest.raises(RepositoryError) as info:
        repo.get("digits")
    message = info.value.message
    assert message.startswith(f"model 'digits': {expected}"), message
    assert "\n" not in message and "pydantic.dev" not in message and "input_value" not in message


def test_concurrent_publishers_get_distinct_versions(repo: ModelRepository, tmp_path: Path) -> None:
    sources = []
    for i in range(4):
        source = tmp_path / f"model{i}.onnx"
        source.write_bytes(f"model {i}".encode())
        sources.append(source)

    def publish_five(source: Path) -> list[int]:
        return [publish(repo, source).version for _ in range(5)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        published = [v for vs in pool.map(publish_five, sources) for v in vs]
    assert sorted(published) == list(range(1, 21)) == repo.versions("digits")
    contents = sorted(repo.get("digits", v).model_file.read_bytes() for v in published)
    assert contents == sorted(s.read_bytes() for s in sources for _ in range(5))
    assert not [p for p in (repo.root / "digits").iterdir() if p.name.startswith(".")]


# -- the CLI ----------------------------------------------------------------


def test_cli_list_and_show(repo: ModelRepository, model_file: Path) -> None:
    publish(repo, model_file, metrics={"test_accuracy": 0.9723, "test_loss": 0.1})
    publish(
        repo, model_file, metrics={"test_accuracy": 0.9861}, dp_epsilon=2.5, dp_delta=1e-5,
        architecture_options={"width": 1.5, "dropout": 0.2},
    )  # fmt: skip
    runner = CliRunner()

    result = runner.invoke(models, ["list", "--repository", str(repo.root)])
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split() == [
        "MODEL",
        "VERSIONS",
        "LATEST",
        "ARCHITECTURE",
        "CREATED_AT",
        "METRICS",
    ]
    assert row.split()[:4] == ["digits", "2", "2", "lenet5"]
    assert "test_accuracy=0.9861" in row

    result = runner.invoke(models, ["list", "--repository", str(repo.root), "--json"])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert entry["versions"] == [1, 2] and entry["latest"] == 2

    result = runner.invoke(models, ["show", "digits", "--repository", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert "version:        2 (versions: 1, 2)" in result.output
    # what differs between versions: the options its layers were built with and its own
    # normalisation (the text view showed neither: `lenet5` for a width-1.5 model)
    assert "architecture:   lenet5 (width 1.5, dropout 0.2)" in result.output
    assert "preprocessing:  scale=0.00392157 mean=[0.5] std=[0.25] layout=NCHW" in result.output
    assert "epsilon=2.5" in result.output
    assert "input:          pixels FP32 [1, 8, 8]" in result.output
    assert "batching:       max_queue_delay_us=2000 max_queue_size=1024" in result.output

    whole = make_config("whole").model_copy(update={"max_batch_size": 0})
    repo.publish(whole, model_file, architecture="lenet5")
    result = runner.invoke(models, ["show", "whole", "--repository", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert "batching:       none (no batch axis" in result.output

    args = ["show", "digits", "--version", "1", "--json", "--repository", str(repo.root)]
    result = runner.invoke(models, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["version"] == 1 and doc["metadata"]["metrics"]["test_loss"] == 0.1
    assert ModelConfig.model_validate(doc["config"]) == make_config()

    result = runner.invoke(models, ["show", "nope", "--repository", str(repo.root)])
    assert isinstance(result.exception, ModelNotFound)


def test_cli_empty_repository_is_friendly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_MODEL_REPOSITORY", str(tmp_path / "missing"))
    result = CliRunner().invoke(models, ["list"])
    assert result.exit_code == 0, result.output
    assert "no models in" in result.output and "headrace train" in result.output
    assert str(tmp_path / "missing") in result.output


def test_each_version_keeps_the_preprocessing_it_was_trained_with(
    repo: ModelRepository, model_file: Path
) -> None:
    first = publish(repo, model_file)
    other_stats = PreprocessingSpec(mean=[0.13], std=[0.31])
    second = repo.publish(
        make_config().model_copy(update={"preprocessing": other_stats}),
        model_file,
        architecture="lenet5",
    )
    assert repo.config("digits").preprocessing == other_stats  # config.json: the latest
    assert repo.get("digits", first.version).config.preprocessing == make_config().preprocessing
    assert repo.get("digits", second.version).config.preprocessing == other_stats
    assert repo.get("digits", first.version).metadata.preprocessing == make_config().preprocessing


def test_a_version_without_recorded_preprocessing_takes_the_config_json_one(
    repo: ModelRepository, model_file: Path
) -> None:
    published = publish(repo, model_file)
    meta_file = published.path / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["preprocessing"]  # as published before versions recorded it
    meta_file.write_text(json.dumps(meta))
    assert repo.get("digits", 1).config == repo.config("digits")


def test_cli_list_json_stays_json_with_hand_edited_metrics(
    repo: ModelRepository, model_file: Path
) -> None:
    published = publish(repo, model_file, metrics={"val_loss": 0.1})
    meta_file = published.path / "metadata.json"
    meta_file.write_text(meta_file.read_text().replace("0.1", "NaN"))

    result = CliRunner().invoke(models, ["list", "--json", "--repository", str(repo.root)])

    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    (entry,) = json.loads(result.output, parse_constant=refuse)
    assert entry["metrics"] == {"val_loss": None}
    result = CliRunner().invoke(
        models, ["show", "digits", "--json", "--repository", str(repo.root)]
    )
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.output, parse_constant=refuse)["metadata"]["metrics"] == entry["metrics"]
    )


def test_cli_help() -> None:
    runner = CliRunner()
    for args in (["--help"], ["list", "--help"], ["show", "--help"]):
        result = runner.invoke(models, args)
        assert result.exit_code == 0 and "Usage:" in result.output


def test_headrace_cli_runs_models(
    repo: ModelRepository, model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    cli_module = pytest.importorskip("headrace.cli", reason="other command modules not written yet")
    publish(repo, model_file)
    result = CliRunner().invoke(cli_module.cli, ["models", "list", "--repository", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert "digits" in result.output

    monkeypatch.setattr("sys.argv", ["headrace", "models", "show", "nope", "--repository", "x"])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    assert exit_info.value.code == 2
    assert "error: model 'nope' not found" in capsys.readouterr().err


def test_a_server_needs_an_existing_repository_folder(tmp_path: Path) -> None:
    ModelRepository(tmp_path).require_folder()  # empty is fine: models may come later
    with pytest.raises(ConfigError, match="does not exist; pass --repository"):
        ModelRepository(tmp_path / "typo").require_folder()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        ModelRepository(tmp_path / "file").require_folder()
