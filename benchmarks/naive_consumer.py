"""The naive baseline: one message at a time, the way Kafka-ML's inference consumer works.

A kafka-python consumer (its own group, `earliest`, no auto-commit) takes each
request record and, before touching the next one: decodes it
(`streams.codec.decode_request`, JSON or binary OIP), preprocesses the pixels
as the model's config says, runs ONNX Runtime at batch 1 (`OnnxModel`, the
server's session settings), produces the result (`streams.codec.encode_result`,
`acks=all`) and waits for its acknowledgement, then commits the offset
synchronously. Records it cannot decode get a DLQ record the same way.

    python -m benchmarks.naive_consumer --repository R --model lenet5 --bootstrap B \
        --group G --requests-topic req --results-topic res --dlq-topic dlq

Prints `naive consumer ready` once its partitions are assigned; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from types import FrameType

import numpy as np


class _Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--requests-topic", required=True)
    parser.add_argument("--results-topic", required=True)
    parser.add_argument("--dlq-topic", required=True)
    args = parser.parse_args(argv)

    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from headrace.errors import HeadraceError
    from serving.repository import ModelRepository
    from serving.runner import OnnxModel
    from serving.types import InferResponse, InferTensor, Timings
    from streams.codec import RecordRejected, decode_request, dlq_record, encode_result
    from streams.messages import RecordRef
    from streams.messages import Timings as ResultTimings

    version = ModelRepository(args.repository).latest(args.model)
    spec = version.config.preprocessing
    model = OnnxModel(version.model_file, instances=1)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=0)
    consumer = KafkaConsumer(
        args.requests_topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,  # DESIGN.md: the embedded broker holds JoinGroup otherwise
        heartbeat_interval_ms=300,
        fetch_max_bytes=8 * 1024 * 1024,
    )
    signal.signal(signal.SIGTERM, _stop)
    announced = False
    try:
        while True:
            batch = consumer.poll(timeout_ms=100)
            if not announced and consumer.assignment():
                announced = True
                print(f"naive consumer ready group={args.group}", flush=True)
            for records in batch.values():
                for record in records:
                    headers = [(k, bytes(v)) for k, v in record.headers or ()]
                    try:
                        began = time.perf_counter()
                        decoded = decode_request(record.key, record.value, headers)
                        request = decoded.request
                        inputs = {}
                        for tensor in request.inputs:
                            data = np.asarray(tensor.data).reshape(tensor.shape)
                            if spec is not None and data.dtype.kind in "iu":
                                data = spec.apply(data)
                            inputs[tensor.name] = data
                        preprocess_s = time.perf_counter() - began
                        began = time.perf_counter()
                        outputs = model.run(inputs)
                        infer_s = time.perf_counter() - began
                        response = InferResponse(
                            model_name=version.name,
                            model_version=str(version.version),
                            outputs=[InferTensor.from_array(n, a) for n, a in outputs.items()],
                            id=request.id,
                            timings=Timings(compute_s=infer_s, batch_size=1),
                        )
                        timings = ResultTimings(
                            preprocess_s=preprocess_s, infer_s=infer_s, batch_size=1
                        )
                        value = encode_result(response, request.id, timings, decoded.created_at)
                        topic, key = args.results_topic, request.id.encode()
                    except (RecordRejected, HeadraceError) as exc:
                        stage = exc.stage if isinstance(exc, RecordRejected) else "infer"
                        source = RecordRef(
                            topic=record.topic, partition=record.partition, offset=record.offset
                        )
                        rid = record.key.decode() if record.key else None
                        value = dlq_record(rid, exc, stage, record.value, source)
                        topic, key = args.dlq_topic, record.key
                    producer.send(topic, key=key, value=value).get(timeout=30)
                    position = TopicPartition(record.topic, record.partition)
                    consumer.commit({position: OffsetAndMetadata(record.offset + 1, "", -1)})
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        consumer.close()
        producer.close()
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
