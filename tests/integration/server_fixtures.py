"""Helpers for the gRPC server's integration tests: models, repositories, a real server process,
channels, a /metrics scraper and the tritonclient driver.

The server runs as `python -m headrace serve --port 0 --metrics-port 0` and announces itself
with one stdout line; it is always stopped by its pid (SIGTERM, then SIGKILL if it hangs).
tritonclient cannot share this process with our generated protos (both register
`inference.*` in protobuf's default pool), so it runs in `tritonclient_driver.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from headrace.processes import stop_process
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from serving.model_config import DynamicBatchingConfig, ModelConfig, TensorSpec
from serving.repository import ModelRepository
from serving.runner import default_threads
from training.export import export_onnx
from training.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("tritonclient_driver.py")
READY_PREFIX = "serving grpc="
TOKEN_ENV = "HEADRACE_AUTH_TOKEN"
LENET_DIMS = [1, 28, 28]
SLOW_WIDTH = 256  # the slow model's input and output: [batch, SLOW_WIDTH] FP32
T = TypeVar("T")


# -- models --------------------------------------------------------------------------------


def export_lenet(path: Path, seed: int) -> Path:
    """An untrained LeNet-5 (weights from `seed`) as ONNX with a dynamic batch axis."""
    torch.manual_seed(seed)
    return export_onnx(build_model("lenet5"), tuple(LENET_DIMS), path)


def build_slow_model(path: Path, rows: int = 256) -> Path:
    """A model whose run time the request chooses: the largest input value is a trip count.

    `output = mean over rows of (tanh(h @ W) applied trips times)` with `h` the input broadcast
    to [batch, rows, SLOW_WIDTH]. So `[[n] * SLOW_WIDTH]` executes n matrix products: a
    request can hold the model's only instance for a second while others take a millisecond,
    which makes queue-full and deadline tests deterministic without timing the machine.
    """
    d = SLOW_WIDTH
    w = (np.random.default_rng(0).standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    f32, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["h_out"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("i", i64, []),
            helper.make_tensor_value_info("cond", b, []),
            helper.make_tensor_value_info("h", f32, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", b, []),
            helper.make_tensor_value_info("h_out", f32, None),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["input"], ["max"], keepdims=0),
            helper.make_node("Cast", ["max"], ["trips"], to=i64),
            helper.make_node("Unsqueeze", ["input", "axis1"], ["x3"]),
            helper.make_node("Expand", ["x3", "wide"], ["h0"]),
            helper.make_node("Loop", ["trips", "true", "h0"], ["hn"], body=body),
            helper.make_node("ReduceMean", ["hn"], ["output"], axes=[1], keepdims=0),
        ],
        "slow",
        [helper.make_tensor_value_info("input", f32, ["batch", d])],
        [helper.make_tensor_value_info("output", f32, ["batch", d])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([1, rows, 1], np.int64), "wide"),
            numpy_helper.from_array(np.array(True), "true"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.20
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def seconds_per_trip(path: Path) -> float:
    """What one trip of the slow model costs here, with the threads the server gives one
    instance (best of three, so that durations derived from it err on the long side)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads(1)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.full((1, SLOW_WIDTH), 100, np.float32)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        session.run(None, {"input": x})
        best = min(best, time.perf_counter() - started)
    return best / 100


@dataclass(frozen=True)
class ModelFiles:
    """ONNX files shared by the whole session."""

    lenet_a: Path  # LeNet-5, seed 0
    lenet_b: Path  # LeNet-5, seed 1 (other weights: "version 2")
    slow: Path
    trip_s: float  # measured cost of one slow-model trip

    def trips_for(self, seconds: float) -> int:
        """Trips that keep the slow model busy for about `seconds` (at least 50)."""
        return max(50, round(seconds / self.trip_s))


def reference(path: Path, batch: np.ndarray) -> np.ndarray:
    """The model's output for `batch`, straight from ONNX Runtime in this process."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0])


def lenet_config(name: str, **update: Any) -> ModelConfig:
    config = ModelConfig(
        name=name,
        max_batch_size=8,
        inputs=[TensorSpec(name="input", datatype="FP32", dims=LENET_DIMS)],
        outputs=[TensorSpec(name="logits", dims=[10])],
        dynamic_batching=DynamicBatchingConfig(max_queue_delay_us=1000),
    )
    return config.model_copy(update=update)


def slow_config(name: str, **update: Any) -> ModelConfig:
    """One instance, one request per batch, at most 4 requests waiting."""
    config = ModelConfig(
        name=name,
        max_batch_size=1,
        inputs=[TensorSpec(name="input", datatype="FP32", dims=[SLOW_WIDTH])],
        outputs=[TensorSpec(name="output", dims=[SLOW_WIDTH])],
        dynamic_batching=DynamicBatchingConfig(max_queue_size=4, max_queue_delay_us=0),
        instance_count=1,
    )
    return config.model_copy(update=update)


def publish(root: Path, config: ModelConfig, model_file: Path) -> int:
    """Publish `model_file` as the next version of `config.name`; returns its version number."""
    return ModelRepository(root).publish(config, model_file, architecture="test").version


# -- requests ------------------------------------------------------------------------------


def digits_batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, *LENET_DIMS), dtype=np.float32)


def raw_request(
    model: str, array: np.ndarray, *, name: str = "input", version: str = "", datatype: str = "FP32"
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying `array` in raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


def slow_request(trips: int, model: str = "slow") -> pb.ModelInferRequest:
    return raw_request(model, np.full((1, SLOW_WIDTH), trips, np.float32))


def output_array(response: pb.ModelInferResponse, index: int = 0) -> np.ndarray:
    out = response.outputs[index]
    assert out.datatype == "FP32", out.datatype
    return np.frombuffer(response.raw_output_contents[index], "<f4").reshape(tuple(out.shape))


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError `call` raises (fails the test if it succeeds)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but an error was expected")


# -- waiting -------------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], what: str, timeout_s: float = 20.0) -> T:
    """Poll `check` until it returns a truthy value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.02)


