"""Every flag of a headrace command reaches what it configures, or is refused when nothing
would read it. Each command is stopped where it hands its config on (no data, Kafka or
training), and the config is compared with the flags given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from headrace.cli import cli, main


class _Stop(Exception):
    """Ends a command at its hand-off."""


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"the command went on with a flag dropped: {args} {kwargs}")


def _field(value: Any, path: str) -> Any:
    """`a.b.c` of a config (attributes, or keys of a dict)."""
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _stop_at(monkeypatch: pytest.MonkeyPatch, target: str) -> list[tuple[Any, ...]]:
    """Replace `target` by a stand-in that keeps its arguments and ends the command."""
    seen: list[tuple[Any, ...]] = []

    def stop(*args: Any, **kwargs: Any) -> None:
        seen.append((*args, kwargs))
        raise _Stop

    monkeypatch.setattr(target, stop)
    return seen


def _run(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, _Stop), result.output


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting also comes from the environment: a flag must win over it."""
    for name in ("MODEL_REPOSITORY", "RUNS_DIR", "DATA_DIR", "DATA_ROOT", "STATE_DIR"):
        monkeypatch.setenv(f"HEADRACE_{name}", str(tmp_path / f"env-{name.lower()}"))
    monkeypatch.setenv("HEADRACE_KAFKA_BOOTSTRAP", "env-kafka:9092")
    monkeypatch.setenv("HEADRACE_STREAM_GROUP", "env-group")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    from security.watermark.key import generate_key, save_key

    return save_key(generate_key(10, 8), tmp_path / "key.json")


