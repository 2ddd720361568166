"""Every bad request gets the right gRPC status and a message that says what to fix, and the
server keeps serving: malformed inputs, unknown models, oversized messages, missing or wrong
tokens, a full queue (exactly the overflow refused) and expired deadlines (never executed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import (
    LENET_DIMS,
    Metrics,
    ModelFiles,
    ServerProcess,
    digits_batch,
    inference_stub,
    lenet_config,
    open_channel,
    output_array,
    publish,
    raw_request,
    reference,
    rpc_error,
    run_driver,
    running_server,
    slow_config,
    slow_request,
    wait_until,
)

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

MODEL = "digits"
MAX_MESSAGE_BYTES = 256 * 1024
QUEUE_SIZE = 4  # slow_config's max_queue_size
TOKEN = "s3cret-token"
Code = grpc.StatusCode
X = digits_batch(1)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("errors-repo")
    publish(root, lenet_config(MODEL), model_files.lenet_a)
    publish(root, lenet_config("digits-nan-ok", reject_non_finite=False), model_files.lenet_a)
    publish(root, slow_config("slow"), model_files.slow)
    args = ("--max-message-bytes", str(MAX_MESSAGE_BYTES), "--poll-interval-s", "0")
    with running_server(root, *args, log_dir=root.parent) as process:
        yield process


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with inference_stub(server.address) as stub:
        yield stub


def assert_still_serving(stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles) -> None:
    response = stub.ModelInfer(raw_request(MODEL, X), timeout=30)
    np.testing.assert_allclose(
        output_array(response), reference(model_files.lenet_a, X), rtol=1e-4, atol=1e-5
    )


# -- malformed requests --------------------------------------------------------------------


def with_shape(shape: list[int], data: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(X.tobytes() if data is None else data)
    return request


def typed(values: list[float], field: str = "fp32_contents") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, *LENET_DIMS])
    getattr(tensor.contents, field).extend(values)
    return request


def raw_and_typed() -> pb.ModelInferRequest:
    request = raw_request(MODEL, X)
    request.inputs[0].contents.fp32_contents.extend(X.reshape(-1).tolist())
    return request


def two_raw_entries() -> pb.ModelInferRequest:
    request = raw_request(MODEL, X)
    request.raw_input_contents.append(X.tobytes())
    return request


def duplicate_input() -> pb.ModelInferRequest:
    request = raw_request(MODEL, X)
    request.inputs.add(name="input", datatype="FP32", shape=[1, *LENET_DIMS])
    request.raw_input_contents.append(X.tobytes())
    return request


def with_value(value: float) -> pb.ModelInferRequest:
    bad = X.copy()
    bad[0, 0, 3, 5] = value
    return raw_request(MODEL, bad)


def requested_output(name: str) -> pb.ModelInferRequest:
    request = raw_request(MODEL, X)
    request.outputs.add(name=name)
    return request


def with_parameter(key: str, field: str, value: object) -> pb.ModelInferRequest:
    request = raw_request(MODEL, X)
    setattr(request.parameters[key], field, value)
    return request


N = 784  # elements of one digit
BAD_REQUESTS: dict[str, tuple[Callable[[], pb.ModelInferRequest], grpc.StatusCode, str]] = {
    "unknown model": (
        lambda: raw_request("no-such-model", X), Code.NOT_FOUND,
        "model 'no-such-model' not found; ready models: digits, digits-nan-ok, slow",
    ),
    "unknown version": (
        lambda: raw_request(MODEL, X, version="7"), Code.NOT_FOUND,
        "model 'digits' has no ready version 7; versions: 1",
    ),
    "version not a number": (
        lambda: raw_request(MODEL, X, version="latest"), Code.NOT_FOUND,
        "has no ready version latest",
    ),
    "wrong datatype": (
        lambda: raw_request(MODEL, X.astype(np.float64), datatype="FP64"), Code.INVALID_ARGUMENT,
        "input 'input': expected datatype FP32, got FP64",
    ),
    "unknown datatype": (
        lambda: raw_request(MODEL, X, datatype="FP8"), Code.INVALID_ARGUMENT,
        "input 'input': unknown datatype 'FP8'; use one of",
    ),
    "wrong rank": (
        lambda: with_shape([1, 28, 28], X.tobytes()), Code.INVALID_ARGUMENT,
        "input 'input': expected 4 dims [-1, 1, 28, 28], got [1, 28, 28]",
    ),
    "wrong dims": (
        lambda: with_shape([1, 1, 28, 27], X.tobytes()[: 28 * 27 * 4]), Code.INVALID_ARGUMENT,
        "input 'input': expected shape [-1, 1, 28, 28], got [1, 1, 28, 27]",
    ),
    "batch above max_batch_size": (
        lambda: raw_request(MODEL, digits_batch(9)), Code.INVALID_ARGUMENT,
        "input 'input': batch size 9 must be between 1 and 8",
    ),
    "raw byte size mismatch": (
        lambda: with_shape([1, 1, 28, 28], b"\0" * 100), Code.INVALID_ARGUMENT,
        f"input 'input': raw byte size 100 does not match {N} FP32 elements of 4 bytes "
        f"({4 * N} bytes expected)",
    ),
    "raw and typed contents both set": (
        raw_and_typed, Code.INVALID_ARGUMENT,
        "input 'input' has typed contents while the request uses raw_input_contents",
    ),
    "more raw entries than inputs": (
        two_raw_entries, Code.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 inputs",
    ),
    "negative dim": (
        lambda: with_shape([-1, 1, 28, 28]), Code.INVALID_ARGUMENT,
        "input 'input': shape [-1, 1, 28, 28] has a negative dim",
    ),
    "dims overflowing int64": (
        lambda: with_shape([2**62, 2**62, 28, 28]), Code.INVALID_ARGUMENT,
        "above the limit of 2147483648; split the request",
    ),
    "largest int64 dim": (
        lambda: with_shape([2**63 - 1, 1, 28, 28]), Code.INVALID_ARGUMENT,
        "above the limit of 2147483648; split the request",
    ),
    "NaN": (lambda: with_value(np.nan), Code.INVALID_ARGUMENT, "holds NaN or infinite values"),
    "Inf": (lambda: with_value(-np.inf), Code.INVALID_ARGUMENT, "holds NaN or infinite values"),
    "typed contents of the wrong length": (
        lambda: typed([0.5] * 5), Code.INVALID_ARGUMENT,
        f"input 'input': contents.fp32_contents has 5 values, the shape needs {N} elements",
    ),
    "typed contents in the wrong field": (
        lambda: typed([1] * N, "int_contents"), Code.INVALID_ARGUMENT,
        "input 'input': FP32 data belongs in contents.fp32_contents, got int_contents",
    ),
    "empty request": (
        lambda: pb.ModelInferRequest(model_name=MODEL), Code.INVALID_ARGUMENT,
        "empty request: request for model 'digits' has no inputs",
    ),
    "no fields at all": (
        pb.ModelInferRequest, Code.INVALID_ARGUMENT, "empty request",
    ),
    "unknown input name": (
        lambda: raw_request(MODEL, X, name="image"), Code.INVALID_ARGUMENT,
        "unknown input 'image' for model 'digits'; it expects ['input']",
    ),
    "input given twice": (
        duplicate_input, Code.INVALID_ARGUMENT, "input 'input' appears 2 times in the request",
    ),
    "unknown requested output": (
        lambda: requested_output("probs"), Code.INVALID_ARGUMENT,
        "unknown output 'probs' requested; model 'digits' has ['logits']",
    ),
    # sequence and priority parameters are ignored (no model here has sequence batching or
    # priority levels), as Triton ignores them, but values of a type Triton refuses are refused
    "sequence_id neither an integer nor a string": (
        lambda: with_parameter("sequence_id", "double_param", 1.5), Code.INVALID_ARGUMENT,
        "parameter 'sequence_id' must be an integer or a string, got 1.5",
    ),
    "sequence_start not a bool": (
        lambda: with_parameter("sequence_start", "string_param", "yes"), Code.INVALID_ARGUMENT,
        "parameter 'sequence_start' must be a bool, got 'yes'",
    ),
    "sequence_end not a bool": (
        lambda: with_parameter("sequence_end", "int64_param", 1), Code.INVALID_ARGUMENT,
        "parameter 'sequence_end' must be a bool, got 1",
    ),
    "negative priority": (
        lambda: with_parameter("priority", "int64_param", -1), Code.INVALID_ARGUMENT,
        "parameter 'priority' must be a whole number >= 0, got -1",
    ),
    "priority not a number": (
        lambda: with_parameter("priority", "string_param", "high"), Code.INVALID_ARGUMENT,
        "parameter 'priority' must be a whole number >= 0, got 'high'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_the_server_keeps_serving(
    case: str,
    server: ServerProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    model_files: ModelFiles,
) -> None:
    build, code, message = BAD_REQUESTS[case]
    error = rpc_error(lambda: stub.ModelInfer(build(), timeout=30))
    assert error.code() == code, error.details()
    assert message in error.details()
    assert str(server.repository) not in error.details()  # no server paths leak to clients
    assert_still_serving(stub, model_files)


def test_unknown_model_in_metadata_and_config_calls(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for call in (
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="ghost"), timeout=30),
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name="ghost"), timeout=30),
        lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="ghost"), timeout=30),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version="3"), timeout=30),
    ):
        error = rpc_error(call)
        assert error.code() == Code.NOT_FOUND
        assert "not found" in error.details() or "has no ready version 3" in error.details()


def test_names_and_versions_too_long_to_quote_get_their_own_status(
    stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    """Messages quote the name or version asked for: quoted whole, 20,000 characters made
    a status trailer over the 16 KiB a client takes (it saw RESOURCE_EXHAUSTED 'received
    metadata size exceeds hard limit'), and a version of 20,000 digits was INTERNAL (int()
    refuses more than 4,300 digits)."""
    name, digits = "界" * 20_000, "9" * 20_000
    for call in (
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=30),
        lambda: stub.ModelInfer(raw_request(name, X), timeout=30),
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name=MODEL, version=digits), timeout=30),
        lambda: stub.ModelInfer(raw_request(MODEL, X, version=digits), timeout=30),
    ):
        error = rpc_error(call)
        assert error.code() == Code.NOT_FOUND, error.details()
        assert error.details().endswith("characters cut)"), error.details()[-200:]
    ready = stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version=digits), timeout=30)
    assert not ready.ready
    assert_still_serving(stub, model_files)


def test_reserved_triton_parameters_are_refused_unless_triton_defines_them(
    stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    """Keys starting with 'triton_' are Triton's: it refuses one it does not define with
    INVALID_ARGUMENT, and so does this server, on ModelInfer and on a stream (they were
    ignored). triton_enable_empty_final_response, which tritonclient sends, passes when it
    is a bool, as in Triton."""
    unknown = with_parameter("triton_no_such_option", "bool_param", True)
    error = rpc_error(lambda: stub.ModelInfer(unknown, timeout=30))
    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert "parameter 'triton_no_such_option'" in error.details()
    assert "reserved" in error.details()
    [streamed] = stub.ModelStreamInfer(iter([unknown]), timeout=30)
    assert "parameter 'triton_no_such_option'" in streamed.error_message
    wrong_type = with_parameter("triton_enable_empty_final_response", "string_param", "true")
    error = rpc_error(lambda: stub.ModelInfer(wrong_type, timeout=30))
    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert "'triton_enable_empty_final_response' must be a bool" in error.details()
    for flag in (True, False):
        allowed = with_parameter("triton_enable_empty_final_response", "bool_param", flag)
        stub.ModelInfer(allowed, timeout=30)
        [answer] = stub.ModelStreamInfer(iter([allowed]), timeout=30)
        assert not answer.error_message, answer.error_message
    assert_still_serving(stub, model_files)


def test_oversized_message_is_refused(
    stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    big = np.zeros((100, *LENET_DIMS), np.float32)  # 313,600 bytes of data > 256 KiB
    error = rpc_error(lambda: stub.ModelInfer(raw_request(MODEL, big), timeout=30))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details() and str(MAX_MESSAGE_BYTES) in error.details()
    assert_still_serving(stub, model_files)


def test_non_finite_inputs_pass_when_the_config_allows_them(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    bad = X.copy()
    bad[0, 0, 3, 5] = np.nan
    response = stub.ModelInfer(raw_request("digits-nan-ok", bad), timeout=30)
    assert (response.model_name, response.model_version) == ("digits-nan-ok", "1")
    assert output_array(response).shape == (1, 10)


def test_non_finite_requests_in_flight_with_good_ones_fail_alone(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    """The NaN/infinity check screens whole batches: requests sent together (so they share
    batches) fail only where they hold NaN or infinity, and each counts as invalid_input."""
    failures = ("inference_request_failure_total", {"model": MODEL, "reason": "invalid_input"})
    before = server.scrape()
    bad = [i % 4 == 1 for i in range(48)]
    calls = [
        stub.ModelInfer.future(with_value(np.nan if is_bad else 0.5), timeout=30) for is_bad in bad
    ]
    good = X.copy()
    good[0, 0, 3, 5] = 0.5
    expected = reference(model_files.lenet_a, good)
    for is_bad, call in zip(bad, calls, strict=True):
        if is_bad:
            error = rpc_error(call.result)
            assert error.code() == Code.INVALID_ARGUMENT
            assert error.details() == "input 'input' holds NaN or infinite values"
        else:
            np.testing.assert_allclose(output_array(call.result()), expected, rtol=1e-4, atol=1e-5)
    after = server.scrape()
    assert after.value(failures[0], **failures[1]) - before.value(failures[0], **failures[1]) == 12
    success = "inference_request_success_total"
    assert after.value(success, model=MODEL) - before.value(success, model=MODEL) == 36


def test_tritonclient_sees_the_statuses(server: ServerProcess, model_files: ModelFiles) -> None:
    got = run_driver(server.address, "errors", model=MODEL, batch=X.tolist())
    expected = {
        "unknown_model": ("NOT_FOUND", "model 'no-such-model' not found"),
        "unknown_version": ("NOT_FOUND", "model 'digits' has no ready version 7"),
        "wrong_datatype": ("INVALID_ARGUMENT", "expected datatype FP32, got FP64"),
        "wrong_shape": ("INVALID_ARGUMENT", "expected 4 dims [-1, 1, 28, 28], got [1, 28, 28]"),
        "raw_size_mismatch": ("INVALID_ARGUMENT", "raw byte size 3136 does not match 560 FP32"),
        "nan": ("INVALID_ARGUMENT", "input 'input' holds NaN or infinite values"),
        "unknown_model_metadata": ("NOT_FOUND", "model 'no-such-model' not found"),
        "input_in_shared_memory": (
            "INVALID_ARGUMENT",
            "input 'input' asks for shared memory (shared_memory_region, shared_memory_byte_size)",
        ),
        "output_to_shared_memory": (
            "INVALID_ARGUMENT",
            "output 'logits' asks for shared memory (shared_memory_region",
        ),
        "negative_class_count": (
            "INVALID_ARGUMENT",
            "output 'logits': parameter 'classification' must be a class count >= 0, got -2",
        ),
        "load_with_sequence_batching": (
            "INVALID_ARGUMENT",
            "config override: sequence_batching cannot be set on this server; an override "
            "may state",
        ),
        "load_with_files": (
            "INVALID_ARGUMENT",
            "load of 'digits': model files in the request (file:1/model.onnx) are not supported",
        ),
        "expired_timeout": ("DEADLINE_EXCEEDED", "the request's deadline passed"),
        "log_settings": (
            "UNIMPLEMENTED",
            "/inference.GRPCInferenceService/LogSettings is not offered by this server",
        ),
        "register_shared_memory": (
            "UNIMPLEMENTED",
            "/inference.GRPCInferenceService/SystemSharedMemoryRegister is not offered",
        ),
        "output_requested_twice": (
            "INVALID_ARGUMENT",
            "output 'logits' is requested more than once; request it once",
        ),
        **{
            f"{call}_in_named_repository": (
                "UNIMPLEMENTED",
                "repository_name 'elsewhere': this server serves one model repository",
            )
            for call in ("index", "load", "unload")
        },
    }
    for case, (status, message) in expected.items():
        assert got[case]["status"] == status, (case, got[case])
        assert message in got[case]["message"], (case, got[case])
    for case in ("in_sequence_with_priority", "in_string_sequence", "after"):
        np.testing.assert_allclose(
            np.asarray(got[case]["output"]), reference(model_files.lenet_a, X), rtol=1e-4, atol=1e-5
        )


# -- back pressure and deadlines -----------------------------------------------------------


def slow_counts(metrics: Metrics) -> dict[str, float]:
    return {
        "success": metrics.value("inference_request_success_total", model="slow"),
        "rows": metrics.value("inference_count_total", model="slow"),
        "queue_full": metrics.value(
            "inference_request_failure_total", model="slow", reason="queue_full"
        ),
        "deadline": metrics.value(
            "inference_request_failure_total", model="slow", reason="deadline_exceeded"
        ),
    }


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def occupy(server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, seconds: float,
           model_files: ModelFiles) -> grpc.Future:  # fmt: skip
    """Start a request that holds the slow model's only instance for about `seconds`."""
    occupant = stub.ModelInfer.future(slow_request(model_files.trips_for(seconds)), timeout=120)
    wait_until(lambda: server.in_flight("slow") == 1, "the slow model to start executing")
    return occupant


