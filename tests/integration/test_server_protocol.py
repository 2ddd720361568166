"""The server speaks the Open Inference Protocol to Triton's own client, `tritonclient.grpc`:
health, metadata, configuration, inference (raw and typed contents, FP32 batches, streams),
load/unload, and a hot reload to version 2 while requests flow, with zero failed requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_fixtures import (
    ModelFiles,
    ServerProcess,
    digits_batch,
    lenet_config,
    publish,
    reference,
    run_driver,
    running_server,
    start_driver,
    wait_until,
)

pytestmark = pytest.mark.integration

MODEL = "digits"
LABELLED = "digits-labelled"
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BATCH_SIZES = (1, 3, 8, 2, 5)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("protocol-repo")
    for name in (MODEL, "digits-ctl", "digits-live"):
        publish(root, lenet_config(name), model_files.lenet_a)
    publish(root, lenet_config(LABELLED, labels=LABELS), model_files.lenet_a)
    with running_server(root, "--poll-interval-s", "0.2", log_dir=root.parent) as process:
        yield process


@pytest.fixture(scope="module")
def batches() -> list[np.ndarray]:
    return [digits_batch(n, seed=n) for n in BATCH_SIZES]


@pytest.fixture(scope="module")
def report(server: ServerProcess, batches: list[np.ndarray]) -> dict[str, Any]:
    """One tritonclient session over the protocol; the tests below read its report."""
    return run_driver(
        server.address,
        "protocol",
        model=MODEL,
        labelled_model=LABELLED,
        batches=[b.tolist() for b in batches],
    )


def ints(values: list[Any]) -> list[int]:
    return [int(v) for v in values]  # protobuf's JSON writes int64 as strings


def assert_output(got: dict[str, Any], model_file: Path, batch: np.ndarray) -> None:
    logits = np.asarray(got["output"], np.float32)
    np.testing.assert_allclose(logits, reference(model_file, batch), rtol=1e-4, atol=1e-5)


def test_live_and_ready(report: dict[str, Any]) -> None:
    assert report["live"] is True
    assert report["ready"] is True
    assert report["model_ready"] is True
    assert report["model_ready_v1"] is True
    assert report["model_ready_v9"] is False


def test_server_metadata(report: dict[str, Any]) -> None:
    meta = report["server_metadata"]
    assert meta["name"] == "headrace"
    assert meta["version"]
    assert {"model_repository", "statistics", "health", "classification"} <= set(meta["extensions"])


def test_model_metadata(report: dict[str, Any]) -> None:
    meta = report["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == (
        MODEL,
        ["1"],
        "onnxruntime_onnx",
    )
    [tensor_in], [tensor_out] = meta["inputs"], meta["outputs"]
    assert (tensor_in["name"], tensor_in["datatype"], ints(tensor_in["shape"])) == (
        "input",
        "FP32",
        [-1, 1, 28, 28],
    )
    assert (tensor_out["name"], tensor_out["datatype"], ints(tensor_out["shape"])) == (
        "logits",
        "FP32",
        [-1, 10],
    )


def test_model_config(report: dict[str, Any]) -> None:
    config = report["model_config"]
    assert (config["name"], config["platform"]) == (MODEL, "onnxruntime_onnx")
    assert config["max_batch_size"] == 8
    [tensor_in], [tensor_out] = config["input"], config["output"]
    assert (tensor_in["name"], tensor_in["data_type"], ints(tensor_in["dims"])) == (
        "input",
        "TYPE_FP32",
        [1, 28, 28],
    )
    assert (tensor_out["name"], tensor_out["data_type"], ints(tensor_out["dims"])) == (
        "logits",
        "TYPE_FP32",
        [10],
    )
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 1000
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


def test_model_config_states_the_servers_version_policy(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    root = tmp_path / "repo"
    for model_file in (model_files.lenet_a, model_files.lenet_b):
        publish(root, lenet_config(MODEL), model_file)
    args = ("--version-policy", "all", "--poll-interval-s", "0")
    with running_server(root, *args, log_dir=tmp_path) as server:
        config = run_driver(server.address, "model_config", model=MODEL)
    assert config["version_policy"] == {"all": {}}


def test_classification_answers_the_top_classes_of_each_row(
    report: dict[str, Any], model_files: ModelFiles, batches: list[np.ndarray]
) -> None:
    logits = reference(model_files.lenet_a, batches[1])
    for name in (MODEL, LABELLED):
        got = report["classification"][name]
        assert got["datatype"] == "BYTES"
        assert len(got["classes"]) == len(batches[1])
        for row, classes in zip(logits, got["classes"], strict=True):
            best = np.argsort(-row, kind="stable")[:3].tolist()
            fields = [element.split(":") for element in classes]
            assert [int(f[1]) for f in fields] == best
            np.testing.assert_allclose([float(f[0]) for f in fields], row[best], atol=1e-5)
            if name == LABELLED:
                assert [f[2] for f in fields] == [LABELS[i] for i in best]
            else:
                assert all(len(f) == 2 for f in fields)


def test_repository_index_lists_ready_models(report: dict[str, Any]) -> None:
    index = {m["name"]: m for m in report["index"]}
    assert {MODEL, "digits-ctl", "digits-live"} <= set(index)
    assert (index[MODEL]["version"], index[MODEL]["state"]) == ("1", "READY")


def test_infer_with_raw_input_contents(
    report: dict[str, Any], model_files: ModelFiles, batches: list[np.ndarray]
) -> None:
    for key in ("raw", "raw_v1"):
        assert (report[key]["model_name"], report[key]["model_version"]) == (MODEL, "1")
        assert_output(report[key], model_files.lenet_a, batches[0])
    assert report["raw"]["id"] == "raw-1"


def test_infer_with_typed_contents(
    report: dict[str, Any], model_files: ModelFiles, batches: list[np.ndarray]
) -> None:
    assert (report["typed"]["id"], report["typed"]["model_version"]) == ("typed-1", "1")
    assert_output(report["typed"], model_files.lenet_a, batches[0])


def test_concurrent_fp32_batches_each_get_their_rows(
    report: dict[str, Any], model_files: ModelFiles, batches: list[np.ndarray]
) -> None:
    assert len(report["concurrent"]) == len(batches)
    for i, (got, batch) in enumerate(zip(report["concurrent"], batches, strict=True)):
        assert "error" not in got, got
        assert got["id"] == f"batch-{i}"
        assert np.asarray(got["output"]).shape == (len(batch), 10)
        assert_output(got, model_files.lenet_a, batch)


def test_stream_infer_answers_every_request(
    report: dict[str, Any], model_files: ModelFiles, batches: list[np.ndarray]
) -> None:
    stream = report["stream"]
    assert "errors" not in stream, stream["errors"]
    assert sorted(stream) == sorted(f"stream-{i}" for i in range(len(batches)))
    for i, batch in enumerate(batches):
        assert_output(stream[f"stream-{i}"], model_files.lenet_a, batch)


def test_stream_marks_final_responses_and_honours_triton_grpc_error(
    server: ServerProcess,
) -> None:
    got = run_driver(server.address, "stream_flags", model=MODEL, batch=digits_batch(1).tolist())
    default = got["default"]
    answered = sorted((a["id"], a["final"]) for a in default if "id" in a)
    assert answered == [("good-0", True), ("good-2", True)], default
    [error] = [a for a in default if "status" in a]
    assert error["status"] == "None"  # an error message on the stream, which goes on
    assert "unknown input 'no-such-input'" in error["message"]
    closing = got["grpc_error"]
    assert closing["first"] == {"id": "good-0", "final": True}
    assert closing["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "unknown input 'no-such-input'" in closing["error"]["message"]
    assert "no longer in valid state" in closing["send_after"]["message"]  # the stream ended


def test_statistics_count_the_rows_inferred(
    report: dict[str, Any], batches: list[np.ndarray]
) -> None:
    [stats] = report["statistics"]
    assert (stats["name"], stats["version"]) == (MODEL, "1")
    # raw + raw_v1 + typed (batch 0 each), every batch unary and streamed, then batch 1 as
    # classes
    rows = 3 * len(batches[0]) + 2 * sum(len(b) for b in batches) + len(batches[1])
    assert int(stats["inference_count"]) == rows
    assert int(stats["inference_stats"]["success"]["count"]) == 3 + 2 * len(batches) + 1


def test_statistics_list_each_batch_size_executed(report: dict[str, Any]) -> None:
    """batch_stats, as Triton fills them: one entry per batch size the model executed, ordered
    by size, each counting its batches in compute_input, compute_infer and compute_output
    with their summed times; together they hold every execution and every row."""
    [stats] = report["statistics"]
    batch_stats = stats.get("batch_stats", [])
    assert batch_stats, "ModelStatistics has no batch_stats"
    sizes = [int(entry["batch_size"]) for entry in batch_stats]
    assert sizes == sorted(set(sizes)) and 1 in sizes  # the first requests ran one at a time
    counts = []
    for entry in batch_stats:
        phases = [entry[phase] for phase in ("compute_input", "compute_infer", "compute_output")]
        [count] = {int(phase["count"]) for phase in phases}
        assert count >= 1 and int(entry["compute_infer"]["ns"]) > 0
        counts.append(count)
    assert sum(counts) == int(stats["execution_count"])
    rows = sum(size * count for size, count in zip(sizes, counts, strict=True))
    assert rows == int(stats["inference_count"])


def test_statistics_time_each_request_in_every_phase(report: dict[str, Any]) -> None:
    """inference_stats, per request as in Triton: queue and the three compute phases of the
    batch it ran in, each counted once per successful request (compute_input and
    compute_output were absent, so perf_analyzer's server-side breakdown lacked them)."""
    [stats] = report["statistics"]
    per_request = stats["inference_stats"]
    successes = int(per_request["success"]["count"])
    assert successes >= 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(per_request[phase]["count"]) == successes, phase
        assert int(per_request[phase]["ns"]) > 0, phase


def test_load_and_unload(server: ServerProcess, model_files: ModelFiles) -> None:
    batch = digits_batch(2)
    got = run_driver(server.address, "load_unload", model="digits-ctl", batch=batch.tolist())
    assert got["before"] == {"status": "OK"}
    unloaded = got["unloaded"]
    assert unloaded["ready"] is False
    assert unloaded["index"] == [{"name": "digits-ctl", "state": "UNLOADED"}]
    assert unloaded["infer"]["status"] == "UNAVAILABLE"
    assert "'digits-ctl' is not loaded; load it first" in unloaded["infer"]["message"]
    loaded = got["loaded"]
    assert loaded["ready"] is True
    assert loaded["index"] == [{"name": "digits-ctl", "version": "1", "state": "READY"}]
    assert_output(loaded["infer"], model_files.lenet_a, batch)
    overridden = got["overridden"]  # load_model(config=...): max_batch_size 1, 2 instances
    assert overridden["max_batch_size"] == 1
    assert overridden["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert overridden["infer"]["status"] == "INVALID_ARGUMENT"  # the batch of 2 is over 1
    assert "batch size 2 must be between 1 and 1" in overridden["infer"]["message"]
    assert got["reloaded_max_batch_size"] == 8  # a load without one: config.json's again
    assert got["load_unknown"]["status"] == "NOT_FOUND"
    assert "'no-such-model' is not in the repository" in got["load_unknown"]["message"]
    assert got["unload_unknown"]["status"] == "NOT_FOUND"


def test_reload_to_version_2_while_requests_flow(
    server: ServerProcess, model_files: ModelFiles
) -> None:
    model, threads = "digits-live", 4
    batch = digits_batch(1, seed=7)

    def served(version: str) -> float:
        metrics = server.scrape()
        return metrics.value("inference_request_success_total", model=model, version=version)

    driver = start_driver(
        server.address, "reload", model=model, new_version="2", batch=batch.tolist(),
        threads=threads, min_new=10, max_s=60,
    )  # fmt: skip
    try:
        wait_until(lambda: served("1") >= 5 * threads, "requests answered by version 1")
        assert publish(server.repository, lenet_config(model), model_files.lenet_b) == 2
    except BaseException:
        driver.kill()
        raise
    got = driver.finish()

    assert got["failures"] == []
    assert len(got["threads"]) == threads
    for runs in got["threads"]:
        # each client saw version 1, then version 2, and never version 1 again
        assert [version for version, _ in runs] == ["1", "2"], runs
        assert runs[1][1] >= 10
    assert_output({"output": got["outputs"]["1"]}, model_files.lenet_a, batch)
    assert_output({"output": got["outputs"]["2"]}, model_files.lenet_b, batch)
    assert served("2") >= 10 * threads