@pytest.mark.parametrize(
    ("argv", "stops"),
    [
        (["produce", "--model", "m", "--bootstrap", "127.0.0.1:1"],
         "headrace.commands.produce.answering_bootstrap"),
        (["data", "publish", "--bootstrap", "127.0.0.1:1"],
         "headrace.commands.data_ingest.reachable"),
        (["data", "profile", "--dataset", "digits"], "training.preprocess.profile_arrays"),
        (["watermark", "embed", "--key", "{key}"], "training.recipe.run_training"),
    ],
    ids=["produce", "data publish", "data profile", "watermark embed"],
)  # fmt: skip
def test_a_data_dir_an_embedded_dataset_would_not_read_is_refused(
    argv: list[str],
    stops: str,
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `produce --data-dir ~/mnist` (no --dataset) sent digits, `data publish` the
    same, `data profile --dataset digits --data-dir F` profiled digits and `watermark embed
    --data-dir F` trained on digits, the folder unread (train and tune refuse it since
    1acf121)."""
    monkeypatch.setattr(stops, _never)
    args = [arg.format(key=key_file) for arg in argv]
    monkeypatch.setattr("sys.argv", ["headrace", *args, "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: --data-dir: dataset 'digits' is embedded and reads no folder; name a dataset "
        "read from files (mnist or cifar10) or leave --data-dir out\n"
    )


TRAIN_FLAGS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "training": (
        ["--model", "resnet20", "--dataset", "cifar10", "--data-dir", "{tmp}/cifar",
         "--epochs", "7", "--batch-size", "32", "--width", "1.5", "--dropout", "0.25",
         "--lr", "0.01", "--optimizer", "sgd", "--weight-decay", "0.001",
         "--lr-schedule", "cosine", "--threads", "2", "--seed", "9", "--patience", "0",
         "--no-augment", "--no-normalize", "--balance", "loss", "--name", "my-net",
         "--repository", "{tmp}/repo", "--runs-dir", "{tmp}/runs", "--run-id", "r1",
         "--resume", "{tmp}/runs/my-net-r1/checkpoint.pt"],
        {"model": "resnet20", "dataset": "cifar10", "data_dir": "{tmp}/cifar", "epochs": 7,
         "batch_size": 32, "width": 1.5, "dropout": 0.25, "learning_rate": 0.01,
         "optimizer": "sgd", "weight_decay": 0.001, "lr_schedule": "cosine", "threads": 2,
         "seed": 9, "patience": 0, "preprocess.augment.enabled": False,
         "preprocess.normalize": False, "preprocess.balance": "loss", "name": "my-net",
         "repository": "{tmp}/repo", "runs_dir": "{tmp}/runs", "run_id": "r1",
         "resume": "{tmp}/runs/my-net-r1/checkpoint.pt", "publish": True, "data_source": None},
    ),
    "adversarial": (
        ["--adversarial", "pgd", "--adv-epsilon", "0.2", "--adv-steps", "5",
         "--adv-step-size", "0.1", "--adv-clean-fraction", "0.5", "--adv-warmup-epochs", "2",
         "--no-publish"],
        {"adversarial.method": "pgd", "adversarial.epsilon": 0.2, "adversarial.steps": 5,
         "adversarial.step_size": 0.1, "adversarial.clean_fraction": 0.5,
         "adversarial.warmup_epochs": 2, "publish": False},
    ),
    "privacy, flags at their click defaults typed": (
        ["--dp-epsilon", "8", "--dp-delta", "1e-6", "--max-grad-norm", "2",
         "--batch-size", "64", "--optimizer", "adam", "--augment"],
        {"privacy.target_epsilon": 8.0, "privacy.target_delta": 1e-6,
         "privacy.max_grad_norm": 2.0, "batch_size": 64, "optimizer": "adam",
         "preprocess.augment.enabled": True},
    ),
    "shards": (
        ["--from-shards", "--up-to-offset", "0=5,1=7", "--data-root", "{tmp}/data"],
        {"data_source.kind": "shards", "data_source.root": "{tmp}/data",
         "data_source.up_to_offset": {0: 5, 1: 7}, "data_dir": "{tmp}/env-data_dir"},
    ),
    "watermark": (
        ["--watermark-key", "{key}"],
        {"watermark.key_file": "{key}"},
    ),
}  # fmt: skip


def _expand(value: Any, tmp: Path, key: Path) -> Any:
    if isinstance(value, str) and ("{tmp}" in value or "{key}" in value):
        return Path(value.format(tmp=tmp, key=key))
    return value


def _check(config: Any, expected: dict[str, Any], tmp: Path, key: Path | None = None) -> None:
    got = {path: _field(config, path) for path in expected}
    want = {path: _expand(value, tmp, key or tmp) for path, value in expected.items()}
    assert got == want


@pytest.mark.parametrize("case", list(TRAIN_FLAGS))
def test_train_flags_reach_the_train_config(
    case: str, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags, expected = TRAIN_FLAGS[case]
    seen = _stop_at(monkeypatch, "training.recipe.run_training")
    _run(["train", *(flag.format(tmp=tmp_path, key=key_file) for flag in flags)])
    _check(seen[0][0], expected, tmp_path, key_file)


def test_a_repository_beside_no_publish_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `train --repository R --no-publish` trained, exported nothing and wrote nothing
    to R, the folder unread without a word (HEADRACE_MODEL_REPOSITORY, set by the autouse
    fixture, stays a default and is not checked)."""
    from headrace.errors import ConfigError

    monkeypatch.setattr("training.recipe.run_training", _never)
    args = ["train", "--repository", str(tmp_path / "repo"), "--no-publish"]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, ConfigError), result.output
    assert result.exception.message == (
        f"--repository {tmp_path / 'repo'} is not read with --no-publish: the trained model is "
        "neither exported nor written to any repository; leave --repository out, or drop "
        "--no-publish to publish to it"
    )


