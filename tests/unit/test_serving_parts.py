"""Small serving parts on their own: request validation, token checks, autoscaling decisions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from headrace.errors import InvalidInput, ModelNotFound, ModelNotReady
from serving.auth import BearerTokenInterceptor, token_matches
from serving.autoscaler import Autoscaler
from serving.model_config import AutoscalingConfig, ModelConfig, TensorSpec
from serving.types import InferRequest, InferTensor
from serving.validation import validate_request

CONFIG = ModelConfig(
    name="m",
    max_batch_size=8,
    inputs=[TensorSpec(name="input", datatype="FP32", dims=[1, 4, 4])],
    outputs=[TensorSpec(name="logits", datatype="FP32", dims=[3])],
)


def _request(array: np.ndarray, name: str = "input", **kwargs: Any) -> InferRequest:
    return InferRequest(model_name="m", inputs=[InferTensor.from_array(name, array)], **kwargs)


def test_valid_request_returns_rows() -> None:
    assert validate_request(_request(np.zeros((3, 1, 4, 4), np.float32)), CONFIG) == 3


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (InferRequest(model_name="m", inputs=[]), "no inputs"),
        (_request(np.zeros((1, 1, 4, 4), np.float32), name="other"), "unknown input 'other'"),
        (_request(np.zeros((1, 1, 4, 4), np.float64)), "expected datatype FP32"),
        (_request(np.zeros((1, 1, 4, 5), np.float32)), "expected shape"),
        (_request(np.zeros((1, 4, 4), np.float32)), "expected 4 dims"),
        (_request(np.zeros((9, 1, 4, 4), np.float32)), "batch size 9"),
        (_request(np.full((1, 1, 4, 4), np.nan, np.float32)), "NaN"),
        (_request(np.full((1, 1, 4, 4), np.inf, np.float32)), "NaN or infinite"),
        (
            _request(np.zeros((1, 1, 4, 4), np.float32), requested_outputs=["probs"]),
            "unknown output 'probs'",
        ),
    ],
)
def test_invalid_requests_name_the_problem(request_: InferRequest, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_request(request_, CONFIG)


def test_non_finite_allowed_when_config_says_so() -> None:
    lenient = CONFIG.model_copy(update={"reject_non_finite": False})
    assert validate_request(_request(np.full((1, 1, 4, 4), np.nan, np.float32)), lenient) == 1


def test_token_matching() -> None:
    assert token_matches((("authorization", "Bearer s3cret"),), "s3cret")
    assert token_matches((("Authorization", b"bearer s3cret"),), "s3cret")
    assert not token_matches((("authorization", "Bearer wrong"),), "s3cret")
    assert not token_matches((("authorization", "s3cret"),), "s3cret")
    assert not token_matches(None, "s3cret")


def test_auth_scopes() -> None:
    load = "/inference.GRPCInferenceService/RepositoryModelLoad"
    infer = "/inference.GRPCInferenceService/ModelInfer"
    health = "/grpc.health.v1.Health/Check"
    everything = BearerTokenInterceptor("t", "all")
    control = BearerTokenInterceptor("t", "control")
    assert everything.guards(load) and everything.guards(infer) and not everything.guards(health)
    assert control.guards(load) and not control.guards(infer)
    with pytest.raises(ValueError):
        BearerTokenInterceptor("")


@dataclass
class FakeModel:
    instances: int = 1

    def set_instances(self, n: int) -> None:
        self.instances = n


@dataclass
class FakeBatcher:
    queue_depth: int = 0
    in_flight: int = 0
    concurrency: list[int] = field(default_factory=list)

    def set_concurrency(self, n: int) -> None:
        self.concurrency.append(n)


@dataclass
class FakeLoaded:
    name: str
    version: int
    config: ModelConfig
    model: FakeModel
    batcher: FakeBatcher


class FakeManager:
    def __init__(self, loaded: FakeLoaded) -> None:
        self.entry = loaded

    def loaded(self) -> dict[str, list[int]]:
        return {self.entry.name: [self.entry.version]}

    def get(self, name: str, version: int) -> FakeLoaded:
        return self.entry


def _scaler(policy: AutoscalingConfig) -> tuple[Autoscaler, FakeLoaded, list[float]]:
    config = CONFIG.model_copy(update={"autoscaling": policy})
    entry = FakeLoaded("m", 1, config, FakeModel(), FakeBatcher())
    now = [0.0]
    scaler = Autoscaler(FakeManager(entry), clock=lambda: now[0])  # type: ignore[arg-type]
    return scaler, entry, now


def test_scales_up_under_queue_and_down_when_idle_with_cooldown() -> None:
    policy = AutoscalingConfig(min_instances=1, max_instances=3, target_queue_depth=2, cooldown_s=5)
    scaler, entry, now = _scaler(policy)
    entry.batcher.queue_depth = 20
    decisions = asyncio.run(scaler.step())
    assert [(d.old, d.new) for d in decisions] == [(1, 2)]
    assert entry.model.instances == 2 and entry.batcher.concurrency == [2]
    assert asyncio.run(scaler.step()) == []  # cooling down
    now[0] = 6.0
    asyncio.run(scaler.step())
    now[0] = 12.0
    asyncio.run(scaler.step())
    assert entry.model.instances == 3  # capped at max_instances
    entry.batcher.queue_depth = 0
    for t in (18.0, 24.0, 30.0, 36.0, 42.0):
        now[0] = t
        asyncio.run(scaler.step())
    assert entry.model.instances == 1  # back to min_instances, never below


class ClosingModel(FakeModel):
    """A retired version's model: closed, it refuses to grow (as OnnxModel does)."""

    def set_instances(self, n: int) -> None:
        raise ModelNotReady("model file 'model.onnx' was unloaded")


