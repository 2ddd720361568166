"""The serving benchmark's rows and report: windows merged into rows, the table, and the
final JSON with the issue's keys, ratios and goal verdicts (`benchmarks.serving` measures)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SHORT = {"lenet5": "lenet", "resnet20": "resnet"}
# Two identical server endpoints, measured side by side like batched and unbatched, differed
# by this share of their rate and more (A/A runs: up to 5.7% in short tests and 7.3% in a
# full run's --aa-check, docs/performance.md). A smaller gap between batched and unbatched
# cannot be told from noise, so the goal counts only a larger one.
SAME_PATH_NOISE = 0.05
AA_SYSTEMS = ("A/A: headrace batched #1", "A/A: headrace batched #2")  # --aa-check


@dataclass
class Row:
    """One line of the table: a system, a model and a stream count."""

    system: str
    model: str
    streams: int | None
    qps: float
    samples_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    other_cpu_pct: float | None = None  # machine busy time not ours: other people's load
    note: str = ""


@dataclass
class Settings:
    """What one run measures (from the command line)."""

    models: list[str]
    streams: list[int]
    duration_s: float
    warmup_s: float
    ort_seconds: float
    skip_rayserve: bool
    client_batch: int
    stream_rpc: bool
    aa_check: bool
    streams_per_channel: int
    max_queue_delay_us: int
    server_cpus: set[int] | None
    client_cpu: int | None


def others_cpu_pct(r: dict[str, Any]) -> float:
    """The machine's busy share in a window that was neither the server's nor the generator's."""
    """The machine's busy share in a window that was neither the server's nor the generator's."""
    ours = (r["server_cpu_pct"] or 0.0) + r["client_cpu_pct"]
    return round(max(0.0, r["machine_cpu_pct"] - ours), 1)