def test_compress_flags_reach_the_compress_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _stop_at(monkeypatch, "training.compression.recipe.compress_published")
    flags = (
        "--model src --from-version 3 --prune l2 --sparsity 0.3 --quant int4 --weights-only "
        "--distill-from teacher:2 --temperature 2 --alpha 0 --epochs 3 --qat-epochs 2 "
        "--lr 0.001 --qat-lr 0.0002 --batch-size 16 --seed 0 --data-dir {tmp}/mnist "
        "--data-root {tmp}/data --name out --repository {tmp}/repo --runs-dir {tmp}/runs "
        "--latency-seconds 0.25 --no-publish"
    )
    _run(["compress", *flags.format(tmp=tmp_path).split()])
    expected = {
        "source": "src", "source_version": 3, "prune": "l2", "sparsity": 0.3, "quant": "int4",
        "quantize_activations": False, "distill_from": "teacher:2", "temperature": 2.0,
        "alpha": 0.0, "epochs": 3, "qat_epochs": 2, "learning_rate": 0.001,
        "qat_learning_rate": 0.0002, "batch_size": 16, "seed": 0, "data_dir": "{tmp}/mnist",
        "data_root": "{tmp}/data", "name": "out", "repository": "{tmp}/repo",
        "runs_dir": "{tmp}/runs", "latency_seconds": 0.25, "publish": False,
    }  # fmt: skip
    _check(seen[0][0], expected, tmp_path)


def test_tune_flags_reach_the_tune_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.tuning.tuners.check_available", lambda tuner: None)
    seen = _stop_at(monkeypatch, "training.tuning.runner.run_tuning")
    space = tmp_path / "space.json"
    space.write_text('{"learning_rate": {"_type": "loguniform", "_value": [0.0001, 0.01]}}')
    flags = (
        "--model resnet20 --dataset cifar10 --data-dir {tmp}/cifar --tuner random "
        "--assessor medianstop --trials 3 --concurrency 2 --epochs 2 --search-space {space} "
        "--port 40123 --repository {tmp}/repo --name best --seed 4 --experiment-dir {tmp}/exp "
        "--max-duration-s 600 --experiment-id exp_1"
    )
    _run(["tune", *flags.format(tmp=tmp_path, space=space).split()])
    config, kwargs = seen[0]
    expected = {
        "train.model": "resnet20", "train.dataset": "cifar10", "train.data_dir": "{tmp}/cifar",
        "tuner": "Random", "assessor": "Medianstop", "trials": 3, "concurrency": 2,
        "train.epochs": 2, "port": 40123, "train.repository": "{tmp}/repo",
        "train.name": "best", "train.seed": 4, "experiment_dir": "{tmp}/exp",
        "max_duration_s": 600,
        "search_space": {"learning_rate": {"_type": "loguniform", "_value": [0.0001, 0.01]}},
    }  # fmt: skip
    _check(config, expected, tmp_path)
    assert kwargs["experiment_id"] == "exp_1"
    assert kwargs["resume_id"] is None


def test_serve_flags_reach_the_server_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _stop_at(monkeypatch, "serving.server.serve_forever")
    (tmp_path / "repo").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not read before the server starts")
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    flags = (
        "--repository {tmp}/repo --host 127.0.0.2 --port 0 --metrics-port 9100 --no-batching "
        "--version-policy specific:1,3 --poll-interval-s 0 --grace-s 0 "
        "--max-message-bytes 2048 --auth-token-env MY_TOKEN --auth-scope control "
        "--tls-cert {tmp}/cert.pem --tls-key {tmp}/key.pem"
    )
    _run(["serve", *flags.format(tmp=tmp_path).split()])
    expected = {
        "repository": "{tmp}/repo", "host": "127.0.0.2", "port": 0, "metrics_port": 9100,
        "batching": False, "version_policy.kind": "specific", "version_policy.versions": [1, 3],
        "poll_interval_s": 0.0, "grace_s": 0.0, "max_message_bytes": 2048,
        "auth_token": "s3cret", "auth_scope": "control", "tls_cert": "{tmp}/cert.pem",
        "tls_key": "{tmp}/key.pem",
    }  # fmt: skip
    _check(seen[0][0], expected, tmp_path)
    seen.clear()
    _run(["serve", "--repository", str(tmp_path / "repo"), "--no-metrics"])
    assert seen[0][0].metrics_port is None