class RetiringManager:
    """Two versions; the second is retired (closed) while the first one's sessions are built."""

    def __init__(self, first: FakeLoaded, second: FakeLoaded) -> None:
        self.entries = {1: first, 2: second}
        first_resize = first.model.set_instances

        def resize_and_retire(n: int) -> None:
            first_resize(n)
            self.entries.pop(2, None)

        first.model.set_instances = resize_and_retire  # type: ignore[method-assign]

    def loaded(self) -> dict[str, list[int]]:
        return {"m": sorted(self.entries)}

    def get(self, name: str, version: int) -> FakeLoaded:
        if version not in self.entries:
            raise ModelNotFound(f"model 'm' has no ready version {version}")
        return self.entries[version]


@pytest.mark.parametrize("closed", [False, True])
def test_a_version_retired_during_a_step_is_left_alone(closed: bool) -> None:
    """Both versions' queues ask for an instance more. The second was retired (a hot reload)
    while the first's new session was built: it was resized all the same (sessions built for
    a version on its way out), or, once closed, its ModelNotReady ended the step (an
    'autoscaler step failed' traceback in the log) and skipped the versions after it."""
    policy = AutoscalingConfig(min_instances=1, max_instances=3, target_queue_depth=1, cooldown_s=0)
    config = CONFIG.model_copy(update={"autoscaling": policy})
    first = FakeLoaded("m", 1, config, FakeModel(), FakeBatcher(queue_depth=10))
    model = ClosingModel() if closed else FakeModel()
    second = FakeLoaded("m", 2, config, model, FakeBatcher(queue_depth=10))
    scaler = Autoscaler(RetiringManager(first, second))  # type: ignore[arg-type]
    decisions = asyncio.run(scaler.step())
    assert [(d.version, d.old, d.new) for d in decisions] == [(1, 1, 2)]
    assert second.model.instances == 1 and second.batcher.concurrency == []
    asyncio.run(scaler.step())
    assert set(scaler.tracks) == {("m", 1)}  # the retired version's track is dropped


def test_models_without_policy_are_left_alone() -> None:
    scaler, entry, _ = _scaler(AutoscalingConfig())
    entry.config = CONFIG
    entry.batcher.queue_depth = 100
    assert asyncio.run(scaler.step()) == []
    assert entry.model.instances == 1


def test_preprocessing_spec_scales_and_standardises_per_channel() -> None:
    from serving.model_config import PreprocessingSpec

    spec = PreprocessingSpec(scale=0.5, mean=[1.0, 0.0], std=[2.0, 4.0])
    pixels = np.array([[[[2]], [[8]]]], dtype=np.uint8)  # (1, 2, 1, 1)
    out = spec.apply(pixels)
    assert out.dtype == np.float32
    assert out.reshape(-1).tolist() == [0.0, 1.0]  # (2*0.5-1)/2, (8*0.5-0)/4


def test_timeout_parameter_tightens_the_deadline() -> None:
    from serving.request_parameters import apply_timeout

    def with_timeout(value: object, deadline: float | None = None) -> InferRequest:
        request = _request(np.zeros((1, 1, 4, 4), np.float32), parameters={"timeout": value})
        request.deadline = deadline
        apply_timeout(request)
        return request

    now = time.monotonic()
    assert with_timeout(0).deadline is None  # 0: no timeout, as in Triton
    tight = with_timeout(500_000).deadline
    assert tight is not None and now + 0.4 < tight < now + 60
    assert with_timeout(500_000, deadline=now + 0.1).deadline == now + 0.1  # the earlier wins
    for bad in (-1, 1.5, "100", True):
        with pytest.raises(InvalidInput, match="parameter 'timeout' must be a whole number"):
            with_timeout(bad)


def test_a_metrics_port_in_use_is_a_config_error() -> None:
    import socket

    from headrace.errors import ConfigError
    from serving.metrics import ServingMetrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            ServingMetrics().serve(port)


