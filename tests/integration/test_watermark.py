"""Watermarks end to end on digits: a marked model verifies through a real gRPC server and from
its repository entry, an unmarked one and another key do not, only trigger inputs are sent,
and a published model can be marked by fine-tuning (`headrace watermark embed --from-model`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from click.testing import CliRunner, Result
from server_fixtures import REPO_ROOT, ServerProcess, running_server

from headrace.cli import cli
from headrace.errors import ConfigError, WatermarkError
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from security.watermark.config import WatermarkConfig
from security.watermark.key import WatermarkKey, load_key, save_key
from security.watermark.oracles import GrpcOracle
from security.watermark.triggers import trigger_set
from security.watermark.verify import check_triggers
from serving.client import InferenceClient
from serving.repository import ModelRepository
from training.config import TrainConfig
from training.recipe import run_training

# Fixed secrets: the tests are deterministic (seeded training, fixed keys).
OWNER_SECRET = "36ee5b039335850f6fd1028e8ccc1c1cdbf5292d1899a4a74f96cda0ee2eae5e"
OTHER_SECRET = "e4a3d4897534f1c65fc62c88b8ab9fd3a2f0a5c902615f8ad43881ef9baefdfe"


@dataclass(frozen=True)
class Setup:
    root: Path
    repository: Path
    key_file: Path
    other_key_file: Path
    server: ServerProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A marked and an unmarked LeNet-5 on digits, published and served."""
    root = tmp_path_factory.mktemp("watermark")
    key_file = save_key(WatermarkKey.model_validate({"secret": OWNER_SECRET}), root / "key.json")
    other = save_key(WatermarkKey.model_validate({"secret": OTHER_SECRET}), root / "other.json")
    common: dict[str, Any] = {
        "repository": root / "repo",
        "runs_dir": root / "runs",
        "progress": False,
        "patience": 0,
    }
    mark = WatermarkConfig(key_file=key_file, triggers_per_batch=16)
    run_training(TrainConfig(name="marked", epochs=6, watermark=mark, **common))
    run_training(TrainConfig(name="plain", epochs=2, **common))
    with running_server(root / "repo", log_dir=root) as server:
        yield Setup(root, root / "repo", key_file, other, server)


