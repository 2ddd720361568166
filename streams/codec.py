"""Kafka records <-> inference requests, results and DLQ records; no consumer or producer here.

A request record's value is either OIP JSON (`InferenceRequestMessage`, the
default) or a binary OIP `ModelInferRequest`, told apart by the
`content-type` header. The record key is the `request_id`; a binary payload
carries the model in `model_name` and the id in the key (or its `id` field).
Every way a record can be unusable raises `RecordRejected` with the DLQ reason
and the stage, so the agent can write exactly one DLQ record for it.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from pydantic import ValidationError

from headrace.errors import HeadraceError, InvalidInput
from protos import grpc_service_pb2 as pb
from serving.grpc_convert import InputsCheck, request_from_proto
from serving.json_convert import request_from_json, tensor_to_json
from serving.types import InferRequest, InferResponse
from streams.messages import (
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    MAX_REQUEST_ID_CHARS,
    DLQRecord,
    InferenceRequestMessage,
    InferenceResultMessage,
    RecordRef,
    Stage,
    Timings,
)

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
DLQ_PAYLOAD_BYTES = 64 * 1024  # larger originals are referenced by topic/partition/offset
# Largest result value: Faust's producer sends at most 1,000,000 bytes per request and Kafka's
# brokers take 1,048,588 per record batch by default; the rest is room for key and headers.
MAX_RESULT_BYTES = 960_000
# Longest error message a DLQ record carries: messages quote what the request said (a model
# name, a version, a reply topic), and a record may be megabytes long; cut, the DLQ record
# stays far below the size a producer sends (1,000,000 bytes), so the outcome is produced.
MAX_DLQ_MESSAGE_CHARS = 4096
Headers = Sequence[tuple[str, bytes]]
FLAT_TENSORS = (
    "send each tensor's data as a flat list, as the Open Inference Protocol's JSON form does"
)


class RecordRejected(HeadraceError):
    """A record that cannot become a request; `reason` and `stage` go into its DLQ record."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, reason: str = "invalid_input", stage: Stage = "decode"):
        super().__init__(message)
        self.reason = reason
        self.stage = stage

    def __reduce__(self) -> tuple[type[RecordRejected], tuple[str, str, Stage]]:  # type: ignore[override]
        return (type(self), (self.message, self.reason, self.stage))


@dataclass
class DecodedRequest:
    """A usable request and what its result needs: where to send it and when it was made."""

    request: InferRequest
    reply_to: str | None
    created_at: float | None
    deadline_unix: float | None


def header(headers: Headers | None, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value.decode("utf-8", "replace")
    return None


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def decode_request(
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    check_inputs: InputsCheck | None = None,
) -> DecodedRequest:
    """A request record -> `DecodedRequest`, or `RecordRejected` saying why not.
    `check_inputs` sees a binary request's inputs before their data is decoded (see
    `request_from_proto`)."""
    if value is None:
        raise RecordRejected("a tombstone (null value) is not a request", "tombstone")
    if len(value) > MAX_PAYLOAD_BYTES:
        raise RecordRejected(
            f"payload of {len(value)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit; "
            "send fewer rows per request",
            "payload_too_large",
        )
    content_type = (header(headers, CONTENT_TYPE_HEADER) or JSON_CONTENT_TYPE).lower()
    if content_type.startswith("application/x-protobuf"):
        return _decode_protobuf(key, value, check_inputs)
    if not content_type.startswith("application/json"):
        raise RecordRejected(
            f"unsupported content-type {content_type!r}", "unsupported_content_type"
        )
    try:
        return _decode_json(key, value)
    except RecursionError:  # flattening nested data: the record's fault
        raise RecordRejected(
            f"the JSON value nests too deeply to be read; {FLAT_TENSORS}", "invalid_schema"
        ) from None


def _decode_json(key: bytes | None, value: bytes) -> DecodedRequest:
    try:  # fast path: pydantic parses and validates the bytes in one pass (2.5x json.loads)
        message = InferenceRequestMessage.model_validate_json(value)
    except ValidationError:  # anything unusual takes the path that explains what is wrong
        message = _validate_json_slowly(key, value)
    try:
        request = request_from_json(_request_body(message), message.model, message.version or "")
    except InvalidInput as exc:
        raise RecordRejected(exc.message, "invalid_input") from None
    request.id = message.request_id
    return DecodedRequest(request, message.reply_to, message.created_at, message.deadline)


def _request_body(message: InferenceRequestMessage) -> dict[str, Any]:
    """What `request_from_json` reads of the message, without `model_dump` copying every value."""
    return {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "data": t.data,
                "parameters": t.parameters,
            }
            for t in message.inputs
        ],
        "outputs": [{"name": o.name, "parameters": o.parameters} for o in message.outputs],
        "parameters": message.parameters,
    }