def test_queue_full_refuses_exactly_the_overflow(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    overflow = 3
    before = slow_counts(server.scrape())
    occupant = occupy(server, stub, 1.5, model_files)
    flood = [
        stub.ModelInfer.future(slow_request(1), timeout=120) for _ in range(QUEUE_SIZE + overflow)
    ]
    # The refusals come back at once, while the occupant still holds the only instance.
    refused = wait_until(
        lambda: [f for f in flood if f.done()] if sum(f.done() for f in flood) >= overflow else [],
        "the overflow to be refused",
    )
    assert not occupant.done(), "the occupant finished too early for the test to be meaningful"
    assert len(refused) == overflow
    for future in refused:
        error = future.exception()
        assert error is not None and error.code() == Code.RESOURCE_EXHAUSTED
        assert f"queue is full ({QUEUE_SIZE} requests waiting); retry later" in error.details()
    occupant.result()
    queued = [f for f in flood if f not in refused]
    for future in queued:
        assert future.result().model_name == "slow"  # raises if it failed
    after = slow_counts(server.scrape())
    assert delta(before, after) == {
        "success": QUEUE_SIZE + 1,
        "rows": QUEUE_SIZE + 1,
        "queue_full": overflow,
        "deadline": 0,
    }
    assert_still_serving(stub, model_files)


def test_expired_request_is_never_executed(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    def executed() -> tuple[int, int]:
        """(rows inferred, batches executed) of the slow model, from ModelStatistics."""
        request = pb.ModelStatisticsRequest(name="slow")
        found = stub.ModelStatistics(request, timeout=30).model_stats
        return sum(s.inference_count for s in found), sum(s.execution_count for s in found)

    before, executed_before = slow_counts(server.scrape()), executed()
    occupant = occupy(server, stub, 3.0, model_files)
    # A 1 s timeout: the client's cancellation reaches the server a few ms before the server's
    # copy of the deadline (with 0.3 s it came after it, which hid a miscounted reason)
    error = rpc_error(lambda: stub.ModelInfer(slow_request(1), timeout=1.0))
    assert error.code() == Code.DEADLINE_EXCEEDED
    wait_until(
        lambda: delta(before, slow_counts(server.scrape()))["deadline"] == 1,
        "the server to count the expired request",
    )
    # It left the queue while the only instance was still busy with the occupant: not run.
    metrics = server.scrape()
    assert metrics.value("inference_queue_depth", model="slow") == 0
    assert metrics.value("inference_in_flight_requests", model="slow") == 1
    assert not occupant.done(), "the occupant finished too early for the test to be meaningful"
    occupant.result()
    stub.ModelInfer(slow_request(1), timeout=30)
    assert delta(before, slow_counts(server.scrape())) == {
        "success": 2, "rows": 2, "queue_full": 0, "deadline": 1,
    }  # fmt: skip
    rows, batches = executed()
    assert (rows - executed_before[0], batches - executed_before[1]) == (2, 2)
    exec_counts = [
        m.value("inference_exec_count_total", model="slow") for m in (metrics, server.scrape())
    ]
    assert exec_counts[1] - exec_counts[0] == 2  # the occupant's batch and the follow-up only


# -- authentication ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("auth-repo")
    publish(root, lenet_config(MODEL), model_files.lenet_a)
    env = {"HEADRACE_AUTH_TOKEN": TOKEN}
    with running_server(root, "--poll-interval-s", "0", log_dir=root.parent, env=env) as process:
        yield process


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    "metadata",
    [(), bearer("wrong-token"), bearer(""), (("authorization", f"Basic {TOKEN}"),)],
    ids=["missing", "wrong", "empty", "wrong-scheme"],
)
def test_auth_refuses_missing_or_wrong_token(
    auth_server: ServerProcess, metadata: tuple[tuple[str, str], ...]
) -> None:
    with inference_stub(auth_server.address) as stub:
        for call in (
            lambda: stub.ModelInfer(raw_request(MODEL, X), metadata=metadata, timeout=30),
            lambda: stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=30),
            lambda: stub.RepositoryIndex(
                pb.RepositoryIndexRequest(), metadata=metadata, timeout=30
            ),
        ):
            error = rpc_error(call)
            assert error.code() == Code.UNAUTHENTICATED
            assert "send metadata 'authorization: Bearer <token>'" in error.details()
            assert TOKEN not in error.details()
        # the refused calls did not stop the server
        response = stub.ModelInfer(raw_request(MODEL, X), metadata=bearer(TOKEN), timeout=30)
        assert response.model_version == "1"


