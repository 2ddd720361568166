"""Does the broker really support Kafka transactions? The check an exactly-once worker makes first.

`headrace stream worker --processing-guarantee exactly_once` relies on two
things from the broker, and this probe tries both with the client the worker
uses (aiokafka, with `streams.init_producer_id` installed):

1. a transactional producer starts (InitProducerId), produces a record to
   `PROBE_TOPIC` and aborts that transaction, then produces a second record
   and commits;
2. a `read_committed` consumer that reads the partition from the aborted
   record's offset is handed the committed record and never the aborted one.

Seen on the embedded broker (Tansu 0.6): step 1 passes (with InitProducerId
v3) but step 2 fails -- Tansu hands records of aborted transactions to
read_committed consumers -- so outcomes of a batch cut off by a crash would
still reach readers and exactly-once would not hold. Apache Kafka passes both.
The probe takes well under a second on a healthy broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable

from pydantic import BaseModel, Field

from headrace.errors import HeadraceError, TransactionsUnsupported
from streams import init_producer_id
from streams.broker import is_embedded
from streams.topics import DAY_MS, TopicRefused, TopicSpec, create_topics

PROBE_TOPIC = TopicSpec(
    name="headrace-transactions-probe",
    partitions=1,
    retention_ms=DAY_MS,
    description="Two records per exactly-once worker start: one aborted, one committed.",
)
PROBE_TIMEOUT_S = 15.0


class TransactionProbe(BaseModel):
    """The verdict on one broker."""

    supported: bool = Field(description="Both steps passed: exactly-once can hold.")
    producer_started: bool = Field(description="A transactional producer initialised.")
    aborted_hidden: bool | None = Field(
        default=None,
        description="A read_committed consumer was not handed the aborted record "
        "(None: not reached).",
    )
    detail: str = Field(description="What happened, for the error message.")


async def probe_transactions(
    bootstrap: str, timeout_s: float = PROBE_TIMEOUT_S
) -> TransactionProbe:
    """Run both steps of the module docstring against `bootstrap`; never raises for a broker
    that fails them. A broker that refuses to create `PROBE_TOPIC`, or cannot be reached to
    create it, raises a `HeadraceError` saying so (`create_probe_topic`)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    init_producer_id.install()
    create_probe_topic(bootstrap)
    token = uuid.uuid4().hex[:12]
    aborted_value, committed_value = f"aborted-{token}".encode(), f"committed-{token}".encode()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"headrace-transactions-probe-{token}",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except Exception as exc:  # TimeoutError included
        await _quietly(producer.stop())
        return TransactionProbe(
            supported=False,
            producer_started=False,
            detail=f"did not start a transactional producer (InitProducerId: {_describe(exc)})",
        )
    try:
        async with asyncio.timeout(timeout_s):
            await producer.begin_transaction()
            aborted = await producer.send_and_wait(PROBE_TOPIC.name, aborted_value, partition=0)
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(PROBE_TOPIC.name, committed_value, partition=0)
    except Exception as exc:  # TimeoutError included
        return TransactionProbe(
            supported=False,
            producer_started=True,
            detail=f"failed a transaction ({_describe(exc)})",
        )
    finally:
        await _quietly(producer.stop())

    partition = TopicPartition(PROBE_TOPIC.name, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=100,
    )
    seen: list[bytes] = []
    try:
        await consumer.start()
        consumer.assign([partition])
        consumer.seek(partition, aborted.offset)
        async with asyncio.timeout(timeout_s):
            while committed_value not in seen:
                batch = await consumer.getmany(partition, timeout_ms=200)
                seen.extend(record.value or b"" for record in batch.get(partition, ()))
    except Exception as exc:  # TimeoutError included
        if committed_value not in seen:
            return TransactionProbe(
                supported=False,
                producer_started=True,
                detail="did not deliver a committed transactional record to a read_committed "
                f"consumer within {timeout_s:g} s ({_describe(exc)})",
            )
    finally:
        await _quietly(consumer.stop())
    if aborted_value in seen:
        return TransactionProbe(
            supported=False,
            producer_started=True,
            aborted_hidden=False,
            detail="hands records of aborted transactions to read_committed consumers, so a "
            "crashed worker's unfinished outcomes would still reach readers",
        )
    return TransactionProbe(
        supported=True,
        producer_started=True,
        aborted_hidden=True,
        detail="committed a transaction and hid an aborted one from a read_committed consumer",
    )


def require_transactions(bootstrap: str, timeout_s: float = PROBE_TIMEOUT_S) -> TransactionProbe:
    """The probe's verdict, or `TransactionsUnsupported` saying what to do instead."""
    verdict = asyncio.run(probe_transactions(bootstrap, timeout_s))
    if not verdict.supported:
        raise TransactionsUnsupported(
            f"--processing-guarantee exactly_once needs a broker with working Kafka "
            f"transactions (Apache Kafka); {broker_name(bootstrap)} {verdict.detail}. Run the "
            "worker with --processing-guarantee at_least_once (the default), which works on "
            "every broker, or point --bootstrap / HEADRACE_KAFKA_BOOTSTRAP at Apache Kafka."
        )
    return verdict


def create_probe_topic(bootstrap: str) -> None:
    """Create `PROBE_TOPIC` unless it exists. A refusal (a cluster whose ACLs or policy forbid
    this client to create topics) or a broker gone is one `HeadraceError` saying what to do;
    kafka-python's error, which quotes the whole request and response, was a traceback."""
    from kafka.errors import KafkaError

    try:
        create_topics(bootstrap, [PROBE_TOPIC])
    except TopicRefused as exc:
        raise TransactionsUnsupported(
            "--processing-guarantee exactly_once first checks the broker's transactions on a "
            f"topic of its own, and {exc.message} Or run the worker with "
            "--processing-guarantee at_least_once."
        ) from None
    except (KafkaError, OSError) as exc:
        raise HeadraceError(
            f"cannot reach Kafka at {bootstrap} to create {PROBE_TOPIC.name}, the topic of the "
            f"exactly-once check ({_describe(exc)}); check that the broker is running and "
            "reachable, then start the worker again"
        ) from None


def broker_name(bootstrap: str) -> str:
    """'the embedded Tansu broker at ...' or 'the broker at ...'."""
    from kafka.errors import KafkaError

    try:
        embedded = is_embedded(bootstrap, timeout_s=5.0)
    except (KafkaError, OSError):
        embedded = False
    if embedded:
        return f"the embedded Tansu broker at {bootstrap}"
    return f"the broker at {bootstrap}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    name, text = type(exc).__name__, str(exc)
    if text.startswith(name):  # kafka-python's errors name their class themselves
        return text
    return f"{name}: {text}" if text else name


async def _quietly(stopping: Awaitable[object]) -> None:
    with contextlib.suppress(Exception):  # a stop after a failed start may raise
        await stopping
