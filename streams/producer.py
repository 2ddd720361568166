"""Produce inference requests from a dataset's real samples (what `headrace produce` does).

Each sample becomes one request keyed by its `request_id`, as OIP JSON (UINT8
pixels, preprocessed by the stream worker as the model's config says) or as a
binary `ModelInferRequest`. A manifest of request ids and true labels lets
`headrace results` report accuracy.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from headrace.errors import ConfigError
from protos import grpc_service_pb2 as pb
from streams.messages import (
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    InferenceRequestMessage,
    TensorJSON,
)

PayloadFormat = Literal["json", "binary"]
INPUT_NAME = "input"


def encode_sample(
    request_id: str, model: str, pixels: np.ndarray, payload_format: PayloadFormat
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One uint8 image (C, H, W) as a request record value and its headers."""
    batch = pixels[np.newaxis]
    if payload_format == "binary":
        message = pb.ModelInferRequest(model_name=model, id=request_id)
        message.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=batch.shape)
        message.raw_input_contents.append(np.ascontiguousarray(batch).tobytes())
        return message.SerializeToString(), [(CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE.encode())]
    request = InferenceRequestMessage(
        request_id=request_id,
        model=model,
        inputs=[
            TensorJSON(
                name=INPUT_NAME,
                datatype="UINT8",
                shape=list(batch.shape),
                data=batch.reshape(-1).tolist(),
            )
        ],
    )
    return request.model_dump_json().encode(), [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())]


def samples(images: np.ndarray, labels: np.ndarray, n: int) -> Iterator[tuple[np.ndarray, int]]:
    """`n` samples, cycling through the images when `n` exceeds them."""
    for i in range(n):
        j = i % len(images)
        yield images[j], int(labels[j])


def produce_requests(
    bootstrap: str,
    topic: str,
    model: str,
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    payload_format: PayloadFormat = "json",
    rate_per_s: float | None = None,
    manifest: Path | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> float:
    """Produce `n` requests (acks=all) and wait for every acknowledgement; returns seconds."""
    from kafka import KafkaProducer

    with contextlib.ExitStack() as stack:
        lines = _open_manifest(manifest)  # before anything is sent: a bad path fails at once
        if lines is not None:  # closed last: it keeps the ids of what was sent before a failure
            stack.enter_context(lines)
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024
        )
        stack.callback(producer.close)
        prefix = uuid.uuid4().hex[:8]
        started = time.perf_counter()
        futures = []
        for i, (pixels, label) in enumerate(samples(images, labels, n)):
            if rate_per_s:
                delay = started + i / rate_per_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            request_id = f"{prefix}-{i:07d}"
            value, headers = encode_sample(request_id, model, pixels, payload_format)
            futures.append(
                producer.send(topic, key=request_id.encode(), value=value, headers=headers)
            )
            if lines is not None:
                lines.write(json.dumps({"request_id": request_id, "label": label}) + "\n")
            if on_sent is not None:
                on_sent(1)
        producer.flush()
        for future in futures:
            future.get(timeout=60)
    return time.perf_counter() - started


def _open_manifest(manifest: Path | None) -> TextIO | None:
    if manifest is None:
        return None
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        return manifest.open("w")
    except OSError as exc:
        raise ConfigError(f"cannot write the manifest {manifest}: {exc.strerror or exc}") from None