def test_stream_worker_flags_reach_the_worker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("streams.broker.answers_metadata", lambda *a, **k: True)
    monkeypatch.setattr("streams.topics.create_topics", lambda *a, **k: None)
    monkeypatch.setattr("streams.transactions.require_transactions", lambda *a, **k: None)
    seen = _stop_at(monkeypatch, "streams.worker.run_worker")
    (tmp_path / "repo").mkdir()
    monkeypatch.setenv("HEADRACE_UNASSIGNED_WARN_S", "4.5")  # a setting only: no flag
    flags = (
        "--repository {tmp}/repo --bootstrap flag-kafka:9092 --group g1 --concurrency 3 "
        "--max-batch 16 --max-delay-ms 20 --max-buffered 100 --metrics-port 0 "
        "--poll-interval-s 0 --version-policy latest:2 --metrics-host 0.0.0.0 "
        "--processing-guarantee exactly_once --loglevel error"
    )
    _run(["stream", "worker", *flags.format(tmp=tmp_path).split()])
    config, _announce, kwargs = seen[0]
    expected = {
        "repository": "{tmp}/repo", "bootstrap": "flag-kafka:9092", "group_id": "g1",
        "concurrency": 3, "max_batch": 16, "max_delay_s": 0.02, "max_buffered": 100,
        "metrics_port": 0, "poll_interval_s": 0.0, "version_policy.kind": "latest",
        "version_policy.latest_n": 2, "metrics_host": "0.0.0.0",
        "processing_guarantee": "exactly_once", "unassigned_warn_s": 4.5,
    }  # fmt: skip
    _check(config, expected, tmp_path)
    assert kwargs == {"loglevel": "error"}


def test_data_ingest_flags_reach_the_ingest_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("headrace.commands.data_ingest.reachable", lambda *a: "unused")
    seen = _stop_at(monkeypatch, "streams.ingest_app.run_ingest")
    flags = (
        "--dataset mnist --bootstrap flag-kafka:9092 --data-root {tmp}/data --group grp "
        "--flush-records 10 --flush-interval-s 0.5 --loglevel error"
    )
    _run(["data", "ingest", *flags.format(tmp=tmp_path).split()])
    config, _announce, kwargs = seen[0]
    expected = {
        "dataset": "mnist", "bootstrap": "flag-kafka:9092", "data_root": "{tmp}/data",
        "group_id": "grp", "flush_records": 10, "flush_interval_s": 0.5,
    }  # fmt: skip
    _check(config, expected, tmp_path)
    assert kwargs == {"loglevel": "error"}


def test_train_agent_flags_reach_the_agent_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headrace.commands import jobs

    built: list[Any] = []
    real_build: Callable[..., Any] = jobs.build_config

    def keep(factory: Callable[..., Any], **values: Any) -> Any:
        built.append(real_build(factory, **values))
        return built[-1]

    monkeypatch.setattr("headrace.commands.jobs._reachable", lambda flag: flag)
    monkeypatch.setattr("headrace.commands.jobs.build_config", keep)
    seen = _stop_at(monkeypatch, "streams.job_metrics.TrainingMetrics.serve")
    monkeypatch.setenv("HEADRACE_BROKER_SILENCE_S", "7.5")  # a setting only: no flag
    monkeypatch.setenv("HEADRACE_UNASSIGNED_WARN_S", "4.5")  # likewise
    flags = (
        "--bootstrap flag-kafka:9092 --repository {tmp}/repo --runs-dir {tmp}/runs --group grp "
        "--ray-cpus 3 --metrics-port 0 --metrics-host 0.0.0.0 --loglevel error"
    )
    _run(["train", "agent", *flags.format(tmp=tmp_path).split()])
    expected = {
        "bootstrap": "flag-kafka:9092", "repository": "{tmp}/repo", "runs_dir": "{tmp}/runs",
        "group_id": "grp", "ray_cpus": 3, "metrics_port": 0, "metrics_host": "0.0.0.0",
        "broker_silence_s": 7.5, "unassigned_warn_s": 4.5,
    }  # fmt: skip
    _check(built[0], expected, tmp_path)
    assert seen[0][1:3] == (0, "0.0.0.0")  # (self, port, host)