def load_json(value: bytes, flat: str) -> Any:
    """A record's JSON value, or `RecordRejected` saying why it cannot be read: not JSON
    (`not_json`), or JSON no schema of ours takes that Python cannot even read
    (`invalid_schema`): nested too deeply (RecursionError) or a number of more digits than
    int() reads (ValueError). Both are the record's fault, never the worker's: they must not
    escape a batch. `flat` says how to send the data instead."""
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordRejected(f"value is not JSON: {exc}", "not_json") from None
    except RecursionError:
        raise RecordRejected(
            f"the JSON value nests too deeply to be read; {flat}", "invalid_schema"
        ) from None
    except ValueError:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise RecordRejected(
            f"the JSON value holds a number of more than {sys.get_int_max_str_digits():,} digits, "
            "which no field takes",
            "invalid_schema",
        ) from None


def _validate_json_slowly(key: bytes | None, value: bytes) -> InferenceRequestMessage:
    """JSON -> message, the record key standing in for a missing request_id; or why not."""
    body = load_json(value, FLAT_TENSORS)
    if isinstance(body, dict) and "request_id" not in body:  # the key, else OIP's own id
        fallback = _text(key) if key else body.get("id")
        if fallback:
            body["request_id"] = fallback
    try:
        message = InferenceRequestMessage.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        reason = "missing_request_id" if _lacks_request_id(exc) else "invalid_schema"
        raise RecordRejected(f"request does not match the schema: {problems}", reason) from None
    return message


def _lacks_request_id(exc: ValidationError) -> bool:
    return any(e["loc"] == ("request_id",) and e["type"] == "missing" for e in exc.errors())


def _decode_protobuf(
    key: bytes | None, value: bytes, check_inputs: InputsCheck | None
) -> DecodedRequest:
    try:
        message = pb.ModelInferRequest.FromString(value)
    except DecodeError as exc:
        raise RecordRejected(f"value is not a ModelInferRequest: {exc}", "not_protobuf") from None
    request_id = _text(key) or message.id
    if not request_id:
        raise RecordRejected(
            "a binary request needs a record key (its request_id)", "missing_request_id"
        )
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RecordRejected(
            f"the request id (the record key, else the ModelInferRequest's id) has "
            f"{len(request_id)} characters, more than {MAX_REQUEST_ID_CHARS}; use a shorter id",
            "invalid_schema",
        )
    if not message.model_name:
        raise RecordRejected("the ModelInferRequest has no model_name", "invalid_schema")
    try:
        request = request_from_proto(message, check_inputs=check_inputs)
    except InvalidInput as exc:
        raise RecordRejected(exc.message, "invalid_input") from None
    request.id = request_id
    return DecodedRequest(request, None, None, None)


def encode_result(
    response: InferResponse, request_id: str, timings: Timings, created_at: float | None
) -> bytes:
    """The JSON value of a result record (validated in one pass, outputs included)."""
    message = InferenceResultMessage.model_validate(
        {
            "request_id": request_id,
            "model": response.model_name,
            "model_version": response.model_version,
            "outputs": [tensor_to_json(tensor) for tensor in response.outputs],
            "timings": timings,
            "request_created_at": created_at,
        }
    )
    return InferenceResultMessage.__pydantic_serializer__.to_json(message)  # bytes at once


def dlq_record(
    request_id: str | None,
    error: HeadraceError,
    stage: Stage,
    value: bytes | None,
    source: RecordRef | None,
    attempt: int = 1,
) -> bytes:
    """The JSON value of a DLQ record; small originals are kept, large ones referenced. A
    request id too long to be one (`MAX_REQUEST_ID_CHARS`) is left out, and the message is
    cut at `MAX_DLQ_MESSAGE_CHARS`: both may quote the record, and the DLQ record must fit
    in one produce request whatever the record held."""
    if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
        request_id = None
    message = error.message
    if len(message) > MAX_DLQ_MESSAGE_CHARS:
        cut = len(message) - MAX_DLQ_MESSAGE_CHARS
        message = f"{message[:MAX_DLQ_MESSAGE_CHARS]}... ({cut} more characters cut)"
    payload = encoding = None
    if value is not None and len(value) <= DLQ_PAYLOAD_BYTES:
        try:
            payload, encoding = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(value).decode(), "base64"
    record = DLQRecord(
        request_id=request_id,
        error_code=error.reason,
        message=message,
        stage=stage,
        attempt=attempt,
        payload=payload,
        payload_encoding=encoding,  # type: ignore[arg-type]
        source=source,
        failed_at=time.time(),
    )
    return record.model_dump_json().encode()