# -- metrics -------------------------------------------------------------------------------


class Metrics:
    """One scrape of /metrics."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def find(self, name: str, **labels: str) -> list[Any]:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        return float(sum(s.value for s in self.find(name, **labels)))


# -- the server ----------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A running `headrace serve`."""

    process: subprocess.Popen[str]
    address: str
    metrics_port: int | None
    repository: Path
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]

    def scrape(self) -> Metrics:
        assert self.metrics_port is not None, "this server runs without --metrics-port"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return Metrics(response.read().decode())

    def in_flight(self, model: str) -> float:
        return self.scrape().value("inference_in_flight_requests", model=model)

    def stop(self, timeout_s: float = 30.0) -> int:
        return stop_process(self.process, timeout_s)


def pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Copy a child's output lines to a queue (None at the end), for a reader thread."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def wait_for_ready_line(
    process: subprocess.Popen[str], prefix: str, log_file: Path, what: str, timeout_s: float
) -> str:
    """The first stdout line of `process` starting with `prefix`; fails (with the log's tail)
    when the process exits first or prints no such line within `timeout_s`."""
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            tail = log_file.read_text(errors="replace")[-4000:]
            raise AssertionError(
                f"{what} printed no ready line in {timeout_s:g} s:\n{tail}"
            ) from None
        if line is None:
            process.wait(timeout=10)
            tail = log_file.read_text(errors="replace")[-4000:]
            raise AssertionError(
                f"{what} exited with code {process.returncode} before it was ready:\n{tail}"
            )
        if line.startswith(prefix):
            return line


@contextlib.contextmanager
def running_server(
    repository: Path,
    *args: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[ServerProcess]:
    """Start `headrace serve` on free ports; always stopped (by pid) when the block exits."""
    environment = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # no auth unless asked
    environment.update(env or {})
    log_file = log_dir / f"server-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "headrace", "serve", "--repository", str(repository),
               "--port", "0", "--metrics-port", "0", *args]  # fmt: skip
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=log, text=True
        )
    server: ServerProcess | None = None
    try:
        line = wait_for_ready_line(
            process, READY_PREFIX, log_file, "headrace serve", ready_timeout_s
        )
        fields = dict(part.split("=", 1) for part in line.split()[1:3])
        metrics = fields["metrics"]
        server = ServerProcess(
            process,
            fields["grpc"],
            None if metrics == "None" else int(metrics),
            repository,
            log_file,
        )
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def inference_stub(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with open_channel(address, credentials) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@contextlib.contextmanager
def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None
) -> Iterator[grpc.Channel]:
    """A channel to `address` that is ready (connected) before it is handed out."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel
    finally:
        channel.close()


# -- tritonclient --------------------------------------------------------------------------


@dataclass
class Driver:
    """A tritonclient_driver.py process running one scenario."""

    process: subprocess.Popen[str]
    params_file: Path

    def finish(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait for the scenario (killed if late) and read its JSON report."""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the tritonclient driver ran over {timeout_s:g} s") from None
        finally:
            self.params_file.unlink(missing_ok=True)
        assert self.process.returncode == 0, f"the tritonclient driver failed:\n{stderr[-4000:]}"
        report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
        return report

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=10)
        self.params_file.unlink(missing_ok=True)


def start_driver(address: str, scenario: str, **params: Any) -> Driver:
    """Run one tritonclient scenario in its own process (see tritonclient_driver.py)."""
    fd, name = tempfile.mkstemp(prefix="driver-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(params, f)
    process = subprocess.Popen(
        [sys.executable, str(DRIVER), scenario, address, name],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Driver(process, Path(name))


def run_driver(
    address: str, scenario: str, timeout_s: float = 120.0, **params: Any
) -> dict[str, Any]:
    return start_driver(address, scenario, **params).finish(timeout_s)