def test_auth_lets_the_right_token_in_and_health_stays_open(auth_server: ServerProcess) -> None:
    with open_channel(auth_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(TOKEN), timeout=30).live
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer(TOKEN))
        assert [m.name for m in index.models] == [MODEL]
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_auth_with_tritonclient(auth_server: ServerProcess) -> None:
    got = run_driver(auth_server.address, "auth", model=MODEL, token=TOKEN, batch=X.tolist())
    for case in ("no_token", "wrong_token", "no_token_live"):
        assert got[case]["status"] == "UNAUTHENTICATED", (case, got[case])
        assert "missing or wrong token" in got[case]["message"]
    assert got["right_token_live"] is True
    assert got["right_token"]["model_version"] == "1"


def test_auth_scope_control_guards_only_the_control_plane(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    root = tmp_path / "repo"
    publish(root, lenet_config(MODEL), model_files.lenet_a)
    args = ("--auth-scope", "control", "--auth-token-env", "MY_TOKEN", "--poll-interval-s", "0")
    env = {"MY_TOKEN": TOKEN}
    with (
        running_server(root, *args, log_dir=tmp_path, env=env) as server,
        inference_stub(server.address) as stub,
    ):
        assert stub.ModelInfer(raw_request(MODEL, X), timeout=30).model_version == "1"
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        for call in (
            lambda: stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30),
            lambda: stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=30
            ),
            lambda: stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=30
            ),
        ):
            assert rpc_error(call).code() == Code.UNAUTHENTICATED
        assert stub.ModelInfer(raw_request(MODEL, X), timeout=30).model_version == "1"
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer(TOKEN))
        assert [(m.name, m.state) for m in index.models] == [(MODEL, "READY")]