def _verify(setup: Setup, *args: str, key: Path | None = None) -> tuple[int, dict[str, Any]]:
    result: Result = CliRunner().invoke(
        cli,
        ["watermark", "verify", "--key", str(key or setup.key_file), "--json", *args],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def test_published_metadata_names_the_key_and_not_the_secret(setup: Setup) -> None:
    repo = ModelRepository(setup.repository)
    marked, plain = repo.latest("marked"), repo.latest("plain")
    key = load_key(setup.key_file)
    assert marked.metadata.watermark_id == key.watermark_id
    assert marked.metadata.metrics["watermark_whitebox_ber"] == 0.0
    for test in ("blackbox", "whitebox"):  # what `watermark verify` finds, below: verified
        assert marked.metadata.metrics[f"watermark_{test}_p_value"] < 1e-3
    assert plain.metadata.watermark_id is None
    for file in marked.path.iterdir():
        assert OWNER_SECRET.encode() not in file.read_bytes()
        assert key.secret_bytes not in file.read_bytes()


def test_repository_entry_verifies_the_marked_model_only(setup: Setup) -> None:
    code, report = _verify(setup, "--repository", str(setup.repository), "--model", "marked")
    assert code == 0 and report["verified"] is True
    assert report["blackbox"]["p_value"] < 1e-3 and report["blackbox"]["trials"] == 100
    white = report["whitebox"]
    assert white["bit_error_rate"] == 0.0
    assert (white["layer"], white["source"]) == ("features.3.weight", "model.onnx")

    code, report = _verify(setup, "--repository", str(setup.repository), "--model", "plain")
    assert code == 1 and report["verified"] is False
    assert report["blackbox"]["p_value"] > 1e-3
    assert 0.25 < report["whitebox"]["bit_error_rate"] < 0.75


def test_another_key_does_not_verify_the_marked_model(setup: Setup) -> None:
    code, report = _verify(
        setup,
        "--repository",
        str(setup.repository),
        "--model",
        "marked",
        key=setup.other_key_file,
    )
    assert code == 1 and report["verified"] is False
    assert report["blackbox"]["p_value"] > 1e-3
    assert report["whitebox"]["bit_error_rate"] > 0.25


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_served_marked_model_verifies_through_grpc_and_unmarked_fails(setup: Setup) -> None:
    address = setup.server.address
    code, report = _verify(setup, "--grpc", address, "--model", "marked")
    assert code == 0 and report["verified"] is True and report["whitebox"] is None
    assert report["blackbox"]["p_value"] < 1e-3
    # The real command line, for its exit code and text.
    plain = _cli("watermark", "verify", "--key", str(setup.key_file), "--grpc", address,
                 "--model", "plain")  # fmt: skip
    assert plain.returncode == 1, plain.stderr[-2000:]
    assert "NOT VERIFIED" in plain.stdout and "black box:" in plain.stdout


class _Recorder(grpc.UnaryUnaryClientInterceptor):
    """Keeps the bytes of every request the client sends."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        self.requests.append(request)
        return continuation(details, request)


def test_only_trigger_inputs_leave_the_verifier(setup: Setup) -> None:
    key = load_key(setup.key_file)
    recorder = _Recorder()
    client = InferenceClient(setup.server.address)
    client.channel = grpc.intercept_channel(client.channel, recorder)
    client.stub = pb_grpc.GRPCInferenceServiceStub(client.channel)
    oracle = GrpcOracle(setup.server.address, "marked", client=client)
    try:
        result = check_triggers(key, oracle)
    finally:
        oracle.close()
    assert result.p_value < 1e-3
    wire = b"".join(r.SerializeToString() for r in recorder.requests)
    secret = key.secret.get_secret_value()
    for forbidden in (key.secret_bytes, secret.encode(), secret.upper().encode(),
                      setup.key_file.read_bytes()):  # fmt: skip
        assert forbidden not in wire
    infers = [r for r in recorder.requests if isinstance(r, pb.ModelInferRequest)]
    sent = np.concatenate(
        [
            np.frombuffer(r.raw_input_contents[0], "<f4").reshape(tuple(r.inputs[0].shape))
            for r in infers
        ]
    )
    spec = ModelRepository(setup.repository).config("marked").preprocessing
    assert spec is not None
    triggers = trigger_set(key, (1, 28, 28), 10)
    assert np.array_equal(sent, spec.apply(triggers.pixels))  # the trigger inputs, nothing else
    others = [
        type(r).__name__ for r in recorder.requests if not isinstance(r, pb.ModelInferRequest)
    ]
    assert set(others) <= {"ModelMetadataRequest", "ModelConfigRequest"}


def test_embed_marks_a_published_model_by_fine_tuning(setup: Setup) -> None:
    args = ["watermark", "embed", "--key", str(setup.key_file), "--from-model", "plain",
            "--epochs", "3", "--triggers-per-batch", "32", "--repository", str(setup.repository),
            "--runs-dir", str(setup.root / "runs"), "--name", "plain-marked", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "plain-marked" and report["version"] == 1
    entry = ModelRepository(setup.repository).latest("plain-marked")
    assert entry.metadata.watermark_id == load_key(setup.key_file).watermark_id
    assert entry.metadata.lineage["finetuned_from"] == "plain:1"
    code, verdict = _verify(setup, "--repository", str(setup.repository), "--model", "plain-marked")
    assert code == 0 and verdict["verified"] is True, verdict
    assert "warning" not in result.stderr


def test_embed_warns_when_the_mark_is_too_weak_to_verify(setup: Setup) -> None:
    args = ["watermark", "embed", "--key", str(setup.key_file), "--from-model", "plain",
            "--epochs", "1", "--triggers-per-batch", "1", "--strength", "0",
            "--repository", str(setup.repository), "--runs-dir", str(setup.root / "runs"),
            "--name", "plain-faint"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "warning: version 1 would not verify yet (black-box p-value" in result.stderr
    code, verdict = _verify(setup, "--repository", str(setup.repository), "--model", "plain-faint")
    assert code == 1 and verdict["verified"] is False, verdict


def test_quantized_marked_model_verifies_from_its_integer_weights(setup: Setup) -> None:
    args = ["compress", "--model", "marked", "--quant", "int8", "--qat-epochs", "1",
            "--name", "marked-int8", "--repository", str(setup.repository), "--runs-dir",
            str(setup.root / "runs"), "--latency-seconds", "0.05", "--json"]  # fmt: skip
    compressed = CliRunner().invoke(cli, args)
    assert compressed.exit_code == 0, (compressed.output, compressed.exception)
    code, report = _verify(setup, "--repository", str(setup.repository), "--model", "marked-int8")
    white = report["whitebox"]
    assert white["layer"] == "features.3.weight"
    assert white["source"] == "model.onnx, int8 dequantized"
    assert white["bit_error_rate"] == 0.0 and report["whitebox_verified"] is True, report


def test_unreachable_server_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    key_file = save_key(WatermarkKey.model_validate({"secret": OWNER_SECRET}), tmp_path / "k")
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        result = _cli("watermark", "verify", "--key", str(key_file), "--grpc", address,
                      "--model", "marked")  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]  # 1 would mean "checked: not marked"
    assert result.stderr.startswith("error: cannot check model 'marked' at 127.0.0.1:")
    assert "UNAVAILABLE" in result.stderr and "check that the server is running" in result.stderr
    assert "Traceback" not in result.stderr and "VERIFIED" not in result.stdout


def test_keygen_writes_a_private_key_once(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    first = CliRunner().invoke(cli, ["watermark", "keygen", "--out", str(out), "--triggers", "50"])
    assert first.exit_code == 0, first.output
    key = load_key(out)
    assert key.trigger_count == 50 and f"watermark id {key.watermark_id}" in first.stdout
    assert key.secret.get_secret_value() not in first.output
    again = CliRunner().invoke(cli, ["watermark", "keygen", "--out", str(out)])
    assert isinstance(again.exception, WatermarkError) and "already exists" in str(again.exception)
    assert load_key(out).secret_bytes == key.secret_bytes
    bad = CliRunner().invoke(cli, ["watermark", "keygen", "--out", str(out), "--triggers", "3"])
    assert isinstance(bad.exception, ConfigError) and "trigger_count" in str(bad.exception)


def test_keygen_refuses_a_folder_as_out(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["watermark", "keygen", "--out", f"{tmp_path}/keys/"])
    assert isinstance(missing.exception, ConfigError), missing.output
    assert "names a folder" in str(missing.exception)
    assert f"--out {tmp_path}/keys/watermark-key.json" in str(missing.exception)
    assert not (tmp_path / "keys").exists()  # no file named like the folder
    existing = CliRunner().invoke(cli, ["watermark", "keygen", "--out", f"{tmp_path}/"])
    assert existing.exit_code == 2 and "is a directory" in existing.output
    assert list(tmp_path.iterdir()) == []
