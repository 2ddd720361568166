"""Schemas of the inference messages on Kafka, versioned, as pydantic models.

A request is an Open Inference Protocol JSON body (its REST form) plus the
fields a stream needs: `request_id` (also the record key), `model`, optional
`version`, `reply_to` and `deadline`. A binary OIP protobuf payload
(`ModelInferRequest`) is accepted too, told apart by the record's
`content-type` header. Every request gets exactly one outcome: a result or a
DLQ record saying why.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

SCHEMA_VERSION = 1
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf; messageType=inference.ModelInferRequest"
# Longest request id (JSON `request_id`, or a binary request's key or `id`): it goes back in
# the outcome's key and value, which must fit one Kafka record.
MAX_REQUEST_ID_CHARS = 256

Stage = Literal["decode", "validate", "preprocess", "infer", "produce"]


class TensorJSON(BaseModel):
    """An OIP JSON tensor: flat row-major `data`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    datatype: str
    shape: list[StrictInt]
    data: list[Any]
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestedOutput(BaseModel):
    """An output the client wants back; `parameters` as in OIP, e.g. {"classification": 3}
    for the top 3 classes."""

    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequestMessage(BaseModel):
    """A record on `inference-requests` (JSON form)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    id: str | None = Field(  # read, never written: workers that predate it refuse it
        default=None,
        exclude=True,
        description="OIP's request id: the request_id when it and the key are absent.",
    )
    model: str = Field(min_length=1)
    version: str | None = None
    inputs: list[TensorJSON] = Field(min_length=1)
    outputs: list[RequestedOutput] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    reply_to: str | None = Field(
        default=None, description="Topic for the result, if not the default."
    )
    deadline: float | None = Field(
        default=None, allow_inf_nan=False, description="Unix time after which not to run it."
    )
    created_at: float = Field(
        default_factory=time.time, allow_inf_nan=False, description="Unix time the client sent it."
    )


class Timings(BaseModel):
    queue_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0
    batch_size: int = 0


class InferenceResultMessage(BaseModel):
    """A record on `inference-results` (or the request's `reply_to`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    request_id: str
    model: str
    model_version: str
    outputs: list[TensorJSON]
    timings: Timings = Field(default_factory=Timings)
    request_created_at: float | None = None
    produced_at: float = Field(default_factory=time.time)


class RecordRef(BaseModel):
    """Where an original record lives."""

    topic: str
    partition: int
    offset: int


class DLQRecord(BaseModel):
    """A record on `inference-dlq`: the request that got no result, and why."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    request_id: str | None = Field(description="None when the record had no usable id.")
    error_code: str = Field(description="Machine-readable reason, e.g. invalid_input.")
    message: str = Field(description="What was wrong and what to do.")
    stage: Stage
    attempt: int = Field(default=1, ge=1)
    payload: str | None = Field(
        default=None, description="The original value (base64 if binary) when small enough."
    )
    payload_encoding: Literal["utf-8", "base64"] | None = None
    source: RecordRef | None = Field(default=None, description="The original record's position.")
    failed_at: float = Field(default_factory=time.time)