# -- the CLI client ------------------------------------------------------------------------


def test_headrace_infer_reports_bad_files_and_server_errors_in_one_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    import subprocess
    import sys

    def infer(model: str, array_file: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "headrace", "infer", "--model", model,
             "--input", str(array_file), "--url", server.address],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    not_npy = tmp_path / "not.npy"
    not_npy.write_text("x")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array(["a"], dtype=object), allow_pickle=True)
    good = tmp_path / "good.npy"
    np.save(good, X)
    for model, array_file, message in [
        (MODEL, not_npy, f"{not_npy} is not a numeric .npy array"),
        (MODEL, objects, "Object arrays cannot be loaded"),
        ("ghost", good, "error: NOT_FOUND: model 'ghost' not found"),
    ]:
        done = infer(model, array_file)
        assert done.returncode == 2, (done.returncode, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = infer(MODEL, good)
    assert done.returncode == 0 and "row 0: argmax" in done.stdout, done.stderr


def test_headrace_infer_refuses_integers_it_cannot_send_unchanged(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    """Integer arrays are raw 8-bit pixels. 16-bit or negative values were scaled as if they
    were (garbage in, an answer out), and integers for a model without preprocessing were
    sent unscaled as floats; each is now one line, exit 2. Pixels in 0..255 are still
    preprocessed as the config says."""
    import subprocess
    import sys

    from serving.model_config import PreprocessingSpec

    spec = PreprocessingSpec(mean=[0.1307], std=[0.3081])
    root = tmp_path / "repo"
    publish(root, lenet_config("pixels", preprocessing=spec), model_files.lenet_a)
    publish(root, lenet_config("plain"), model_files.lenet_a)
    pixels = np.random.default_rng(0).integers(0, 256, (1, *LENET_DIMS)).astype(np.uint8)
    cases: list[tuple[str, np.ndarray, str | None]] = [
        ("pixels", pixels.astype(np.uint16) * 4, "raw 8-bit pixels, within 0..255"),
        ("pixels", pixels.astype(np.int64) - 1, "raw 8-bit pixels, within 0..255"),
        ("plain", pixels, "has no preprocessing to turn them into its input"),
        ("pixels", pixels, None),
    ]
    with running_server(root, "--poll-interval-s", "0", log_dir=tmp_path) as server:
        for index, (model, array, message) in enumerate(cases):
            array_file = tmp_path / f"case-{index}.npy"
            np.save(array_file, array)
            done = subprocess.run(
                [sys.executable, "-m", "headrace", "infer", "--model", model,
                 "--input", str(array_file), "--url", server.address, "--json"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if message is None:
                assert done.returncode == 0, done.stderr
                got = np.asarray(json.loads(done.stdout)["outputs"]["logits"], np.float32)
                want = reference(model_files.lenet_a, spec.apply(pixels))
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
                continue
            assert done.returncode == 2, (model, done.returncode, done.stdout, done.stderr)
            assert message in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
