"""Closed-loop gRPC load generator for the Open Inference Protocol's ModelInfer.

N coroutines share a few grpc.aio channels (our `GRPCInferenceServiceStub`,
never tritonclient: the two sets of generated protos cannot live in one
process). Each coroutine sends one request, awaits the answer and sends the
next, for a warm-up that is not counted and then a fixed measuring window.
A request counts when its answer arrives inside the window (so a slow
system still shows its rate in a short window). Every answer is checked
(status OK, output name and byte size); failures are counted by status code,
never dropped. Run it as its own process, pinned to a core apart from the
server's:

    python -m benchmarks.loadgen --target 127.0.0.1:8001 --model lenet5 \
        --shape 1 28 28 --streams 1 8 32 64 --duration-s 5 --cpu 1

With `--rpc stream` each coroutine instead keeps one ModelStreamInfer call
open and sends its next request on it once the answer to the last one is
back (tritonclient's `start_stream` / `async_stream_infer`), which saves the
per-call cost of the RPC layer.

It prints one JSON object per stream count (see `LevelResult`). With
`--latencies-out FILE.npy` (one stream count only) it also saves every
counted answer's latency in milliseconds, so that a caller can merge several
windows into exact percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

OUTPUT_NAME = "logits"
OUTPUT_CLASSES = 10
_BYTES_PER_ROW = OUTPUT_CLASSES * 4  # FP32 logits


@dataclass
class LevelResult:
    """What one stream count measured, in the measuring window only."""

    streams: int
    channels: int
    rows_per_request: int
    duration_s: float
    requests: int
    qps: float
    samples_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    client_cpu_pct: float = 0.0  # this process, % of one core
    server_cpu_pct: float | None = None  # the watched process tree, % of one core
    machine_cpu_pct: float = 0.0  # every process on the machine, % of one core


def build_request(
    model: str, shape: Sequence[int], rows: int, seed: int = 0
) -> pb.ModelInferRequest:
    """One FP32 request of `rows` samples, data in raw_input_contents (as tritonclient sends)."""
    data = np.random.default_rng(seed).standard_normal((rows, *shape)).astype("<f4")
    request = pb.ModelInferRequest(model_name=model, id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=[rows, *shape])
    request.outputs.add(name=OUTPUT_NAME)
    request.raw_input_contents.append(data.tobytes())
    return request


def check_response(response: pb.ModelInferResponse, rows: int) -> str | None:
    """None if the answer has `rows` rows of logits, else what is wrong with it."""
    if len(response.outputs) != 1 or response.outputs[0].name != OUTPUT_NAME:
        return "bad_outputs"
    if len(response.raw_output_contents) != 1:
        return "no_raw_output"
    if len(response.raw_output_contents[0]) != rows * _BYTES_PER_ROW:
        return "bad_output_size"
    return None


def machine_cpu_seconds() -> float:
    """CPU seconds spent by all cores outside idle and iowait since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its descendants (0 for processes gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


class _Window:
    """The measuring window shared by the coroutines of one level."""

    def __init__(self, warmup_s: float, duration_s: float) -> None:
        now = time.perf_counter()
        self.start = now + warmup_s
        self.end = self.start + duration_s


async def _stream(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    rows: int,
    window: _Window,
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    while True:
        sent = time.perf_counter()
        if sent >= window.end:
            return
        problem: str | None
        try:
            response = await stub.ModelInfer(request, metadata=metadata, timeout=timeout_s)
            problem = check_response(response, rows)
        except grpc.aio.AioRpcError as exc:
            problem = exc.code().name
        _count(window, sent, problem, latencies, errors)


def _count(
    window: _Window,
    sent: float,
    problem: str | None,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    """Count one answer (its latency, or its problem) if it arrived inside the window."""
    done = time.perf_counter()
    if not window.start <= done <= window.end:
        return  # answered during the warm-up or after the window closed
    if problem is None:
        latencies.append(done - sent)
    else:
        errors[problem] += 1


async def _bidi_stream(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    rows: int,
    window: _Window,
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    """`_stream` over one ModelStreamInfer call: write a request, read its answer, repeat."""
    # One deadline for the whole call: it lasts the warm-up and the window, plus `timeout_s`.
    call = stub.ModelStreamInfer(
        metadata=metadata, timeout=window.end - time.perf_counter() + timeout_s
    )
    try:
        while True:
            sent = time.perf_counter()
            if sent >= window.end:
                return
            problem: str | None
            try:
                await call.write(request)
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    errors["stream_ended"] += 1
                    return
                problem = (
                    "error_message"
                    if answer.error_message
                    else check_response(answer.infer_response, rows)
                )
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                return  # the call is over
            _count(window, sent, problem, latencies, errors)
    finally:
        if not call.done():  # close our side and let the server end the call
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass


async def run_level(
    target: str,
    request: pb.ModelInferRequest,
    streams: int,
    *,
    channels: int,
    duration_s: float,
    warmup_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout_s: float = 10.0,
    watch_pid: int | None = None,
    rpc: str = "unary",
    latencies_ms: list[float] | None = None,
) -> LevelResult:
    """Measure one stream count against `target`: each coroutine calls ModelInfer in a
    loop (`rpc="unary"`) or keeps one ModelStreamInfer call open (`rpc="stream"`).
    The counted answers' latencies (ms) are appended to `latencies_ms` if given."""
    loop_body = {"unary": _stream, "stream": _bidi_stream}[rpc]
    rows = request.inputs[0].shape[0]
    n_channels = max(1, min(channels, streams))
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
    ]
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(n_channels)]
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in opened]
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        window = _Window(warmup_s, duration_s)
        tasks = [
            asyncio.create_task(
                loop_body(
                    stubs[i % n_channels],
                    request,
                    rows,
                    window,
                    metadata,
                    timeout_s,
                    latencies,
                    errors,
                )  # fmt: skip
            )
            for i in range(streams)
        ]
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        cpu0, server0, all0 = time.process_time(), _server_cpu(watch_pid), machine_cpu_seconds()
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        cpu1, server1, all1 = time.process_time(), _server_cpu(watch_pid), machine_cpu_seconds()
        await asyncio.gather(*tasks)
    finally:
        for channel in opened:
            await channel.close()
    lat_ms = np.asarray(latencies) * 1e3
    if latencies_ms is not None:
        latencies_ms.extend(lat_ms.tolist())
    done = len(latencies)
    server_pct = None
    if server0 is not None and server1 is not None:
        server_pct = round(100 * (server1 - server0) / duration_s, 1)
    return LevelResult(
        streams=streams,
        channels=n_channels,
        rows_per_request=rows,
        duration_s=duration_s,
        requests=done,
        qps=round(done / duration_s, 1),
        samples_per_s=round(done * rows / duration_s, 1),
        p50_ms=round(float(np.percentile(lat_ms, 50)), 3) if done else float("nan"),
        p99_ms=round(float(np.percentile(lat_ms, 99)), 3) if done else float("nan"),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        client_cpu_pct=round(100 * (cpu1 - cpu0) / duration_s, 1),
        server_cpu_pct=server_pct,
        machine_cpu_pct=round(100 * (all1 - all0) / duration_s, 1),
    )


def _server_cpu(pid: int | None) -> float | None:
    return None if pid is None else tree_cpu_seconds(pid)


def channels_for(streams: int, per_channel: int) -> int:
    """How many channels carry `streams` coroutines with at most `per_channel` on each."""
    return max(1, -(-streams // per_channel))


async def _main_async(args: argparse.Namespace) -> None:
    request = build_request(args.model, args.shape, args.rows)
    metadata = tuple((key, value) for key, _, value in (m.partition("=") for m in args.metadata))
    kept: list[float] | None = None if args.latencies_out is None else []
    for streams in args.streams:
        result = await run_level(
            args.target,
            request,
            streams,
            channels=channels_for(streams, args.streams_per_channel),
            duration_s=args.duration_s,
            warmup_s=args.warmup_s,
            metadata=metadata,
            watch_pid=args.watch_pid,
            rpc=args.rpc,
            latencies_ms=kept,
        )
        if kept is not None:
            np.save(args.latencies_out, np.asarray(kept))
        print(json.dumps(asdict(result)), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--shape", type=int, nargs="+", required=True, help="one sample's dims")
    parser.add_argument("--rows", type=int, default=1, help="samples per request")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--streams-per-channel", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--metadata", nargs="*", default=[], help="key=value call metadata")
    parser.add_argument(
        "--rpc",
        choices=["unary", "stream"],
        default="unary",
        help="ModelInfer calls, or one ModelStreamInfer call per coroutine",
    )
    parser.add_argument("--watch-pid", type=int, default=None, help="report this tree's CPU")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument(
        "--latencies-out", type=Path, default=None, help="save latencies (ms) to this .npy file"
    )
    args = parser.parse_args(argv)
    if args.latencies_out is not None and len(args.streams) != 1:
        parser.error("--latencies-out takes one stream count")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(_main_async(args))


if __name__ == "__main__":
    main()
