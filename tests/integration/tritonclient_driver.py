"""Runs one scenario against a headrace server with Triton's own client, `tritonclient.grpc`.

Usage: `python tritonclient_driver.py SCENARIO HOST:PORT PARAMS.json` (the scenario's parameters
as a JSON object); prints one JSON object with what it observed. A separate process
because tritonclient's protos and ours both declare `inference.*` and cannot be imported
into one process. Not a test module (no `test_` prefix): the tests in this folder run it.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

Report = dict[str, Any]


def error_of(call: Callable[[], Any]) -> Report:
    """{"status": "NOT_FOUND", "message": ...} for a call that fails; {"status": "OK"} if not."""
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()).removeprefix("StatusCode."), "message": exc.message()}
    return {"status": "OK"}


def fp32_input(array: np.ndarray, name: str = "input") -> triton.InferInput:
    infer_input = triton.InferInput(name, list(array.shape), "FP32")
    infer_input.set_data_from_numpy(array.astype(np.float32))
    return infer_input


def digits_infer(
    client: triton.InferenceServerClient, model: str, array: np.ndarray, **kwargs: Any
) -> triton.InferResult:
    return client.infer(model, [fp32_input(array)], **kwargs)


def result_report(result: triton.InferResult, output: str = "logits") -> Report:
    response = result.get_response()
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "output": result.as_numpy(output).tolist(),
    }


# -- scenarios -----------------------------------------------------------------------------


def protocol(url: str, params: Report) -> Report:
    """Health, metadata, config, and inference with raw and typed contents, unary and streamed."""
    model = params["model"]
    batches = [np.asarray(b, np.float32) for b in params["batches"]]
    client = triton.InferenceServerClient(url)
    report: Report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "model_ready_v1": client.is_model_ready(model, "1"),
        "model_ready_v9": client.is_model_ready(model, "9"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "model_config": client.get_model_config(model, as_json=True)["config"],
        "index": client.get_model_repository_index(as_json=True).get("models", []),
    }

    # raw_input_contents: what InferInput.set_data_from_numpy sends
    logits = triton.InferRequestedOutput("logits")
    first = digits_infer(client, model, batches[0], request_id="raw-1", outputs=[logits])
    report["raw"] = result_report(first)
    report["raw_v1"] = result_report(digits_infer(client, model, batches[0], model_version="1"))

    # typed contents: a ModelInferRequest built from Triton's own messages, read by InferResult
    typed = service_pb2.ModelInferRequest(model_name=model, id="typed-1")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=list(batches[0].shape))
    tensor.contents.fp32_contents.extend(batches[0].reshape(-1).tolist())
    channel = grpc.insecure_channel(url)
    response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(typed, timeout=30)
    channel.close()
    report["typed"] = result_report(triton.InferResult(response))

    # FP32 batches of several sizes, in flight at once (the server may batch them together)
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for i, batch in enumerate(batches):
        client.async_infer(
            model,
            [fp32_input(batch)],
            callback=lambda result, error, i=i: done.put((i, result, error)),
            request_id=f"batch-{i}",
        )
    concurrent: list[Any] = [None] * len(batches)
    for _ in batches:
        i, result, error = done.get(timeout=60)
        concurrent[i] = {"error": str(error)} if error else result_report(result)
    report["concurrent"] = concurrent

    # ModelStreamInfer: every request answered on the stream
    streamed: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: streamed.put((result, error)))
    for i, batch in enumerate(batches):
        client.async_stream_infer(model, [fp32_input(batch)], request_id=f"stream-{i}")
    stream: dict[str, Any] = {}
    for _ in batches:
        result, error = streamed.get(timeout=60)
        if error:
            stream.setdefault("errors", []).append(str(error))
        else:
            stream[result.get_response().id] = result_report(result)
    client.stop_stream()
    report["stream"] = stream

    # the classification extension: the top 3 classes of each row, as "value:index[:label]"
    top3 = triton.InferRequestedOutput("logits", class_count=3)
    for name in (model, params["labelled_model"]):
        result = digits_infer(client, name, batches[1], outputs=[top3])
        classes = result.as_numpy("logits")
        report.setdefault("classification", {})[name] = {
            "datatype": result.get_output("logits").datatype,
            "classes": [[element.decode() for element in row] for row in classes],
        }

    stats = client.get_inference_statistics(model, as_json=True)
    report["statistics"] = stats.get("model_stats", [])
    client.close()
    return report


def stream_flags(url: str, params: Report) -> Report:
    """Triton's stream conventions: each answer marked as its request's final response, errors
    as messages on the stream by default, and as the stream's status with `triton_grpc_error`."""
    model = params["model"]
    x = np.asarray(params["batch"], np.float32)
    client = triton.InferenceServerClient(url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def callback(result: Any, error: Any) -> None:
        answers.put((result, error))

    def seen(result: Any, error: Any) -> Report:
        if error is not None:
            return {"status": str(error.status()), "message": error.message()}
        final = result.get_response().parameters.get("triton_final_response")
        return {"id": result.get_response().id, "final": final is not None and final.bool_param}

    report: Report = {}
    client.start_stream(callback=callback)
    client.async_stream_infer(model, [fp32_input(x)], request_id="good-0")
    client.async_stream_infer(model, [fp32_input(x, "no-such-input")], request_id="bad-1")
    client.async_stream_infer(
        model, [fp32_input(x)], request_id="good-2", enable_empty_final_response=True
    )
    report["default"] = [seen(*answers.get(timeout=60)) for _ in range(3)]
    client.stop_stream()

    client.start_stream(callback=callback, headers={"triton_grpc_error": "true"})
    client.async_stream_infer(model, [fp32_input(x)], request_id="good-0")
    first = seen(*answers.get(timeout=60))
    client.async_stream_infer(model, [fp32_input(x, "no-such-input")], request_id="bad-1")
    error = seen(*answers.get(timeout=60))
    after = error_of(lambda: client.async_stream_infer(model, [fp32_input(x)], request_id="x"))
    report["grpc_error"] = {"first": first, "error": error, "send_after": after}
    client.stop_stream()
    client.close()
    return report


def model_config(url: str, params: Report) -> Report:
    """The model's config as tritonclient reads it."""
    client = triton.InferenceServerClient(url)
    config: Report = client.get_model_config(params["model"], as_json=True)["config"]
    client.close()
    return config


def load_unload(url: str, params: Report) -> Report:
    """Unload a model, see it refused and unlisted as ready, load it again, infer."""
    model = params["model"]
    x = np.asarray(params["batch"], np.float32)
    client = triton.InferenceServerClient(url)

    def state() -> list[Any]:
        index = client.get_model_repository_index(as_json=True)["models"]
        return [entry for entry in index if entry["name"] == model]

    report: Report = {"before": error_of(lambda: digits_infer(client, model, x))}
    client.unload_model(model)
    report["unloaded"] = {
        "ready": client.is_model_ready(model),
        "index": state(),
        "infer": error_of(lambda: digits_infer(client, model, x)),
    }
    client.load_model(model)
    report["loaded"] = {
        "ready": client.is_model_ready(model),
        "index": state(),
        "infer": result_report(digits_infer(client, model, x)),
    }
    config = client.get_model_config(model, as_json=True)["config"]
    config.update(max_batch_size=1, instance_group=[{"kind": "KIND_CPU", "count": 2}])
    client.load_model(model, config=json.dumps(config))  # Triton's load-time override
    overridden = client.get_model_config(model, as_json=True)["config"]
    report["overridden"] = {
        "max_batch_size": overridden["max_batch_size"],
        "instance_group": overridden["instance_group"],
        "infer": error_of(lambda: digits_infer(client, model, x)),
    }
    client.load_model(model)  # without an override: config.json's again
    report["reloaded_max_batch_size"] = client.get_model_config(model, as_json=True)["config"][
        "max_batch_size"
    ]
    report["load_unknown"] = error_of(lambda: client.load_model("no-such-model"))
    report["unload_unknown"] = error_of(lambda: client.unload_model("no-such-model"))
    client.close()
    return report


def reload(url: str, params: Report) -> Report:
    """Clients infer in a loop while the test publishes version 2; stop once every client has
    had `min_new` answers from it (or after `max_s`). Records versions in answer order."""
    model, new_version = params["model"], params["new_version"]
    x = np.asarray(params["batch"], np.float32)
    stop_at = time.monotonic() + params["max_s"]
    lock = threading.Lock()
    report: Report = {"threads": [], "failures": [], "outputs": {}}

    def loop() -> None:
        client = triton.InferenceServerClient(url)
        runs: list[list[Any]] = []  # [[version, count], ...] in answer order
        new = 0
        while new < params["min_new"] and time.monotonic() < stop_at:
            try:
                result = digits_infer(client, model, x, client_timeout=30)
            except InferenceServerException as exc:
                with lock:
                    report["failures"].append(f"{exc.status()}: {exc.message()}")
                continue
            version = result.get_response().model_version
            if runs and runs[-1][0] == version:
                runs[-1][1] += 1
            else:
                runs.append([version, 1])
            new += version == new_version
            with lock:
                report["outputs"].setdefault(version, result.as_numpy("logits").tolist())
        client.close()
        with lock:
            report["threads"].append(runs)

    threads = [threading.Thread(target=loop) for _ in range(params["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report


def errors(url: str, params: Report) -> Report:
    """What tritonclient users see for bad requests; then a good request still works."""
    model = params["model"]
    x = np.asarray(params["batch"], np.float32)
    client = triton.InferenceServerClient(url)

    def wrong_datatype() -> Any:
        infer_input = triton.InferInput("input", list(x.shape), "FP64")
        infer_input.set_data_from_numpy(x.astype(np.float64))
        return client.infer(model, [infer_input])

    def raw_size_mismatch() -> Any:
        infer_input = fp32_input(x)
        infer_input.set_shape([1, 1, 28, 20])  # the raw bytes still hold 28 x 28 values
        return client.infer(model, [infer_input])

    def input_in_shared_memory() -> Any:
        infer_input = triton.InferInput("input", list(x.shape), "FP32")
        infer_input.set_shared_memory("images", x.nbytes)  # no region was ever registered
        return client.infer(model, [infer_input])

    def output_to_shared_memory() -> Any:
        logits = triton.InferRequestedOutput("logits")
        logits.set_shared_memory("logits-region", 40)
        return digits_infer(client, model, x, outputs=[logits])

    # tritonclient never names a repository; Triton refuses a name other than ""
    channel = grpc.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def in_repository(method: str, request: Any) -> Report:
        try:
            getattr(stub, method)(request, timeout=30)
        except grpc.RpcError as exc:
            return {"status": exc.code().name, "message": exc.details()}
        return {"status": "OK"}

    elsewhere = "elsewhere"
    named_repository = {
        "index": in_repository(
            "RepositoryIndex", service_pb2.RepositoryIndexRequest(repository_name=elsewhere)
        ),
        "load": in_repository(
            "RepositoryModelLoad",
            service_pb2.RepositoryModelLoadRequest(repository_name=elsewhere, model_name=model),
        ),
        "unload": in_repository(
            "RepositoryModelUnload",
            service_pb2.RepositoryModelUnloadRequest(
                repository_name=elsewhere, model_name="no-such-model"
            ),
        ),
    }
    channel.close()
    negative_class_count = triton.InferRequestedOutput("logits")
    negative_class_count._output.parameters["classification"].int64_param = -2
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    report = {
        "unknown_model": error_of(lambda: digits_infer(client, "no-such-model", x)),
        "unknown_version": error_of(lambda: digits_infer(client, model, x, model_version="7")),
        "wrong_datatype": error_of(wrong_datatype),
        "wrong_shape": error_of(lambda: digits_infer(client, model, x.reshape(1, 28, 28))),
        "raw_size_mismatch": error_of(raw_size_mismatch),
        "nan": error_of(lambda: digits_infer(client, model, nan)),
        "unknown_model_metadata": error_of(lambda: client.get_model_metadata("no-such-model")),
        "input_in_shared_memory": error_of(input_in_shared_memory),
        "output_to_shared_memory": error_of(output_to_shared_memory),
        "negative_class_count": error_of(
            lambda: digits_infer(client, model, x, outputs=[negative_class_count])
        ),
        "load_with_sequence_batching": error_of(
            lambda: client.load_model(model, config='{"sequence_batching": {}}')
        ),
        "load_with_files": error_of(
            lambda: client.load_model(model, config="{}", files={"file:1/model.onnx": b"x"})
        ),
        "expired_timeout": error_of(lambda: digits_infer(client, model, x, timeout=1)),
        "log_settings": error_of(lambda: client.get_log_settings()),
        "register_shared_memory": error_of(
            lambda: client.register_system_shared_memory("images", "/images", 4096)
        ),
        "output_requested_twice": error_of(
            lambda: digits_infer(
                client,
                model,
                x,
                outputs=[
                    triton.InferRequestedOutput("logits", class_count=3),
                    triton.InferRequestedOutput("logits"),
                ],
            )
        ),
        **{f"{call}_in_named_repository": got for call, got in named_repository.items()},
        # answered as any request: no model here has sequence batching or priority levels
        "in_sequence_with_priority": result_report(
            digits_infer(
                client, model, x, sequence_id=7, sequence_start=True, sequence_end=True, priority=2
            )
        ),
        "in_string_sequence": result_report(
            digits_infer(client, model, x, sequence_id="conversation-7", sequence_start=True)
        ),
        "after": result_report(digits_infer(client, model, x)),
    }
    client.close()
    return report


def auth(url: str, params: Report) -> Report:
    """Calls without a token, with a wrong one and with the right one."""
    model, token = params["model"], params["token"]
    x = np.asarray(params["batch"], np.float32)
    client = triton.InferenceServerClient(url)
    right = {"authorization": f"Bearer {token}"}
    wrong = {"authorization": "Bearer not-the-token"}
    report = {
        "no_token": error_of(lambda: digits_infer(client, model, x)),
        "wrong_token": error_of(lambda: digits_infer(client, model, x, headers=wrong)),
        "no_token_live": error_of(lambda: client.is_server_live()),
        "right_token_live": client.is_server_live(headers=right),
        "right_token": result_report(digits_infer(client, model, x, headers=right)),
    }
    client.close()
    return report


def tls(url: str, params: Report) -> Report:
    """A secure channel trusting the server's self-signed certificate."""
    x = np.asarray(params["batch"], np.float32)
    client = triton.InferenceServerClient(url, ssl=True, root_certificates=params["root_cert"])
    report = {
        "live": client.is_server_live(),
        "infer": result_report(digits_infer(client, params["model"], x)),
    }
    client.close()
    return report


SCENARIOS: dict[str, Callable[[str, Report], Report]] = {
    "protocol": protocol,
    "stream_flags": stream_flags,
    "model_config": model_config,
    "load_unload": load_unload,
    "reload": reload,
    "errors": errors,
    "auth": auth,
    "tls": tls,
}


def main() -> None:
    scenario, url, params_file = sys.argv[1:4]
    with open(params_file) as f:
        params = json.load(f)
    print(json.dumps(SCENARIOS[scenario](url, params)))


if __name__ == "__main__":
    main()