def test_watermark_embed_flags_reach_the_train_config(
    key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _stop_at(monkeypatch, "training.recipe.run_training")
    flags = (
        "--key {key} --model resnet20 --dataset cifar10 --data-dir {tmp}/cifar --epochs 2 "
        "--lr 0.01 --batch-size 16 --seed 3 --triggers-per-batch 4 --strength 0.5 --name wm "
        "--repository {tmp}/repo --runs-dir {tmp}/runs"
    )
    _run(["watermark", "embed", *flags.format(tmp=tmp_path, key=key_file).split()])
    expected = {
        "model": "resnet20", "dataset": "cifar10", "data_dir": "{tmp}/cifar", "epochs": 2,
        "learning_rate": 0.01, "batch_size": 16, "seed": 3, "name": "wm",
        "repository": "{tmp}/repo", "runs_dir": "{tmp}/runs", "watermark.key_file": "{key}",
        "watermark.triggers_per_batch": 4, "watermark.whitebox_strength": 0.5,
    }  # fmt: skip
    _check(seen[0][0], expected, tmp_path, key_file)


@pytest.mark.parametrize("strength", ["0.5", "0.1"], ids=["0.5", "its default"])
def test_a_strength_a_key_without_signature_would_not_read_is_refused(
    strength: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `watermark embed --strength 0.5` with a key made with --bits 0 trained without
    a white-box signature, the strength unread without a word."""
    from headrace.errors import ConfigError
    from security.watermark.key import generate_key, save_key

    key = save_key(generate_key(10, 0), tmp_path / "no-bits.json")
    monkeypatch.setattr("training.recipe.run_training", _never)
    args = ["watermark", "embed", "--key", str(key), "--strength", strength]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, ConfigError), result.output
    assert result.exception.message == (
        f"--strength weights the white-box signature, and the key {key} has none (made with "
        "--bits 0), so it would go unread: leave --strength out, or make a key with white-box "
        "bits (`headrace watermark keygen --bits 64`)"
    )
    _stop_at(monkeypatch, "training.recipe.run_training")
    for unread_but_agreeing in (["--strength", "0"], []):  # no signature: what the key gives
        _run(["watermark", "embed", "--key", str(key), *unread_but_agreeing])


def test_a_strength_of_zero_with_a_signature_key_says_how_to_verify(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--strength 0` turns the white-box signature off; `watermark verify` checks it unless
    told --no-whitebox, so a model marked that way failed verification without a hint."""
    seen = _stop_at(monkeypatch, "training.recipe.run_training")
    result = CliRunner().invoke(
        cli, ["watermark", "embed", "--key", str(key_file), "--strength", "0"]
    )
    assert isinstance(result.exception, _Stop), result.output
    assert seen[0][0].watermark.whitebox_strength == 0
    assert (
        "note: --strength 0 embeds none of the key's 8 white-box bits; check this model with "
        "`headrace watermark verify --no-whitebox`"
    ) in result.stderr
    quiet = CliRunner().invoke(cli, ["watermark", "embed", "--key", str(key_file)])
    assert isinstance(quiet.exception, _Stop) and "note:" not in quiet.stderr


def test_check_grad_flags_reach_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _stop_at(monkeypatch, "training.gradcheck.check_gradients")
    flags = (
        "--model lenet5 --samples 0 --batch-size 3 --num-classes 5 --seed 7 --step 1e-5 "
        "--tolerance 0.01"
    )
    _run(["check-grad", *flags.split()])
    model, inputs, targets, kwargs = seen[0]
    assert kwargs == {"max_params": None, "step": 1e-5, "tolerance": 0.01, "seed": 7,
                      "name": "lenet5"}  # fmt: skip
    assert inputs.shape[0] == targets.shape[0] == 3
    assert model(inputs).shape == (3, 5)


def test_produce_and_results_flags_reach_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("headrace.commands.produce.answering_bootstrap", lambda flag: flag)
    produced = _stop_at(monkeypatch, "streams.producer.produce_requests")
    flags = (
        "--model m --n 5 --rate 10 --format binary --topic t1 --manifest {tmp}/ids.jsonl "
        "--bootstrap flag-kafka:9092"
    )
    _run(["produce", *flags.format(tmp=tmp_path).split()])
    address, topic, model, _images, _labels, count, *rest = produced[0]
    assert (address, topic, model, count) == ("flag-kafka:9092", "t1", "m", 5)
    assert rest[:3] == ["binary", 10.0, tmp_path / "ids.jsonl"]

    consumed = _stop_at(monkeypatch, "streams.results.consume")
    flags = "--topic r1 --dlq-topic d1 --idle-s 2 --bootstrap flag-kafka:9092"
    _run(["results", *flags.split()])
    _run(["results", "--follow"])
    assert consumed[0] == ("flag-kafka:9092", ["r1", "d1"], False, 2.0, {})
    assert consumed[1][2] is True


def test_idle_s_beside_follow_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `results --follow --idle-s 30` read until Ctrl-C, however long the topics were
    quiet: --follow sets no consumer timeout, so the 30 s went unread."""
    from headrace.errors import ConfigError

    monkeypatch.setattr("headrace.commands.produce.answering_bootstrap", _never)
    result = CliRunner().invoke(cli, ["results", "--follow", "--idle-s", "30"])
    assert isinstance(result.exception, ConfigError), result.output
    assert result.exception.message == (
        "--idle-s 30 does not apply with --follow, which reads until Ctrl-C however quiet the "
        "topics: leave --follow out to stop after --idle-s of quiet, or leave --idle-s out"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stream", "worker", "--repository", "{tmp}", "--bootstrap", "k:9092",
          "--metrics-host", "0.0.0.0"],
         "--metrics-host only applies with --metrics-port: without a port /metrics is off; add "
         "--metrics-port PORT (0 = a free one) or leave --metrics-host out"),
        (["train", "agent", "--bootstrap", "k:9092", "--repository", "{tmp}/repo",
          "--runs-dir", "{tmp}/runs", "--metrics-host", "0.0.0.0"],
         "--metrics-host only applies with --metrics-port: without a port /metrics is off; add "
         "--metrics-port PORT (0 = a free one) or leave --metrics-host out"),
        (["serve", "--repository", "{tmp}", "--metrics-port", "9100", "--no-metrics"],
         "--metrics-port and --no-metrics contradict each other: leave one out"),
    ],
    ids=["stream worker", "train agent", "serve"],
)  # fmt: skip
def test_a_metrics_flag_that_would_go_unread_is_refused(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `stream worker --metrics-host 0.0.0.0` (or `train agent`) without
    --metrics-port served no /metrics and said nothing of the address; `serve --metrics-port
    9100 --no-metrics` served none either."""
    from headrace.errors import ConfigError

    monkeypatch.setattr("streams.broker.answers_metadata", lambda *a, **k: True)
    monkeypatch.setattr("streams.topics.create_topics", lambda *a, **k: None)
    monkeypatch.setattr("headrace.commands.jobs._reachable", lambda flag: flag)
    for target in ("streams.worker.run_worker", "training.ray_jobs.connect_ray",
                   "serving.server.serve_forever"):  # fmt: skip
        monkeypatch.setattr(target, _never)
    result = CliRunner().invoke(cli, [arg.format(tmp=tmp_path) for arg in argv])
    assert isinstance(result.exception, ConfigError), result.output
    assert result.exception.message == message
