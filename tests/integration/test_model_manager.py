"""The model manager on a real repository of exported LeNet-5 models: policies, hot reload,
integrity refusals, and zero failed requests while a new version takes over."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from headrace.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    RepositoryError,
    ShuttingDown,
)
from serving.dataplane import DataPlane
from serving.model_config import (
    AutoscalingConfig,
    DynamicBatchingConfig,
    ModelConfig,
    PreprocessingSpec,
    TensorSpec,
)
from serving.model_manager import ModelManager
from serving.repository import ModelRepository, ModelVersion
from serving.runner import OnnxModel
from serving.types import InferRequest, InferTensor
from serving.version_policy import VersionPolicy
from training.export import export_onnx
from training.models import build_model

pytestmark = pytest.mark.integration

X = np.random.default_rng(0).standard_normal((1, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LeNet-5 models with different weights ("a", "b") and a file that is not ONNX."""
    folder = tmp_path_factory.mktemp("exported")
    files = {}
    for seed, key in enumerate("ab"):
        torch.manual_seed(seed)
        files[key] = export_onnx(build_model("lenet5"), (1, 28, 28), folder / f"{key}.onnx")
    files["junk"] = folder / "junk.onnx"
    files["junk"].write_bytes(b"not an onnx model")
    return files


@pytest.fixture(scope="module")
def expected(onnx_files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Logits of X by model "a" and "b", straight from ONNX Runtime."""
    out = {}
    for key in "ab":
        session = ort.InferenceSession(str(onnx_files[key]), providers=["CPUExecutionProvider"])
        out[key] = session.run(["logits"], {"input": X})[0]
    assert not np.allclose(out["a"], out["b"])
    return out


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "repo")


def config(name: str = "digits") -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=8,
        inputs=[TensorSpec(name="input", dims=[1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[10])],
        dynamic_batching=DynamicBatchingConfig(max_queue_delay_us=500),
    )


def publish(repo: ModelRepository, source: Path, name: str = "digits") -> int:
    return repo.publish(config(name), source, architecture="lenet5").version


async def infer(manager: ModelManager, name: str = "digits", version: str | int | None = None):
    loaded = manager.get(name, version)
    result = await loaded.batcher.submit({"input": X})
    return loaded.version, result.outputs["logits"]


def which(logits: np.ndarray, expected: dict[str, np.ndarray]) -> str:
    [key] = [k for k, v in expected.items() if np.allclose(logits, v, atol=1e-5)]
    return key


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_load_serves_latest(repo: ModelRepository, onnx_files, expected) -> None:
    publish(repo, onnx_files["a"])
    publish(repo, onnx_files["b"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        assert not manager.ready("digits")
        assert await manager.load("digits") == [2]
        assert manager.loaded() == {"digits": [2]}
        for version in ("", None, 2, "2"):
            assert manager.get("digits", version).version == 2
        loaded = manager.get("digits")
        assert loaded.metadata.version == 2 and loaded.config == config()
        assert loaded.model.instances == 1
        version, logits = await infer(manager)
        assert (version, which(logits, expected)) == (2, "b")
        with pytest.raises(ModelNotFound, match=r"version 1 is not served \(version policy"):
            manager.get("digits", 1)
        with pytest.raises(ModelNotFound, match="no ready version"):
            manager.get("digits", "latest")
        assert manager.ready("digits") and not manager.ready("digits", 1)
        assert manager.failures() == {}
        await manager.close()
        with pytest.raises(ShuttingDown):
            await manager.load("digits")

    run(scenario)


def test_poll_brings_v2_in_then_retires_v1(repo: ModelRepository, onnx_files, expected) -> None:
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        changes: list[tuple[str, list[int]]] = []
        manager = ModelManager(repo, on_change=lambda name, vs: changes.append((name, vs)))
        await manager.load_all()
        old = manager.get("digits")
        assert which((await infer(manager))[1], expected) == "a"

        await manager.poll_once()  # nothing new: nothing changes
        assert changes == [("digits", [1])]

        publish(repo, onnx_files["b"])
        await manager.poll_once()
        # Load before unload: v2 was ready next to v1 before v1 left.
        assert changes == [("digits", [1]), ("digits", [1, 2]), ("digits", [2])]
        version, logits = await infer(manager)
        assert (version, which(logits, expected)) == (2, "b")
        with pytest.raises(ModelNotFound):
            manager.get("digits", 1)

        await manager.close()  # waits for v1's background drain too
        with pytest.raises(ShuttingDown):
            await old.batcher.submit({"input": X})
        with pytest.raises(ModelNotReady):
            old.model.run({"input": X})

    run(scenario)


def test_policy_latest_two_and_all(repo: ModelRepository, onnx_files, expected) -> None:
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        manager = ModelManager(repo, policy=VersionPolicy(latest_n=2))
        assert await manager.load("digits") == [1]
        publish(repo, onnx_files["b"])
        await manager.poll_once()
        assert manager.loaded() == {"digits": [1, 2]}
        assert manager.get("digits").version == 2
        assert which((await infer(manager, version=1))[1], expected) == "a"
        assert which((await infer(manager, version="2"))[1], expected) == "b"
        publish(repo, onnx_files["a"])
        await manager.poll_once()
        assert manager.loaded() == {"digits": [2, 3]}
        await manager.close()

        every = ModelManager(repo, policy=VersionPolicy(kind="all"))
        assert await every.load("digits") == [1, 2, 3]
        await every.close()

    run(scenario)


def test_policy_specific_versions(repo: ModelRepository, onnx_files, expected) -> None:
    for source in ("a", "b", "a"):
        publish(repo, onnx_files[source])

    async def scenario() -> None:
        manager = ModelManager(repo, policy=VersionPolicy(kind="specific", versions=[1, 3]))
        assert await manager.load("digits") == [1, 3]
        assert manager.get("digits").version == 3
        with pytest.raises(ModelNotFound):
            manager.get("digits", 2)
        await manager.close()

        missing = ModelManager(repo, policy=VersionPolicy(kind="specific", versions=[2, 5]))
        with pytest.raises(ModelLoadError, match=r"version\(s\) 5"):
            await missing.load("digits")
        assert missing.loaded() == {"digits": [2]}  # what exists is served
        assert "5" in missing.failures()["digits"]
        assert which((await infer(missing))[1], expected) == "b"
        await missing.close()

    run(scenario)
    with pytest.raises(ValueError, match="at least one version"):
        VersionPolicy(kind="specific")


def test_a_version_the_policy_leaves_out_is_named_so(repo: ModelRepository, onnx_files) -> None:
    """A version in the repository that the policy does not serve says so and names the
    policy; "has no ready version" left a client (or a stream's DLQ reader) guessing whether
    the version existed at all."""
    for source in ("a", "b", "a"):
        publish(repo, onnx_files[source])

    async def scenario() -> None:
        latest = ModelManager(repo)
        await latest.load("digits")
        with pytest.raises(ModelNotFound) as left_out:
            latest.get("digits", 1)
        assert left_out.value.message == (
            "model 'digits' version 1 is not served (version policy latest:1; ready versions: "
            "3); ask for a ready version, or leave the version out for the latest"
        )
        with pytest.raises(ModelNotFound, match="has no ready version 7; versions: 3"):
            latest.get("digits", 7)  # not in the repository
        await latest.close()

        specific = ModelManager(repo, policy=VersionPolicy(kind="specific", versions=[1, 3]))
        await specific.load("digits")
        with pytest.raises(ModelNotFound, match=r"version policy specific:1,3; ready versions"):
            specific.get("digits", "2")
        await specific.close()

    run(scenario)


def test_a_version_published_again_under_its_number_is_reloaded(
    repo: ModelRepository, onnx_files, expected
) -> None:
    """Deleting the latest version frees its number for the next publish. When both happen
    between two polls, the manager kept serving the deleted weights as that version."""
    publish(repo, onnx_files["a"])
    publish(repo, onnx_files["b"])

    async def scenario() -> None:
        manager = ModelManager(repo, policy=VersionPolicy(kind="all"))
        await manager.load("digits")
        assert which((await infer(manager, version=2))[1], expected) == "b"
        unchanged, replaced = manager.get("digits", 1), manager.get("digits", 2)
        await manager.poll_once()  # nothing changed: nothing reloaded
        assert (manager.get("digits", 1), manager.get("digits", 2)) == (unchanged, replaced)
        shutil.rmtree(repo.version_dir("digits", 2))
        assert publish(repo, onnx_files["a"]) == 2  # the deleted version's number again
        await manager.poll_once()
        assert manager.loaded() == {"digits": [1, 2]}
        assert which((await infer(manager, version=2))[1], expected) == "a"
        assert manager.get("digits", 1) is unchanged  # the others are left as they are
        await manager.close()

    run(scenario)


def test_unload_and_unknown_models(repo: ModelRepository, onnx_files) -> None:
    publish(repo, onnx_files["a"])
    publish(repo, onnx_files["a"], name="other")

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        assert manager.loaded() == {"digits": [1], "other": [1]}
        await manager.unload("digits")
        assert manager.loaded() == {"other": [1]}
        assert not manager.ready("digits")
        with pytest.raises(ModelNotReady, match="'digits' is not loaded"):
            manager.get("digits")
        await manager.poll_once()  # unloaded on request: polling does not bring it back
        assert not manager.ready("digits")

        with pytest.raises(ModelNotFound, match="'mnist' not found; ready models: other") as err:
            manager.get("mnist")
        assert str(repo.root) not in err.value.message
        with pytest.raises(ModelNotFound):
            manager.get("../etc")
        with pytest.raises(ModelNotFound):
            await manager.unload("mnist")

        assert await manager.load("digits") == [1]
        assert manager.ready("digits", "1")
        await manager.close()

    run(scenario)


def test_a_model_published_since_the_last_scan_is_not_ready_yet(
    repo: ModelRepository, onnx_files
) -> None:
    """A model that appears between two scans is not ready yet, and will be without anyone
    loading it: 'load it first' (what an unloaded model is told) sent Kafka clients, who have
    no load, and gRPC clients of a polling server after a load they did not need."""
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        publish(repo, onnx_files["a"], name="later")
        with pytest.raises(ModelNotReady) as not_yet:
            manager.get("later")
        assert not_yet.value.message == (
            "model 'later' is in the repository but not loaded yet: it loads at the next "
            "repository scan (or with an explicit load); send the request again shortly"
        )
        await manager.poll_once()
        assert manager.get("later").version == 1
        await manager.close()

    run(scenario)


def test_tampered_or_broken_versions_are_refused(repo: ModelRepository, onnx_files) -> None:
    publish(repo, onnx_files["a"], name="good")
    publish(repo, onnx_files["a"], name="tampered")
    publish(repo, onnx_files["junk"], name="broken")  # correct sha256, but not ONNX
    model_file = repo.get("tampered").model_file
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        assert manager.loaded() == {"good": [1]}
        failures = manager.failures()
        assert set(failures) == {"tampered", "broken"}
        assert "model.onnx" in failures["tampered"] and "sha256" in failures["tampered"]
        assert "refused" in failures["tampered"]
        assert "'broken' version 1" in failures["broken"] and "model.onnx" in failures["broken"]
        for message in failures.values():
            assert str(repo.root) not in message
        with pytest.raises(ModelNotReady, match="sha256"):
            manager.get("tampered")
        assert not manager.ready("tampered") and not manager.ready("broken")
        assert (await infer(manager, "good"))[0] == 1

        await manager.poll_once()  # still refused, still recorded, the good model untouched
        assert manager.failures() == failures and manager.loaded() == {"good": [1]}
        with pytest.raises(ModelLoadError, match="sha256"):
            await manager.load("tampered")
        await manager.close()

    run(scenario)


def test_tampered_new_version_keeps_old_one_serving(
    repo: ModelRepository, onnx_files, expected
) -> None:
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        publish(repo, onnx_files["b"])
        model_file = repo.get("digits", 2).model_file
        model_file.write_bytes(model_file.read_bytes()[:-1])

        await manager.poll_once()
        assert manager.loaded() == {"digits": [1]}
        assert "version 2" in manager.failures()["digits"]
        assert which((await infer(manager))[1], expected) == "a"
        with pytest.raises(ModelNotReady, match="sha256"):
            manager.get("digits", 2)

        publish(repo, onnx_files["b"])  # a good v3 replaces both
        await manager.poll_once()
        assert manager.loaded() == {"digits": [3]} and manager.failures() == {}
        await manager.close()

    run(scenario)


def test_the_repository_index_names_a_refused_version_while_an_older_one_serves(
    repo: ModelRepository, onnx_files
) -> None:
    """RepositoryIndex listed only the served version 1 while version 2 was refused, so
    a client checking whether its new version went live saw nothing of why not (Triton
    lists such a version as UNAVAILABLE with its reason). It is listed so until it loads
    or the policy no longer selects it."""
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        plane = DataPlane(manager)
        await manager.load_all()
        publish(repo, onnx_files["b"])
        model_file = repo.get("digits", 2).model_file
        model_file.write_bytes(model_file.read_bytes()[:-1])
        await manager.poll_once()
        index = [(e.version, e.state, e.reason) for e in await plane.repository_index()]
        assert index[0] == ("1", "READY", "") and len(index) == 2, index
        assert index[1][:2] == ("2", "UNAVAILABLE") and "sha256" in index[1][2], index
        assert [e.version for e in await plane.repository_index(ready_only=True)] == ["1"]

        publish(repo, onnx_files["b"])  # a good v3: v2 is no longer selected
        await manager.poll_once()
        assert [(e.version, e.state) for e in await plane.repository_index()] == [("3", "READY")]
        await manager.close()

    run(scenario)


def test_a_new_version_of_an_autoscaled_model_starts_with_the_instances_scaled_to(
    repo: ModelRepository, onnx_files
) -> None:
    """A new version started at config.instance_count even when the autoscaler had grown the
    served one under load: a rollout under load dropped from 3 instances to 1 (queues and
    RESOURCE_EXHAUSTED until the autoscaler grew it again, one instance per cooldown). It
    now starts with the served versions' count, within the autoscaling bounds."""
    scaled = config().model_copy(
        update={"autoscaling": AutoscalingConfig(min_instances=1, max_instances=3)}
    )
    repo.publish(scaled, onnx_files["a"], architecture="lenet5")

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        first = manager.get("digits")
        assert first.model.instances == 1
        await asyncio.to_thread(first.model.set_instances, 3)  # as the autoscaler does
        first.batcher.set_concurrency(3)
        repo.publish(scaled, onnx_files["b"], architecture="lenet5")
        await manager.poll_once()
        second = manager.get("digits")
        assert second.version == 2 and second.model.instances == 3
        narrower = scaled.model_copy(
            update={"autoscaling": AutoscalingConfig(min_instances=1, max_instances=2)}
        )
        repo.publish(narrower, onnx_files["a"], architecture="lenet5")
        await manager.poll_once()
        assert manager.get("digits").model.instances == 2  # within the new bounds
        await manager.close()

    run(scenario)


def test_a_new_version_whose_model_disagrees_with_the_config_keeps_the_old_one_serving(
    repo: ModelRepository, onnx_files, expected, tmp_path: Path
) -> None:
    """Another model's file under a good config (a ResNet-20 where LeNet-5's 1x28x28 input
    is configured) is refused when loaded, instead of replacing v1 and refusing every call."""
    publish(repo, onnx_files["a"])
    torch.manual_seed(0)
    other = export_onnx(build_model("resnet20", in_channels=3, image_size=32), (3, 32, 32),
                        tmp_path / "resnet.onnx")  # fmt: skip

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        publish(repo, other)
        await manager.poll_once()
        assert manager.loaded() == {"digits": [1]}
        failure = manager.failures()["digits"]
        assert "version 2: its model.onnx does not match the model's config.json" in failure
        assert "input 'input' has dims [3, 32, 32] after the batch axis" in failure
        assert which((await infer(manager))[1], expected) == "a"
        await manager.close()

    run(scenario)


class DeletingRepository(ModelRepository):
    """Deletes version 2's folder (or its model.onnx) at one step of its load, as `rm -r`
    does when it runs between the repository scan that saw the version and the load's end."""

    def __init__(self, root: Path, when: str, what: str) -> None:
        super().__init__(root)
        self.when, self.what, self.armed = when, what, False

    def delete(self, step: str) -> None:
        if self.armed and step == self.when:
            self.armed = False
            folder = self.version_dir("digits", 2)
            if self.what == "folder":
                shutil.rmtree(folder)
            else:
                (folder / "model.onnx").unlink()

    def versions(self, name: str) -> list[int]:
        found = super().versions(name)
        self.delete("after the scan")
        return found

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        found = super().get(name, version)
        self.delete("before the sha256 check")
        return found


@pytest.mark.parametrize(
    ("when", "what"),
    [
        ("after the scan", "folder"),
        ("before the sha256 check", "folder"),
        ("before the sha256 check", "model.onnx"),
        ("while its sessions are built", "folder"),
    ],
)
def test_a_version_deleted_while_it_loads_is_counted_as_removed_not_as_corrupt(
    tmp_path: Path, onnx_files, expected, when: str, what: str
) -> None:
    """A version whose folder (or model.onnx) is deleted between the scan that saw it and the
    end of its load fails whichever check meets the gap first (folder stamp, sha256 check,
    session build); it was reported and counted as integrity_check_failed ("does not match
    its sha256") or model_load_failed, as if the file were corrupt or tampered with. It is
    refused as version_removed, v1 keeps serving, and the next scan forgets it."""
    repo = DeletingRepository(tmp_path / "repo", when, what)
    publish(repo, onnx_files["a"])
    refused: list[tuple[str, int, str]] = []

    def sessions(model_file: Path, instances: int) -> OnnxModel:
        repo.delete("while its sessions are built")
        return OnnxModel(model_file, instances=instances)

    async def scenario() -> None:
        manager = ModelManager(
            repo,
            runner_factory=sessions,
            on_load_failure=lambda *failure: refused.append(failure),
        )
        await manager.load_all()
        publish(repo, onnx_files["b"])
        repo.armed = True
        await manager.poll_once()
        assert not repo.armed  # the deletion happened
        assert refused == [("digits", 2, "version_removed")]
        failure = manager.failures()["digits"]
        gone = "was removed from the repository" if what == "folder" else "model.onnx was deleted"
        assert gone in failure and "not served" in failure, failure
        assert "sha256" not in failure and "integrity" not in failure and "refused" not in failure
        assert manager.loaded() == {"digits": [1]}
        assert which((await infer(manager))[1], expected) == "a"
        if what == "folder":
            await manager.poll_once()  # v2 is gone for good: nothing left to report
            assert manager.failures() == {} and len(refused) == 1
        await manager.close()

    run(scenario)


def test_removed_versions_go(repo: ModelRepository, onnx_files, expected) -> None:
    publish(repo, onnx_files["a"])
    publish(repo, onnx_files["b"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        assert manager.loaded() == {"digits": [2]}
        (repo.root / "digits" / "2" / "metadata.json").unlink()  # v2 withdrawn
        await manager.poll_once()
        assert manager.loaded() == {"digits": [1]}
        assert which((await infer(manager))[1], expected) == "a"
        (repo.root / "digits" / "1" / "metadata.json").unlink()  # the whole model withdrawn
        await manager.poll_once()
        assert manager.loaded() == {}
        with pytest.raises(ModelNotFound):
            manager.get("digits")
        await manager.close()

    run(scenario)


def test_concurrent_control_calls_are_serialised(repo: ModelRepository, onnx_files) -> None:
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        changes: list[list[int]] = []
        manager = ModelManager(repo, on_change=lambda name, vs: changes.append(vs))
        publish(repo, onnx_files["b"])
        await asyncio.gather(*(manager.load("digits") for _ in range(3)), manager.poll_once())
        assert changes == [[2]]  # loaded once, not three times
        await asyncio.gather(manager.unload("digits"), manager.unload("digits"))
        assert changes == [[2], []]
        await manager.close()

    run(scenario)


def test_hot_reload_under_load_fails_no_request(
    repo: ModelRepository, onnx_files, expected
) -> None:
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        seen: list[tuple[int, str]] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()
        enough = {1: asyncio.Event(), 2: asyncio.Event()}

        async def client() -> None:
            while not stop.is_set():
                try:
                    version, logits = await infer(manager)
                except Exception as exc:
                    errors.append(exc)
                    continue
                seen.append((version, which(logits, expected)))
                if sum(v == version for v, _ in seen) >= 40:
                    enough[version].set()

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.wait_for(enough[1].wait(), timeout=60)
        await asyncio.to_thread(publish, repo, onnx_files["b"])
        await manager.poll_once()
        await asyncio.wait_for(enough[2].wait(), timeout=60)
        stop.set()
        await asyncio.gather(*clients)
        await manager.close()

        assert errors == []
        assert {pair for pair in seen} == {(1, "a"), (2, "b")}  # each version its own output
        versions = [v for v, _ in seen]
        first_v2 = versions.index(2)
        # Requests that got v1 just before the switch may finish after the first v2 answer,
        # but once v1 has drained nothing goes to it.
        assert 1 not in versions[first_v2 + len(clients) :]

    run(scenario)


def test_run_polling_picks_up_a_new_version(repo: ModelRepository, onnx_files) -> None:
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        changed = asyncio.Event()

        def on_change(name: str, versions: list[int]) -> None:
            if versions == [2]:
                changed.set()

        manager = ModelManager(repo, on_change=on_change)
        await manager.load_all()
        stop = asyncio.Event()
        poller = asyncio.create_task(manager.run_polling(0.05, stop))
        await asyncio.to_thread(publish, repo, onnx_files["b"])
        await asyncio.wait_for(changed.wait(), timeout=60)
        assert manager.get("digits").version == 2
        stop.set()
        await poller
        await manager.close()

    run(scenario)


def test_a_model_without_a_batch_axis_is_served_as_it_is(
    repo: ModelRepository, onnx_files, expected
) -> None:
    """max_batch_size 0 (Triton's model that does not batch): it loads, its inputs must have
    exactly its dims, and concurrent requests each run alone."""
    unbatched = ModelConfig(
        name="whole",
        max_batch_size=0,
        inputs=[TensorSpec(name="input", dims=[1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", dims=[1, 10])],
    )
    repo.publish(unbatched, onnx_files["a"], architecture="lenet5")

    def request(x: np.ndarray) -> InferRequest:
        return InferRequest("whole", [InferTensor.from_array("input", x)])

    async def scenario() -> None:
        manager = ModelManager(repo)
        assert await manager.load("whole") == [1]
        plane = DataPlane(manager)
        answers = await asyncio.gather(*(plane.infer(request(X)) for _ in range(4)))
        for answer in answers:
            np.testing.assert_allclose(answer.outputs[0].data, expected["a"], atol=1e-5)
            assert answer.timings.batch_size == 1  # never merged with the others
        with pytest.raises(InvalidInput, match=r"expected shape \[1, 1, 28, 28\]"):
            await plane.infer(request(np.concatenate([X, X])))
        await manager.close()

    run(scenario)


def test_an_invalid_config_is_reported_once_and_loaded_once_fixed(
    repo: ModelRepository, onnx_files, caplog: pytest.LogCaptureFixture
) -> None:
    """A config.json the schema refuses (preferred batch sizes beyond max_batch_size) fails
    before any session is built, is logged once however often the repository is polled,
    and the model loads at the first poll after the file is mended."""
    publish(repo, onnx_files["a"])
    config_file = repo.version_dir("digits", 1).parent / "config.json"
    good = config_file.read_text()
    bad = config().model_dump(mode="json")
    bad["dynamic_batching"]["preferred_batch_sizes"] = [16]  # max_batch_size is 8
    config_file.write_text(json.dumps(bad))
    sessions_built: list[Path] = []

    def counted_runner(model_file: Path, instances: int = 1) -> OnnxModel:
        sessions_built.append(model_file)
        return OnnxModel(model_file, instances=instances)

    async def scenario() -> None:
        manager = ModelManager(repo, runner_factory=counted_runner)
        with caplog.at_level(logging.WARNING, logger="serving.model_manager"):
            await manager.load_all()
            for _ in range(3):
                await manager.poll_once()
        refusals = [r for r in caplog.records if "not loaded" in r.getMessage()]
        assert len(refusals) == 1 and "preferred_batch_sizes" in refusals[0].getMessage()
        assert sessions_built == [] and manager.loaded() == {}
        assert "preferred_batch_sizes" in manager.failures()["digits"]

        config_file.write_text(good)
        await manager.poll_once()
        assert manager.loaded() == {"digits": [1]} and len(sessions_built) == 1
        await manager.close()

    run(scenario)


def test_an_explicit_load_applies_an_edited_config_and_a_deleted_specific_version_goes(
    repo: ModelRepository, onnx_files, expected
) -> None:
    """As in Triton: load reloads a served model whose config.json changed (until now the
    edit waited for a new version); and a version that is served because the policy names
    it goes when its folder is deleted (until now it was served on forever)."""
    publish(repo, onnx_files["a"])
    publish(repo, onnx_files["b"])
    config_file = repo.version_dir("digits", 1).parent / "config.json"

    async def scenario() -> None:
        manager = ModelManager(repo, policy=VersionPolicy(kind="specific", versions=[1]))
        await manager.load_all()
        before = manager.get("digits")
        assert before.config.max_batch_size == 8
        edited = json.loads(config_file.read_text())
        edited["max_batch_size"] = 4
        config_file.write_text(json.dumps(edited))
        await manager.poll_once()  # polling leaves a served version as it is
        assert manager.get("digits") is before
        await manager.load("digits")
        after = manager.get("digits")
        assert after is not before and after.config.max_batch_size == 4
        assert which((await infer(manager))[1], expected) == "a"

        shutil.rmtree(repo.version_dir("digits", 1))
        await manager.poll_once()
        assert manager.loaded() == {}
        await manager.close()

    run(scenario)


def _edited(**changes: object) -> Callable[[str], str]:
    return lambda text: json.dumps({**json.loads(text), **changes})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: "{ not json", "invalid config.json: Invalid JSON"),
        (_edited(max_batch_size=-3), "invalid config.json: max_batch_size"),
        (_edited(name="other"), "config.json names model 'other'"),
    ],
)
def test_an_explicit_load_of_an_invalid_config_fails_and_the_served_version_stays(
    repo: ModelRepository, onnx_files, expected, edit: Callable[[str], str], message: str
) -> None:
    """An explicit load (RepositoryModelLoad) after config.json was made invalid answered OK
    and applied nothing; it now fails naming the problem, while the loaded version keeps
    serving as it was; the next poll, which leaves served versions alone, forgets it."""
    publish(repo, onnx_files["a"])
    config_file = repo.version_dir("digits", 1).parent / "config.json"

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        served = manager.get("digits")
        config_file.write_text(edit(config_file.read_text()))
        with pytest.raises(ModelLoadError, match=message) as refused:
            await manager.load("digits")
        assert "keep serving" in refused.value.message
        assert manager.get("digits") is served
        assert which((await infer(manager))[1], expected) == "a"
        await manager.poll_once()
        assert manager.get("digits") is served and manager.failures() == {}
        await manager.close()

    run(scenario)


def test_a_repository_folder_that_goes_away_unloads_nothing(
    repo: ModelRepository, onnx_files, expected, caplog: pytest.LogCaptureFixture
) -> None:
    """The repository's folder missing (an unmounted volume, a network filesystem outage)
    read as 'every model was deleted': the next poll unloaded them all, with no word in the
    log, and clients got NOT_FOUND until it was back and every model loaded again. Now polls
    change nothing meanwhile (a warning once, however many polls), an explicit load fails
    with RepositoryError, the loaded versions keep serving, and the first poll that finds
    the folder again picks up what changed."""
    publish(repo, onnx_files["a"])
    moved = repo.root.with_name("elsewhere")

    async def scenario() -> None:
        manager = ModelManager(repo)
        await manager.load_all()
        served = manager.get("digits")
        repo.root.rename(moved)
        with caplog.at_level(logging.INFO, logger="serving.model_manager"):
            for _ in range(3):
                await manager.poll_once()
            with pytest.raises(RepositoryError, match="keep serving"):
                await manager.load("digits")
            assert manager.get("digits") is served
            assert which((await infer(manager))[1], expected) == "a"
            moved.rename(repo.root)
            publish(repo, onnx_files["b"])
            await manager.poll_once()
        assert manager.loaded() == {"digits": [2]}
        assert which((await infer(manager))[1], expected) == "b"
        said = [r.getMessage() for r in caplog.records if "model repository" in r.getMessage()]
        assert len(said) == 2 and "cannot be found" in said[0] and "is back" in said[1], said
        await manager.close()

    run(scenario)


def test_each_served_version_runs_with_its_own_preprocessing(
    repo: ModelRepository, onnx_files
) -> None:
    """A retrain with other normalisation statistics rewrites config.json; version 1 must
    keep the statistics it was trained with, and an explicit load must not mistake that
    difference for an edited config and reload it."""
    stats = {
        1: PreprocessingSpec(mean=[0.2], std=[0.3]),
        2: PreprocessingSpec(mean=[0.1], std=[0.4]),
    }
    for spec in stats.values():
        own = config().model_copy(update={"preprocessing": spec})
        repo.publish(own, onnx_files["a"], architecture="lenet5")

    async def scenario() -> None:
        manager = ModelManager(repo, policy=VersionPolicy(kind="all"))
        await manager.load_all()
        served = {v: manager.get("digits", v) for v in (1, 2)}
        assert {v: loaded.config.preprocessing for v, loaded in served.items()} == stats
        await manager.load("digits")
        assert all(manager.get("digits", v) is served[v] for v in (1, 2))
        await manager.close()

    run(scenario)


def test_listing_the_repository_does_not_stall_the_event_loop(
    repo: ModelRepository, onnx_files
) -> None:
    """RepositoryIndex and RepositoryModelLoad listed the repository folder on the event
    loop, so a slow filesystem (an NFS mount that hangs) stalled every call of the server.
    The listing runs in a worker thread: here it blocks until the loop itself releases it."""
    publish(repo, onnx_files["a"])

    async def scenario() -> None:
        manager = ModelManager(repo)
        plane = DataPlane(manager)
        await manager.load_all()
        released = threading.Event()
        list_models = repo.list_models

        def slow_list() -> list[str]:
            assert released.wait(10), "the event loop never ran while the folder was listed"
            return list_models()

        repo.list_models = slow_list  # type: ignore[method-assign]
        for call in (plane.repository_index(), plane.load("digits")):
            task = asyncio.ensure_future(call)
            await asyncio.sleep(0.01)  # the loop turns while the listing waits
            assert not task.done()
            released.set()
            await asyncio.wait_for(task, 10)
            released.clear()
        await manager.close()

    run(scenario)
