"""One taken batch of request records -> exactly one outcome per record; no Kafka client here.

Each record is decoded (`streams.codec`), checked against its deadline,
preprocessed when its model's config says how to turn integer pixels into FP32
input (all of the batch's pixels at once, `streams.pixels`), and the survivors
go to the dataplane together (`DataPlane.infer_many`: the gRPC server's
validation, batcher and runner), which merges the requests of one model version
into one batcher submit. Every way a record can fail becomes a DLQ outcome
saying why; nothing here raises for a bad record.

Result timings: `queue_s` is the time from the record's Kafka timestamp to the
start of its batch plus its wait in the dynamic batcher; `preprocess_s` covers
decoding and an equal share of the batch's pixel conversion; `infer_s` is the
model's compute time for the executed batch, whose row count is `batch_size`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from headrace.errors import (
    DeadlineExceeded,
    HeadraceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ResultTooLarge,
)
from serving.grpc_convert import InputLayout, InputsCheck
from serving.types import InferRequest, InferResponse
from streams.codec import (
    MAX_RESULT_BYTES,
    DecodedRequest,
    RecordRejected,
    decode_request,
    dlq_record,
    encode_result,
)
from streams.messages import (
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    MAX_REQUEST_ID_CHARS,
    RecordRef,
    Stage,
    Timings,
)
from streams.pixels import ConfigSource, PixelInput, convert, pixel_inputs
from streams.topics import CATALOGUE, DATA_TOPIC_PREFIX, TOPIC_NAME_RULE, valid_topic_name

log = logging.getLogger(__name__)
JSON_HEADERS = [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())]
VALIDATE_ERRORS = (InvalidInput, ModelNotFound, ModelNotReady)
# Longest record key an outcome takes back when the key is not the request id (4 bytes a
# character of an id at its longest).
MAX_KEY_BYTES = 4 * MAX_REQUEST_ID_CHARS


class InferenceBackend(ConfigSource, Protocol):
    """What the stream needs from `serving.dataplane.DataPlane`: configs and inference."""

    async def infer_many(
        self, requests: Sequence[InferRequest]
    ) -> list[InferResponse | BaseException]: ...


@dataclass(frozen=True)
class SourceRecord:
    """A consumed request record, as the stream saw it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp_s: float | None = None  # the record's Kafka timestamp


@dataclass
class Outcome:
    """The one record produced for a request: a result or a DLQ record."""

    kind: Literal["result", "dlq"]
    topic: str
    key: bytes | None
    value: bytes
    request_id: str | None
    reason: str | None = None  # DLQ reason
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: list(JSON_HEADERS))
    created_at: float | None = None  # when the request was made (its own field, else its record's)


@dataclass
class _Runnable:
    index: int
    decoded: DecodedRequest
    preprocess_s: float


@dataclass(frozen=True)
class Topics:
    """Where outcomes go and which topic a reply must never target."""

    requests: str = "inference-requests"
    results: str = "inference-results"
    dlq: str = "inference-dlq"


async def handle_batch(
    records: Sequence[SourceRecord], backend: InferenceBackend, topics: Topics = Topics()
) -> list[Outcome]:
    """One outcome per record, in the order of `records`."""
    started_wall = time.time()
    outcomes: list[Outcome | None] = [None] * len(records)
    runnable: list[_Runnable] = []
    to_convert: list[PixelInput] = []
    check = _bytes_check(backend)
    for index, record in enumerate(records):
        began = time.perf_counter()
        try:
            decoded, found = _prepare(record, backend, topics, check)
        except _Refused as refused:
            outcomes[index] = _dlq(record, refused.request_id, refused.error, refused.stage, topics)
            continue
        runnable.append(_Runnable(index, decoded, time.perf_counter() - began))
        to_convert.extend(found)
    if to_convert:
        runnable = _convert_pixels(runnable, to_convert, records, outcomes, topics)
    answers = await backend.infer_many([item.decoded.request for item in runnable])
    for item, answer in zip(runnable, answers, strict=True):
        record = records[item.index]
        request_id = item.decoded.request.id
        if isinstance(answer, InferResponse):
            outcomes[item.index] = _result(record, item, answer, started_wall, topics)
        elif isinstance(answer, HeadraceError):
            stage: Stage = "validate" if isinstance(answer, VALIDATE_ERRORS) else "infer"
            outcomes[item.index] = _dlq(record, request_id, answer, stage, topics)
        else:  # a bug or a cancelled batcher: still exactly one outcome
            log.error("request %s failed in the model: %r", request_id, answer)
            error = HeadraceError(
                f"internal error while running the model ({type(answer).__name__})"
            )
            outcomes[item.index] = _dlq(record, request_id, error, "infer", topics)
    missing = [i for i, outcome in enumerate(outcomes) if outcome is None]
    assert not missing, f"records without an outcome: {missing}"  # one outcome per record
    return [outcome for outcome in outcomes if outcome is not None]


