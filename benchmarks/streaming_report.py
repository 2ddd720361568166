"""The streaming benchmark's rows and report: the table and the final JSON with the issue's
keys, ratios and goal verdicts (`benchmarks.streaming` measures)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.serving_report import cell, ratio

SHORT = {"lenet5": "lenet", "resnet20": "resnet"}


@dataclass
class Row:
    """One line of the table."""

    system: str
    model: str
    fmt: str
    requests: int
    rps: float
    wall_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    dlq: int = 0
    consumer_cpu_pct: float | None = None
    broker_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    note: str = ""


@dataclass
class Settings:
    n: int
    models: list[str]
    formats: list[str]
    skip_naive: bool
    concurrency: int
    max_batch: int
    max_delay_ms: float
    ort_seconds: float
    worker_cpu: int | None
    client_cpu: int | None
    p99_seconds: float


def find_row(rows: list[Row], system: str, model: str, fmt: str) -> Row | None:
    for row in rows:
        if row.system == system and row.model == model and row.fmt == fmt:
            return row
    return None


def headline_format(formats: list[str]) -> str:
    return "binary" if "binary" in formats else formats[0]


def summarize(rows: list[Row], s: Settings) -> dict[str, Any]:
    """The issue's keys (for the headline payload format), per-format values, ratios and goals."""
    head = headline_format(s.formats)
    out: dict[str, Any] = {}

    def rps(system: str, model: str, fmt: str) -> float | None:
        row = find_row(rows, system, model, fmt)
        return None if row is None or math.isnan(row.rps) else round(row.rps, 1)

    out["lenet_pipeline_rps"] = rps("pipeline", "lenet5", head)
    out["lenet_naive_rps"] = rps("naive", "lenet5", head)
    out["broker_ceiling_rps"] = rps("broker ceiling", "lenet5", head)
    out["resnet_pipeline_rps"] = rps("pipeline", "resnet20", head)
    out["resnet_naive_rps"] = rps("naive", "resnet20", head)
    out["resnet_ort_ceiling_rps"] = rps("ort ceiling (compute)", "resnet20", "-")
    paced = next((r for r in rows if r.system == "pipeline @ 50% peak"), None)
    out["pipeline_p99_ms"] = (
        None if paced is None or paced.p99_ms is None else round(paced.p99_ms, 2)
    )
    out["pipeline_p50_ms"] = (
        None if paced is None or paced.p50_ms is None else round(paced.p50_ms, 2)
    )
    peak = out["lenet_pipeline_rps"]
    out["p99_offered_rps"] = None if paced is None or peak is None else round(peak / 2, 1)
    out["format"] = head
    for model in ("lenet5", "resnet20"):
        for fmt in s.formats:
            p = f"{SHORT[model]}_{fmt}"
            out[f"{p}_pipeline_rps"] = rps("pipeline", model, fmt)
            out[f"{p}_naive_rps"] = rps("naive", model, fmt)
            out[f"{p}_broker_ceiling_rps"] = rps("broker ceiling", model, fmt)
    out["lenet_ort_ceiling_rps"] = rps("ort ceiling (compute)", "lenet5", "-")
    out["lenet_pipeline_vs_naive"] = ratio(out["lenet_pipeline_rps"], out["lenet_naive_rps"])
    out["lenet_pipeline_vs_broker"] = ratio(out["lenet_pipeline_rps"], out["broker_ceiling_rps"])
    out["resnet_pipeline_vs_ort"] = ratio(out["resnet_pipeline_rps"], out["resnet_ort_ceiling_rps"])
    out["n"] = s.n
    out["dlq_total"] = sum(r.dlq for r in rows)
    others = [r.other_cpu_pct for r in rows if r.other_cpu_pct is not None]
    out["other_cpu_pct_max"] = max(others) if others else None
    out["pinning"] = (
        {"consumer_cpu": s.worker_cpu, "broker_producer_reader_cpu": s.client_cpu}
        if s.worker_cpu is not None
        else None
    )
    p99 = out["pipeline_p99_ms"]
    out["goals"] = {
        "lenet_pipeline_ge_3x_naive": at_least(out["lenet_pipeline_vs_naive"], 3.0),
        "lenet_pipeline_ge_50pct_broker": at_least(out["lenet_pipeline_vs_broker"], 0.5),
        "resnet_pipeline_ge_70pct_ort": at_least(out["resnet_pipeline_vs_ort"], 0.7),
        "p99_lt_100ms_at_half_peak": None if p99 is None else p99 < 100.0,
    }
    return out


def at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def print_table(rows: list[Row], s: Settings, pinning: str) -> None:
    print()
    print(
        f"Streaming benchmark: {s.n} requests per row, pre-produced; rate = outcomes/s from the "
        f"first outcome's produced_at to the last; {pinning}"
    )
    header = (
        f"{'system':<22} {'model':<9} {'format':<6} {'requests':>8} {'req/s':>9} {'wall s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'dlq':>4} {'cons cpu%':>9} {'brk cpu%':>8} "
        f"{'cli cpu%':>8} {'other%':>6}  note"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.system:<22} {r.model:<9} {r.fmt:<6} {r.requests or '-':>8} "
            f"{cell(r.rps, '.1f'):>9} {cell(r.wall_s, '.2f'):>7} {cell(r.p50_ms, '.1f'):>7} "
            f"{cell(r.p99_ms, '.1f'):>7} {r.dlq:>4} {cell(r.consumer_cpu_pct, '.0f'):>9} "
            f"{cell(r.broker_cpu_pct, '.0f'):>8} {cell(r.client_cpu_pct, '.0f'):>8} "
            f"{cell(r.other_cpu_pct, '.0f'):>6}  {r.note}"
        )