def test_tokens_from_the_environment_are_trimmed_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headrace.errors import ConfigError
    from serving.auth import token_from_env

    for value, expected in [("s3cret\n", "s3cret"), ("  a.b_c~d+e/f-g==  ", "a.b_c~d+e/f-g=="),
                            ("", None), ("   ", None)]:  # fmt: skip
        monkeypatch.setenv("T", value)
        assert token_from_env("T") == expected
    monkeypatch.delenv("T")
    assert token_from_env("T") is None
    for bad in ("pässwörd", "two words", "a\tb"):
        monkeypatch.setenv("T", bad)
        with pytest.raises(ConfigError, match="characters a bearer token cannot carry"):
            token_from_env("T")
    # a client's token is compared as bytes: no TypeError for text the server never sent
    assert not token_matches((("authorization", "Bearer pässwörd"),), "s3cret")


def test_a_blank_token_variable_serves_without_auth_but_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A HEADRACE_AUTH_TOKEN that is set but blank (a secret that mounted empty) turned auth
    off without a word; unset, it is auth off on purpose, and says nothing."""
    from headrace.commands.serve import DEFAULT_TOKEN_ENV, _auth_token

    monkeypatch.setenv(DEFAULT_TOKEN_ENV, " \n")
    assert _auth_token(DEFAULT_TOKEN_ENV) is None
    assert "is set but empty: serving WITHOUT auth" in capsys.readouterr().err
    monkeypatch.delenv(DEFAULT_TOKEN_ENV)
    assert _auth_token(DEFAULT_TOKEN_ENV) is None
    assert capsys.readouterr().err == ""


def test_version_policy_flag_values() -> None:
    import click

    from headrace.commands.serve import parse_version_policy

    assert parse_version_policy("latest") == {"kind": "latest", "latest_n": 1}
    assert parse_version_policy("latest:3") == {"kind": "latest", "latest_n": 3}
    assert parse_version_policy("all") == {"kind": "all"}
    assert parse_version_policy("specific:1,3") == {"kind": "specific", "versions": [1, 3]}
    for bad in ("latest:x", "latest:2:3", "latest:0", "all:3", "specific:", "specific:a",
                "specific:1,,2", "specific:0", "specific:-1", "newest"):  # fmt: skip
        with pytest.raises(click.BadParameter, match="use latest, latest:N, all or specific"):
            parse_version_policy(bad)


def test_interface_problems_of_an_onnx_model_against_its_config() -> None:
    from serving.onnx_interface import interface_problems

    good = {"input": ("tensor(float)", ("batch", 1, 4, 4))}
    assert interface_problems(CONFIG, good, ["logits", "extra"]) == []
    named_dim = {"input": ("tensor(float)", (8, 1, "h", 4))}
    assert interface_problems(CONFIG, named_dim, ["logits"]) == []
    cases = {
        "inputs ['image'] in the model, ['input'] in the config": (
            {"image": ("tensor(float)", ("b", 1, 4, 4))}, ["logits"]
        ),
        "input 'input' is FP64 in the model, FP32 in the config": (
            {"input": ("tensor(double)", ("b", 1, 4, 4))}, ["logits"]
        ),
        "input 'input' has dims [3, 4, 4] after the batch axis": (
            {"input": ("tensor(float)", ("b", 3, 4, 4))}, ["logits"]
        ),
        "outputs ['logits'] of the config are not among the model's ['probs']": (good, ["probs"]),
    }  # fmt: skip
    for message, (inputs, outputs) in cases.items():
        assert any(message in p for p in interface_problems(CONFIG, inputs, outputs)), message


def test_successes_counted_while_scrapes_run_all_reach_the_metrics() -> None:
    """Successes wait outside the registry until a scrape moves them in; every scrape sees
    all that were counted before it, and none is lost or counted twice when scrapes run in
    another thread meanwhile."""
    import threading

    from prometheus_client import generate_latest

    from serving.metrics import ServingMetrics
    from serving.types import Timings

    metrics = ServingMetrics()
    value = metrics.registry.get_sample_value
    labels = {"model": "m", "version": "1"}
    timings = Timings(queue_s=0.002, compute_s=0.004, batch_size=3)
    metrics.observe_success("m", "1", 3, timings, 0.02, requests=2)
    assert value("inference_request_success_total", labels) == 2
    assert value("inference_count_total", labels) == 3
    assert value("inference_batch_size_bucket", {**labels, "le": "4.0"}) == 2
    assert value("inference_queue_duration_seconds_sum", labels) == pytest.approx(0.004)

    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(metrics.registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(20_000):
            metrics.observe_success("m", "1", 1, timings, 0.0001)
    finally:
        stop.set()
        scraper.join()
    assert value("inference_request_success_total", labels) == 20_002
    assert value("inference_request_duration_seconds_count", labels) == 20_002
    assert value("inference_request_duration_seconds_bucket", {**labels, "le": "0.0005"}) == 20_000
    assert value("inference_compute_duration_seconds_sum", labels) == pytest.approx(0.004 * 20_002)