class _Refused(Exception):
    def __init__(self, error: HeadraceError, stage: Stage, request_id: str | None) -> None:
        super().__init__(error.message)
        self.error, self.stage, self.request_id = error, stage, request_id


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", "replace") if key else None


def _bytes_check(models: ConfigSource) -> InputsCheck:
    """What a binary record's inputs go through before their data is decoded: a BYTES input
    its model does not take as BYTES is refused there, as the dataplane would refuse it
    after decoding, which builds an object per element (64 records of 4 MiB held 2.5 GB).
    Other inputs are checked after preprocessing (integer pixels may feed an FP32 input)."""

    def check(model: str, version: str, inputs: list[InputLayout]) -> None:
        if not any(tensor.datatype == "BYTES" for tensor in inputs):
            return
        try:
            config = models.model_config(model, version)
        except HeadraceError as exc:
            raise RecordRejected(exc.message, exc.reason, "validate") from None
        takes = {spec.name: spec.datatype for spec in config.inputs}
        for tensor in inputs:
            expected = takes.get(tensor.name)
            if tensor.datatype != "BYTES" or expected == "BYTES":
                continue
            message = (
                f"unknown input {tensor.name!r} for model {config.name!r}; it expects "
                f"{sorted(takes)}"
                if expected is None
                else f"input {tensor.name!r}: expected datatype {expected}, got BYTES"
            )
            raise RecordRejected(message, InvalidInput.reason, "validate")

    return check


def _prepare(
    record: SourceRecord, backend: InferenceBackend, topics: Topics, check: InputsCheck
) -> tuple[DecodedRequest, list[PixelInput]]:
    """Decode, check the deadline and reply topic, find the pixels to convert; `_Refused`
    says why not."""
    try:
        decoded = decode_request(record.key, record.value, record.headers, check)
    except RecordRejected as exc:
        raise _Refused(exc, exc.stage, _key_text(record.key)) from None
    except Exception as exc:  # never let one record take the worker down
        log.exception(
            "decoding record %s-%d@%d failed", record.topic, record.partition, record.offset
        )
        error = HeadraceError(f"the record could not be decoded ({type(exc).__name__})")
        raise _Refused(error, "decode", _key_text(record.key)) from None
    request = decoded.request
    if decoded.reply_to is not None:
        problem = reply_topic_problem(decoded.reply_to, topics)
        if problem:
            error = InvalidInput(f"reply_to {decoded.reply_to!r} {problem}")
            raise _Refused(error, "validate", request.id)
    if decoded.deadline_unix is not None:
        remaining_s = decoded.deadline_unix - time.time()
        if remaining_s <= 0:
            error = DeadlineExceeded(
                f"the request's deadline passed {-remaining_s:.3f} s before it could run; "
                "send it again with a later deadline"
            )
            raise _Refused(error, "validate", request.id)
        request.deadline = time.monotonic() + remaining_s
    try:
        return decoded, pixel_inputs(request, backend)
    except HeadraceError as exc:
        raise _Refused(exc, "preprocess", request.id) from None
    except Exception as exc:
        log.exception("preprocessing request %s failed", request.id)
        raise _Refused(_unpreprocessable(exc), "preprocess", request.id) from None


