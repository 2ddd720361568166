"""Schemas of the training-data messages on Kafka, versioned, and the record validation.

A record on `data-<dataset>` (`DataRecordMessage`, JSON, keyed by its
`record_id`) carries one labelled image as an OIP-style tensor: `datatype`
"UINT8", `shape` [C, H, W] and either the flat row-major `data` list (the Open
Inference Protocol's JSON form) or, more compactly, `b64`: the same C*H*W bytes
in base64 (about 1.3 bytes per pixel instead of up to 4). Example:

    {"schema_version": 1, "record_id": "digits-000001", "label": 3,
     "image": {"datatype": "UINT8", "shape": [1, 28, 28], "data": [0, 0, ...]},
     "source": "scanner-7"}

`decode_data_record` checks a record against its dataset's `DatasetSchema`
(shape, pixel range, label range); every way it can be unusable raises
`RecordRejected` with the reason and stage that go into its DLQ record
(`streams.messages.DLQRecord` on `data-dlq`, with the record id in
`request_id`). `ClassCounts` is the value of the ingestion worker's Faust
table: the class balance of one partition's ingested records.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from streams.codec import RecordRejected, load_json
from training.datasets.schema import DatasetSchema

SCHEMA_VERSION = 1
DATA_DLQ_TOPIC = "data-dlq"
MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_RECORD_ID_CHARS = 256
# DLQ reasons (error_code) of refused records
NOT_JSON, INVALID_SCHEMA, TOMBSTONE, TOO_LARGE = (
    "not_json",
    "invalid_schema",
    "tombstone",
    "payload_too_large",
)
WRONG_SHAPE, PIXEL_RANGE, LABEL_RANGE = "wrong_shape", "pixel_out_of_range", "label_out_of_range"


class ImageTensor(BaseModel):
    """One image: UINT8, shape [C, H, W], as a flat `data` list or base64 `b64` bytes."""

    model_config = ConfigDict(extra="forbid")

    datatype: Literal["UINT8"]
    shape: list[StrictInt] = Field(min_length=3, max_length=3, description="[C, H, W]")
    data: list[StrictInt] | None = Field(default=None, description="Flat row-major pixels.")
    b64: str | None = Field(default=None, description="The C*H*W pixel bytes in base64.")

    @model_validator(mode="after")
    def _one_form(self) -> ImageTensor:
        if (self.data is None) == (self.b64 is None):
            raise ValueError("give the pixels as exactly one of `data` or `b64`")
        return self


class DataRecordMessage(BaseModel):
    """A record on `data-<dataset>`: one labelled image."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    record_id: str = Field(
        min_length=1, max_length=MAX_RECORD_ID_CHARS, description="Also the record key."
    )
    label: StrictInt = Field(description="Class index into the dataset's classes.")
    image: ImageTensor
    source: str | None = Field(default=None, max_length=1024, description="Where it came from.")
    created_at: float = Field(default_factory=time.time, description="Unix time it was made.")


@dataclass(frozen=True)
class ValidRecord:
    """A record that fits its dataset: uint8 pixels of the schema's shape and a label in range."""

    record_id: str
    label: int
    image: np.ndarray


def encode_data_record(
    record_id: str,
    label: int,
    image: np.ndarray,
    source: str | None = None,
    compact: bool = False,
) -> bytes:
    """The JSON value of a record for one uint8 (C, H, W) image."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    tensor = ImageTensor(
        datatype="UINT8",
        shape=list(pixels.shape),
        data=None if compact else pixels.reshape(-1).tolist(),
        b64=base64.b64encode(pixels.tobytes()).decode() if compact else None,
    )
    message = DataRecordMessage(record_id=record_id, label=label, image=tensor, source=source)
    return message.model_dump_json(exclude_none=True).encode()


def decode_data_record(value: bytes | None, schema: DatasetSchema) -> ValidRecord:
    """A record value -> `ValidRecord`, or `RecordRejected` saying what is wrong and how."""
    if value is None:
        raise RecordRejected("a tombstone (null value) is not a data record", TOMBSTONE)
    if len(value) > MAX_RECORD_BYTES:
        raise RecordRejected(
            f"record of {len(value)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit", TOO_LARGE
        )
    message = _parse(value)
    image = _pixels(message.image, schema)
    if not 0 <= message.label < schema.num_classes:
        raise RecordRejected(
            f"label {message.label} is outside 0..{schema.num_classes - 1} "
            f"({schema.name} has {schema.num_classes} classes)",
            LABEL_RANGE,
            "validate",
        )
    return ValidRecord(message.record_id, message.label, image)


def _parse(value: bytes) -> DataRecordMessage:
    try:  # one pass over the bytes; anything unusual takes the path that explains it
        return DataRecordMessage.model_validate_json(value)
    except ValidationError:
        pass
    body = load_json(value, "send the image's pixels as one flat list (or b64)")
    try:
        return DataRecordMessage.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in errors[:3]
        ]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise RecordRejected(
            "record does not match the data record schema (streams/data_messages.py): "
            + "; ".join(problems)
            + more,
            INVALID_SCHEMA,
        ) from None


def _pixels(tensor: ImageTensor, schema: DatasetSchema) -> np.ndarray:
    """The tensor as uint8 (C, H, W) of the schema's shape; wrong shape or range refused."""
    expected = list(schema.shape)
    if tensor.shape != expected:
        raise RecordRejected(
            f"image shape {tensor.shape} does not match {schema.name}'s {expected} ([C, H, W])",
            WRONG_SHAPE,
            "validate",
        )
    if tensor.b64 is not None:
        try:
            raw = base64.b64decode(tensor.b64, validate=True)
        except (binascii.Error, ValueError):
            raise RecordRejected("image.b64 is not valid base64", INVALID_SCHEMA) from None
        flat = np.frombuffer(raw, dtype=np.uint8)
    else:
        assert tensor.data is not None  # one form is present (ImageTensor checks it)
        values = tensor.data
        bad = next((i for i, v in enumerate(values) if not 0 <= v <= 255), None)
        if bad is not None:
            raise RecordRejected(
                f"pixel {bad} is {values[bad]}: UINT8 pixels must be within 0..255",
                PIXEL_RANGE,
                "validate",
            )
        flat = np.asarray(values, dtype=np.uint8)
    if flat.size != schema.pixels:
        raise RecordRejected(
            f"image has {flat.size} pixel values but shape {expected} needs {schema.pixels}",
            WRONG_SHAPE,
            "validate",
        )
    return flat.reshape(schema.shape)


def counts_key(dataset: str, partition: int) -> bytes:
    """The class-counts table key of one partition of a dataset's topic."""
    return f"{dataset}:p{partition}".encode()


class ClassCounts(BaseModel):
    """Class-counts table value: the class balance of one partition's ingested records."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    dataset: str
    partition: int = Field(ge=0)
    counts: list[int] = Field(description="Records per label, indexed by label.")
    records: int = Field(ge=0, description="Valid records in the shards (de-duplicated).")
    next_offset: int = Field(ge=0, description="Shards cover the partition up to here.")
    updated_at: float = Field(default_factory=time.time)
