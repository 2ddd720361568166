"""Safe model loading on a real server: tampered files, ONNX external data reaching out of the
version folder (`../x`, `a/../../x`, a symlink) and a pickle carrying code are all refused,
nothing is created or run, and the good model answers throughout (one server start)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import (
    ServerProcess,
    digits_batch,
    export_lenet,
    inference_stub,
    lenet_config,
    open_channel,
    output_array,
    publish,
    raw_request,
    reference,
    rpc_error,
    running_server,
    wait_until,
)
from unsafe_files import WIDTH, external_data_model, malicious_weights, write_weights

from headrace.errors import RepositoryError
from protos import grpc_service_pb2 as pb
from serving.model_config import ModelConfig, TensorSpec
from serving.repository import ModelRepository, sha256_file
from training.published import WEIGHTS_FILE, load_published_model

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

X = digits_batch(2)
# model -> (what its load error must say, the reason label of model_load_failures)
REFUSED = {
    "tampered": ("does not match its sha256", "integrity_check_failed"),
    "dotdot": ("keeps its data in '../x', which has a '..' component", "unsafe_model"),
    "nested": ("keeps its data in 'a/../../x', which has a '..' component", "unsafe_model"),
    "link": ("w.bin is a symlink", "unsafe_model"),
}


def external_config(name: str) -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=8,
        inputs=[TensorSpec(name="input", dims=[WIDTH])],
        outputs=[TensorSpec(name="output", dims=[WIDTH])],
    )


def files_in(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


class World:
    """A folder holding the repository and a secret file beside it; nothing else may appear."""

    def __init__(self, root: Path, lenet: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        (root / "outside").mkdir()
        self.secret = write_weights(root / "outside" / "secret.bin")  # what an attacker wants
        self.marker = root / "outside" / "pickle-ran"
        self.lenet = lenet
        publish(self.repo, lenet_config("good"), lenet)
        tampered = self.repo / "tampered" / str(publish(self.repo, lenet_config("tampered"), lenet))
        data = bytearray((tampered / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tampered / "model.onnx").write_bytes(bytes(data))
        for name, location in (("dotdot", "../x"), ("nested", "a/../../x")):
            # The file the location points at exists (the model folder, outside the version).
            (self.repo / name).mkdir(parents=True)
            write_weights(self.repo / name / "x")
            publish(self.repo, external_config(name), external_data_model(root / name, location))
        self._publish_link()
        self._publish_pickled()

    def _publish_link(self) -> None:
        """external data w.bin, published (its sha256 recorded), then swapped for a symlink
        to an identical file outside: the sha256 check passes, only the link check refuses."""
        model = external_data_model(self.root / "link.onnx", "w.bin")
        weights = write_weights(self.root / "w.bin")
        repo = ModelRepository(self.repo)
        version = repo.publish(
            external_config("link"), model, architecture="test", extra_files={"w.bin": weights}
        )
        (version.path / "w.bin").unlink()
        os.symlink(self.secret, version.path / "w.bin")
        recorded = version.metadata.sha256["w.bin"]
        assert sha256_file(version.path / "w.bin") == recorded  # the sha256 alone passes it
        (self.root / "link.onnx").unlink()
        (self.root / "w.bin").unlink()

    def _publish_pickled(self) -> None:
        """A good ONNX file with a weights.pt that runs code when unpickled."""
        evil = malicious_weights(self.root / "evil.pt", self.marker)
        ModelRepository(self.repo).publish(
            lenet_config("pickled"), self.lenet, architecture="lenet5",
            extra_files={WEIGHTS_FILE: evil},
        )  # fmt: skip
        evil.unlink()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    lenet = export_lenet(tmp_path_factory.mktemp("onnx") / "lenet.onnx", seed=0)
    return World(tmp_path_factory.mktemp("world"), lenet)


@pytest.fixture(scope="module")
def server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("logs")  # outside the world: only the server writes there
    with running_server(world.repo, "--poll-interval-s", "0.2", log_dir=logs) as process:
        yield process


def health_status(server: ServerProcess, service: str) -> int:
    with open_channel(server.address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


def infer_good(stub, lenet: Path) -> None:
    response = stub.ModelInfer(raw_request("good", X), timeout=10)
    np.testing.assert_allclose(output_array(response), reference(lenet, X), atol=1e-5)


def test_bad_versions_are_refused_and_the_good_model_serves(world: World, server) -> None:
    before = files_in(world.root)
    with inference_stub(server.address) as stub:
        infer_good(stub, world.lenet)
        ready = {
            name: stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready
            for name in ["good", "pickled", *REFUSED]
        }
        assert ready == {"good": True, "pickled": True, **{name: False for name in REFUSED}}
        for name, (message, _) in REFUSED.items():
            load = pb.RepositoryModelLoadRequest(model_name=name)
            error = rpc_error(partial(stub.RepositoryModelLoad, load, timeout=30))
            assert message in (error.details() or ""), (name, error.details())
            assert "refused" in (error.details() or "")
            infer_good(stub, world.lenet)  # the good model answers between every refusal
            request = raw_request(name, X)
            inference = rpc_error(partial(stub.ModelInfer, request, timeout=10))
            assert inference.code() == grpc.StatusCode.UNAVAILABLE
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        states = {m.name: (m.state, m.reason) for m in index.models}
        assert states["good"][0] == "READY"
        assert all(states[n][0] == "UNAVAILABLE" and REFUSED[n][0] in states[n][1] for n in REFUSED)
        # Health: a refused model is known and NOT_SERVING (NOT_FOUND is for unknown names),
        # also when it first appears while the server runs (found by polling).
        late = world.repo / "late" / str(publish(world.repo, lenet_config("late"), world.lenet))
        (late / "model.onnx").write_bytes(b"not the published file")
        statuses = {name: health_status(server, name) for name in ["good", "pickled", *REFUSED]}
        assert statuses == {
            "good": SERVING,
            "pickled": SERVING,
            **dict.fromkeys(REFUSED, NOT_SERVING),
        }
        wait_until(lambda: health_status(server, "late") == NOT_SERVING, "late NOT_SERVING")
        assert rpc_error(lambda: health_status(server, "never-published")).code() == (
            grpc.StatusCode.NOT_FOUND
        )

        # Hot reload: an unsafe new version of "good" is refused while version 1 keeps serving.
        model = external_data_model(world.root / "v2.onnx", "../../outside/secret.bin")
        publish(world.repo, lenet_config("good"), model)
        (world.root / "v2.onnx").unlink()
        before = files_in(world.root)  # the new version folder is the test's own doing
        metric = "model_load_failures_total"
        wait_until(
            lambda: server.scrape().value(metric, model="good", version="2", reason="unsafe_model"),
            "the refusal of good version 2",
        )
        infer_good(stub, world.lenet)
        v2 = stub.ModelReady(pb.ModelReadyRequest(name="good", version="2"), timeout=10)
        assert v2.ready is False

    metrics = server.scrape()
    for name, (_, reason) in REFUSED.items():
        assert metrics.value("model_load_failures_total", model=name, reason=reason) >= 1, name
    assert metrics.value("model_load_failures_total", model="pickled") == 0
    log = server.log_tail(20_000)
    assert "which has a '..' component" in log and "w.bin is a symlink" in log
    assert files_in(world.root) == before  # nothing created: no marker, no copies, no temp files
    assert not world.marker.exists()


def test_the_pickle_is_refused_when_its_weights_are_loaded(world: World, server) -> None:
    version = ModelRepository(world.repo).get("pickled")
    with pytest.raises(RepositoryError, match="not a plain tensor file"):
        load_published_model(version)
    assert not world.marker.exists()