def reply_topic_problem(name: str, topics: Topics) -> str | None:
    """Why `name` cannot take a request's result, or None: it must be a valid Kafka topic
    name, and neither a topic headrace reads or keeps for itself nor one of Kafka's own."""
    if not valid_topic_name(name):
        return f"is not a valid topic name; use {TOPIC_NAME_RULE}"
    catalogue = {spec.name for spec in CATALOGUE}
    own = ({topics.requests, topics.dlq} | catalogue) - {topics.results}
    if name in own or name.startswith(DATA_TOPIC_PREFIX) or name.startswith("__"):
        return (
            "is a topic of headrace's or Kafka's own; name a topic of yours, or leave reply_to "
            f"out to get the result on {topics.results!r}"
        )
    return None


def _unpreprocessable(exc: Exception) -> InvalidInput:
    return InvalidInput(f"the input could not be preprocessed ({type(exc).__name__})")


def _convert_pixels(
    runnable: list[_Runnable],
    to_convert: list[PixelInput],
    records: Sequence[SourceRecord],
    outcomes: list[Outcome | None],
    topics: Topics,
) -> list[_Runnable]:
    """Convert the batch's pixel inputs together; the runnable requests left. Each request
    with pixels is charged an equal share of the conversion time."""
    began = time.perf_counter()
    failed = {id(item.request): exc for item, exc in convert(to_convert)}
    converted = {id(item.request) for item in to_convert}
    share_s = (time.perf_counter() - began) / len(converted)
    left = []
    for item in runnable:
        request = item.decoded.request
        if id(request) in converted:
            item.preprocess_s += share_s
        exc = failed.get(id(request))
        if exc is None:
            left.append(item)
            continue
        log.error("preprocessing request %s failed: %r", request.id, exc)
        error = _unpreprocessable(exc)
        outcomes[item.index] = _dlq(records[item.index], request.id, error, "preprocess", topics)
    return left


def _source(record: SourceRecord) -> RecordRef:
    return RecordRef(topic=record.topic, partition=record.partition, offset=record.offset)


def _dlq(
    record: SourceRecord,
    request_id: str | None,
    error: HeadraceError,
    stage: Stage,
    topics: Topics,
) -> Outcome:
    request_id = _usable_id(request_id)
    value = dlq_record(request_id, error, stage, record.value, _source(record))
    key = _outcome_key(record, request_id)
    return Outcome("dlq", topics.dlq, key, value, request_id, reason=error.reason)


def _result(
    record: SourceRecord,
    item: _Runnable,
    response: InferResponse,
    started_wall: float,
    topics: Topics,
) -> Outcome:
    waited_s = max(0.0, started_wall - record.timestamp_s) if record.timestamp_s else 0.0
    timings = Timings(
        queue_s=waited_s + response.timings.queue_s,
        preprocess_s=item.preprocess_s,
        infer_s=response.timings.compute_s,
        batch_size=response.timings.batch_size,
    )
    request_id = item.decoded.request.id
    value = encode_result(response, request_id, timings, item.decoded.created_at)
    if len(value) > MAX_RESULT_BYTES:
        error = ResultTooLarge(
            f"the result is {len(value)} bytes, above the {MAX_RESULT_BYTES}-byte limit of a "
            "result record; send fewer rows per request, or ask only for the outputs you need"
        )
        return _dlq(record, request_id, error, "produce", topics)
    topic = item.decoded.reply_to or topics.results
    created_at = item.decoded.created_at or record.timestamp_s
    key = _outcome_key(record, request_id)
    return Outcome("result", topic, key, value, request_id, created_at=created_at)


def _outcome_key(record: SourceRecord, request_id: str | None) -> bytes | None:
    """An outcome's key: the request's own key bytes when its id came from them (so a key
    that is not UTF-8 comes back as sent), else the id; no key when neither is usable as
    one (a key of megabytes would make the outcome too large to produce: the outcome's
    `source` still names the record)."""
    usable = _usable_id(request_id)
    if record.key is not None and _key_text(record.key) == usable:
        return record.key
    if usable:
        return usable.encode()
    return record.key if record.key is not None and len(record.key) <= MAX_KEY_BYTES else None


def _usable_id(request_id: str | None) -> str | None:
    """`request_id`, or None when it is too long to be one (it came from a record key)."""
    return request_id if request_id and len(request_id) <= MAX_REQUEST_ID_CHARS else None