def merge_windows(system: str, model: str, windows: list[tuple[dict[str, Any], np.ndarray]]) -> Row:
    """One row from several measuring windows of one server (loadgen result, latencies in ms):
    rates over the summed time, percentiles over every latency, CPU shares time-weighted."""
    results = [r for r, _ in windows]
    seconds = sum(r["duration_s"] for r in results)
    requests = sum(r["requests"] for r in results)
    latencies = np.concatenate([lat for _, lat in windows])

    def weighted(values: list[float | None]) -> float | None:
        if any(v is None for v in values):
            return None
        return round(
            sum(v * r["duration_s"] for v, r in zip(values, results, strict=True)) / seconds, 1
        )

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 3) if latencies.size else None

    kinds: dict[str, int] = {}
    for r in results:
        for kind, count in r["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    per_window = " / ".join(f"{r['qps']:.0f}" for r in results)
    note = "; ".join(
        filter(
            None,
            [f"ABBA windows {per_window} req/s", ", ".join(f"{k}={v}" for k, v in kinds.items())],
        )
    )
    return Row(
        system,
        model,
        results[0]["streams"],
        round(requests / seconds, 1),
        round(requests * results[0]["rows_per_request"] / seconds, 1),
        percentile(50),
        percentile(99),
        sum(r["errors"] for r in results),
        weighted([r["server_cpu_pct"] for r in results]),
        weighted([r["client_cpu_pct"] for r in results]),
        weighted([others_cpu_pct(r) for r in results]),
        note,
    )


def _value(rows: list[Row], system: str, model: str, streams: int | None) -> Row | None:
    for row in rows:
        if row.system == system and row.model == model and row.streams == streams:
            return row
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    """a over b to three places, or None when either is missing (or b is 0)."""
    return round(a / b, 3) if a is not None and b else None


def summarize(rows: list[Row], settings: Settings) -> dict[str, Any]:
    """The final JSON: the issue's keys (throughputs at the top stream count) and ratios."""
    top = max(settings.streams)
    out: dict[str, Any] = {}

    def qps(system: str, model: str, streams: int | None = top) -> float | None:
        row = _value(rows, system, model, streams)
        return row.qps if row is not None else None

    for model in ("lenet5", "resnet20"):
        p = SHORT[model]
        out[f"{p}_batched_qps"] = qps("headrace batched", model)
        out[f"{p}_unbatched_qps"] = qps("headrace unbatched", model)
        out[f"{p}_rayserve_qps"] = qps("ray serve @serve.batch", model)
        out[f"{p}_transport_ceiling_qps"] = qps("grpc canned (transport)", model)
        out[f"{p}_ort_ceiling_qps"] = qps("ort ceiling (compute)", model, None)
    p99_32 = _value(rows, "headrace batched", "lenet5", 32)
    out["lenet_p99_ms_32"] = p99_32.p99_ms if p99_32 is not None else None
    out["lenet_batched_vs_transport"] = ratio(
        out["lenet_batched_qps"], out["lenet_transport_ceiling_qps"]
    )
    out["lenet_batched_vs_rayserve"] = ratio(out["lenet_batched_qps"], out["lenet_rayserve_qps"])
    out["resnet_batched_vs_ort"] = ratio(out["resnet_batched_qps"], out["resnet_ort_ceiling_qps"])
    out["resnet_batched_vs_rayserve"] = ratio(out["resnet_batched_qps"], out["resnet_rayserve_qps"])
    for system, key in (
        ("headrace batched, client batch", "lenet_batched_client_batch_samples_per_s"),
        ("grpc canned, client batch", "lenet_transport_client_batch_samples_per_s"),
    ):
        row = _value(rows, system, "lenet5", top)
        out[key] = row.samples_per_s if row is not None else None
    for model in ("lenet5", "resnet20"):
        p = SHORT[model]
        out[f"{p}_batched_stream_rpc_qps"] = qps("headrace batched, stream RPC", model)
        out[f"{p}_transport_stream_rpc_qps"] = qps("grpc canned, stream RPC", model)
    stream_32 = _value(rows, "headrace batched, stream RPC", "lenet5", 32)
    out["lenet_stream_rpc_p99_ms_32"] = stream_32.p99_ms if stream_32 is not None else None
    versus = {
        f"{model}@{n}": b.qps / u.qps
        for model in settings.models
        for n in settings.streams
        if (b := _value(rows, "headrace batched", model, n)) is not None
        and (u := _value(rows, "headrace unbatched", model, n)) is not None
        and u.qps
    }
    out["batched_over_unbatched"] = {at: round(ratio, 3) for at, ratio in versus.items()}
    out["batched_slower_than_unbatched_at"] = [at for at, ratio in versus.items() if ratio < 1]
    out["batched_slower_beyond_noise_at"] = [
        at for at, ratio in versus.items() if ratio < 1 - SAME_PATH_NOISE
    ]
    same = {
        f"{model}@{n}": round(a.qps / b.qps, 3)
        for model in settings.models
        for n in settings.streams
        if (a := _value(rows, AA_SYSTEMS[0], model, n)) is not None
        and (b := _value(rows, AA_SYSTEMS[1], model, n)) is not None
        and b.qps
    }
    if same:  # --aa-check
        out["aa_first_over_second"] = same
        out["aa_largest_gap"] = round(max(abs(1 - ratio) for ratio in same.values()), 3)
    out["streams"] = top
    out["duration_s"] = settings.duration_s
    out["max_queue_delay_us"] = settings.max_queue_delay_us
    out["errors_total"] = sum(row.errors for row in rows)
    out["goals"] = _goals(out)
    return out


def _goals(out: dict[str, Any]) -> dict[str, bool | None]:
    def at_least(key: str, bound: float) -> bool | None:
        value = out.get(key)
        return None if value is None else value >= bound

    p99 = out.get("lenet_p99_ms_32")
    return {
        "lenet_batched_ge_70pct_transport": at_least("lenet_batched_vs_transport", 0.7),
        "lenet_batched_ge_5x_rayserve": at_least("lenet_batched_vs_rayserve", 5.0),
        "resnet_batched_ge_70pct_ort": at_least("resnet_batched_vs_ort", 0.7),
        "resnet_batched_ge_4x_rayserve": at_least("resnet_batched_vs_rayserve", 4.0),
        "batching_never_slower": not out["batched_slower_beyond_noise_at"],
        "lenet_p99_lt_15ms_at_32": None if p99 is None else p99 < 15.0,
    }


def cell(value: float | None, spec: str) -> str:
    """A table cell: the value formatted, or a dash when there is none."""
    """A table cell: the value formatted, or a dash when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_table(rows: list[Row], settings: Settings, pinning: str) -> None:
    print()
    print(
        f"Serving benchmark: {settings.duration_s:g} s per point after {settings.warmup_s:g} s "
        f"warm-up (headrace batched/unbatched: two windows of {settings.duration_s / 2:g} s "
        f"each, A B B A); 1 sample per request unless noted; {pinning}; "
        f"<= {settings.streams_per_channel} streams per gRPC channel; "
        f"max_queue_delay_us={settings.max_queue_delay_us}"
    )
    header = (
        f"{'system':<31} {'model':<9} {'streams':>7} {'req/s':>9} {'samples/s':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'srv cpu%':>8} {'gen cpu%':>8} "
        f"{'other%':>6}  note"
    )
    print(header)
    print("-" * len(header))
    systems = {system: i for i, system in enumerate(dict.fromkeys(r.system for r in rows))}
    for r in sorted(rows, key=lambda row: systems[row.system]):  # stable: per system, in order
        print(
            f"{r.system:<31} {r.model:<9} {cell(r.streams, 'd'):>7} {r.qps:>9.1f} "
            f"{r.samples_per_s:>10.1f} {cell(r.p50_ms, '.2f'):>7} {cell(r.p99_ms, '.2f'):>7} "
            f"{r.errors:>6} {cell(r.server_cpu_pct, '.0f'):>8} {cell(r.client_cpu_pct, '.0f'):>8} "
            f"{cell(r.other_cpu_pct, '.0f'):>6}  {r.note}"
        )
