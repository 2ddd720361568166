"""The ONNX Runtime session pool: same outputs as ONNX Runtime, thread-safe, resizable."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from headrace.errors import ConfigError, InvalidInput, ModelLoadError, ModelNotReady
from serving import runner
from serving.interfaces import ModelRunner
from serving.runner import OnnxModel, default_threads
from training.export import export_onnx
from training.models import build_model

pytestmark = pytest.mark.unit

RealSession = ort.InferenceSession
WAIT_S = 30.0  # only reached if a test is about to fail


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lenet") / "model.onnx"
    return export_onnx(build_model("lenet5"), (1, 28, 28), path)


@pytest.fixture(scope="module")
def reference(lenet_file: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = RealSession(str(lenet_file), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x})[0]


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 28, 28), dtype=np.float32)


class Sessions:
    """Every session the runner builds, alive or not, and a hook run inside each `run`."""

    def __init__(self) -> None:
        self.created = 0
        self.alive: weakref.WeakSet[Any] = weakref.WeakSet()
        self.hook: Callable[[], object] = lambda: None
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def live(self) -> int:
        gc.collect()
        return len(self.alive)


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sessions]:
    record = Sessions()

    class CountingSession(RealSession):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            record.created += 1
            record.alive.add(self)

        def run(self, *args: Any, **kwargs: Any) -> Any:
            with record.lock:
                record.active += 1
                record.max_active = max(record.max_active, record.active)
            try:
                record.hook()
                return super().run(*args, **kwargs)
            finally:
                with record.lock:
                    record.active -= 1

    monkeypatch.setattr(runner.ort, "InferenceSession", CountingSession)
    yield record


def test_outputs_match_onnxruntime(lenet_file: Path, reference: Callable) -> None:
    model: ModelRunner = OnnxModel(lenet_file, instances=2, intra_op_threads=1)
    assert isinstance(model, OnnxModel)
    assert model.input_names == ["input"] and model.output_names == ["logits"]
    assert model.input_meta == {"input": ("tensor(float)", ("batch", 1, 28, 28))}
    for rows in (1, 5):
        x = images(rows, seed=rows)
        outputs = model.run({"input": x})
        assert set(outputs) == {"logits"} and outputs["logits"].shape == (rows, 10)
        np.testing.assert_array_equal(outputs["logits"], reference(x))
    model.close()


def test_run_is_thread_safe(lenet_file: Path, reference: Callable, sessions: Sessions) -> None:
    model = OnnxModel(lenet_file, instances=2, intra_op_threads=1)
    inputs = [images(1 + i % 3, seed=i) for i in range(40)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda x: model.run({"input": x})["logits"], inputs))
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(got, reference(x))
    assert sessions.created == 2
    assert sessions.max_active <= 2  # never more requests running than instances
    model.close()


def test_set_instances_grows_and_shrinks(lenet_file: Path, sessions: Sessions) -> None:
    model = OnnxModel(lenet_file, instances=1, intra_op_threads=1)
    x = images(2)
    model.set_instances(3)
    assert model.instances == 3 and sessions.created == 3

    # Three runs at once: each waits for the other two, which needs three free sessions.
    barrier = threading.Barrier(3, timeout=WAIT_S)
    sessions.hook = barrier.wait
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: model.run({"input": x}), range(3)))

    # Shrink while all three are busy: nothing is idle, so they go as they come back.
    entered = threading.Semaphore(0)
    release = threading.Event()

    def block() -> None:
        entered.release()
        assert release.wait(WAIT_S)

    sessions.hook = block
    with ThreadPoolExecutor(max_workers=3) as pool:
        running = [pool.submit(model.run, {"input": x}) for _ in range(3)]
        for _ in range(3):
            assert entered.acquire(timeout=WAIT_S)
        model.set_instances(1)
        assert model.instances == 1
        release.set()
        for future in running:
            future.result()
    assert sessions.live() == 1

    sessions.hook = lambda: None
    sessions.max_active = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: model.run({"input": x}), range(12)))
    assert sessions.max_active == 1

    model.set_instances(2)  # grow again; then shrink with both idle: one goes at once
    assert sessions.live() == 2
    model.set_instances(1)
    assert sessions.live() == 1
    model.close()
    assert sessions.live() == 0


def test_close_fails_waiting_and_later_runs(lenet_file: Path, sessions: Sessions) -> None:
    model = OnnxModel(lenet_file, instances=1, intra_op_threads=1)
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        assert release.wait(WAIT_S)

    sessions.hook = block
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(model.run, {"input": images(1)})
        assert entered.wait(WAIT_S)
        model.close()  # the running request finishes; nothing new starts
        release.set()
        assert busy.result()["logits"].shape == (1, 10)
    with pytest.raises(ModelNotReady, match="unloaded"):
        model.run({"input": images(1)})
    with pytest.raises(ModelNotReady):
        model.set_instances(2)
    assert sessions.live() == 0


def test_session_options(
    lenet_file: Path, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    model = OnnxModel(lenet_file, instances=2)
    for session in list(sessions.alive):
        options = session.get_session_options()
        assert options.intra_op_num_threads == 2  # 4 cores shared by 2 instances
        assert options.inter_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert session.get_providers() == ["CPUExecutionProvider"]
    model.close()


def test_bad_inputs_are_invalid_input(lenet_file: Path) -> None:
    model = OnnxModel(lenet_file, intra_op_threads=1)
    with pytest.raises(InvalidInput, match="invalid dimensions"):
        model.run({"input": np.zeros((1, 1, 27, 28), np.float32)})
    with pytest.raises(InvalidInput, match="missing"):
        model.run({"pixels": images(1)})
    assert model.run({"input": images(1)})["logits"].shape == (1, 10)  # the session came back
    model.close()


def test_bad_file_is_model_load_error(tmp_path: Path) -> None:
    junk = tmp_path / "secret-dir" / "model.onnx"
    junk.parent.mkdir()
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelLoadError, match="'model.onnx'") as error:
        OnnxModel(junk)
    assert "secret-dir" not in error.value.message and str(tmp_path) not in error.value.message
    assert "Protobuf parsing failed" in error.value.message
    with pytest.raises(ModelLoadError, match="'gone.onnx': it does not exist"):
        OnnxModel(tmp_path / "gone.onnx")
    with pytest.raises(ConfigError, match="instances"):
        OnnxModel(junk, instances=0)


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # affinity wins over the machine's count
    assert [default_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert default_threads(4) == 16
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_threads(1) == 1
