"""InitProducerId v3 for aiokafka, so idempotent and transactional producers start on Tansu.

aiokafka 0.14 only knows version 0 of InitProducerId (the request a producer
sends to get its producer id and epoch). The embedded broker (Tansu) answers
versions 0-2 with error -1, UNKNOWN_SERVER_ERROR, for any transactional id
(None included), and answers version 3 and later; so on Tansu every aiokafka
producer with `enable_idempotence=True` or a `transactional_id` -- Faust's
producers under `processing_guarantee="exactly_once"` -- fails to start.
kafka-python, which sends version 4, does not.

`install()` teaches aiokafka's sender version 3 (flexible encoding, plus the
producer id and epoch fields, sent as -1 = "none yet", which is what a fresh
producer means by versions 0-2 as well). aiokafka picks the highest version
both sides support, so a broker without version 3 (Kafka < 2.5) still gets
version 0. The change is made when `install()` is called, never at import.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
AIOKAFKA_BUILDER = aiokafka_sender.InitProducerIdRequest  # aiokafka's own (version 0 only)


class InitProducerIdResponseV3(Response):
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequestV3(RequestStruct):
    FLEXIBLE_VERSION: ClassVar[bool] = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest(Request[InitProducerIdRequest_v0 | InitProducerIdRequestV3]):
    """Drop-in for aiokafka's builder of the same name: versions 0 and 3."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class is InitProducerIdRequestV3:
            return InitProducerIdRequestV3(
                self.transactional_id,
                self.transaction_timeout_ms,
                NO_PRODUCER_ID,
                NO_PRODUCER_EPOCH,
                {},
            )
        return InitProducerIdRequest_v0(self.transactional_id, self.transaction_timeout_ms)


def install() -> None:
    """Make aiokafka's producers send InitProducerId v3 where the broker supports it."""
    aiokafka_sender.InitProducerIdRequest = InitProducerIdRequest


def uninstall() -> None:
    """Back to aiokafka's own version-0 request (tests use it to show the difference)."""
    aiokafka_sender.InitProducerIdRequest = AIOKAFKA_BUILDER


def installed() -> bool:
    return aiokafka_sender.InitProducerIdRequest is InitProducerIdRequest
