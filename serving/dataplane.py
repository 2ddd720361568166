"""The dataplane: what an inference server does, with no transport code.

The gRPC servicer (and later the Kafka agents) call these methods with
protocol-neutral types from `serving.types`; errors are `HeadraceError`s that
the transport maps to its own status codes in one place.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from headrace import __version__
from headrace.errors import (
    DeadlineExceeded,
    HeadraceError,
    InvalidInput,
    ModelNotFound,
    ShuttingDown,
    Unsupported,
)
from serving.batcher import BatchResult, BatchTiming
from serving.classification import top_classes
from serving.config_override import PARAMETER as OVERRIDE_PARAMETER
from serving.config_override import apply_override
from serving.metrics import UNKNOWN_MODEL, ServingMetrics
from serving.model_config import ModelConfig, TensorSpec
from serving.model_manager import LoadedVersion, ModelManager
from serving.request_parameters import (
    TIMEOUT_PARAMETER,
    apply_timeout,
    check_request_parameters,
)
from serving.types import InferRequest, InferResponse, InferTensor, Timings
from serving.validation import TensorLayout, check_finite, check_inputs, validate_request
from serving.version_policy import VersionPolicy

SERVER_NAME = "headrace"
EXTENSIONS = ("classification", "model_repository", "statistics", "health", "binary_tensor_data")
# A call cancelled this close to its deadline ran out of time: the client's own timer fires
# first, and its cancellation reaches the server before the server's copy of the deadline
# (7 ms early with a 1 s timeout on an idle machine; more under load).
DEADLINE_CANCEL_SLACK_S = 0.25
# Triton's load request parameters naming model files sent in the request ("file:1/model.onnx").
FILE_PARAMETER_PREFIX = "file:"


@dataclass
class ModelMetadata:
    """What ModelMetadata answers: the model's versions and tensors (batch axis as -1)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass
class BatchStats:
    """Cumulative statistics of the executed batches of one size (Triton's
    InferBatchStatistics): how many ran, and their time in each phase, in nanoseconds."""

    count: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass
class VersionStats:
    """Cumulative statistics of one model version (for ModelStatistics)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    input_ns: int = 0
    output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)  # by batch size (rows)


@dataclass
class IndexEntry:
    """One row of RepositoryIndex."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class DataPlane:
    """Inference, metadata, statistics and repository control over a `ModelManager`."""

    manager: ModelManager
    metrics: ServingMetrics | None = None
    draining: bool = False
    last_request_at: float = 0.0  # time.monotonic() of the latest inference call to arrive
    # Awaited after every explicit load, whether it failed or not (the server updates the
    # models' health from the manager's failures).
    after_load: Callable[[], Awaitable[None]] | None = None
    stats: dict[tuple[str, str], VersionStats] = field(default_factory=dict)
    _executions_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- health --------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining

    def model_ready(self, name: str, version: str = "") -> bool:
        return not self.draining and self.manager.ready(name, version or None)

    # -- metadata ------------------------------------------------------------------------

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, __version__, list(EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        loaded = self.manager.get(name, version or None)
        config = loaded.config
        batch = [-1] if config.max_batch_size > 0 else []

        def with_batch(specs: list[TensorSpec]) -> list[TensorSpec]:
            return [s.model_copy(update={"dims": batch + list(s.dims)}) for s in specs]

        versions = [str(v) for v in self.manager.loaded().get(name, [])]
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=config.platform,
            inputs=with_batch(config.inputs),
            outputs=with_batch(config.outputs),
        )

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.manager.get(name, version or None).config

    def version_policy(self) -> VersionPolicy:
        """Which versions of each model the server serves."""
        return self.manager.policy

    def version_parameters(self, name: str, version: str = "") -> dict[str, str]:
        """A ready version's own metadata as strings (for ModelConfig's parameters map):
        its number, and the privacy budget and watermark id it was published with."""
        loaded = self.manager.get(name, version or None)
        meta = loaded.metadata
        parameters = {"version": str(loaded.version)}
        for key, value in (
            ("dp_epsilon", meta.dp_epsilon),
            ("dp_delta", meta.dp_delta),
            ("watermark_id", meta.watermark_id),
        ):
            if value is not None:
                parameters[key] = repr(value) if isinstance(value, float) else str(value)
        return parameters

    def statistics(self, name: str = "", version: str = "") -> dict[tuple[str, str], VersionStats]:
        """Statistics of one model (or all when `name` is empty)."""
        if name:
            loaded = self.manager.get(name, version or None)  # raises for unknown models
            version = str(loaded.version) if version else ""  # "01" or " 1" is version 1
        for model, versions in self.manager.loaded().items():  # ready versions report zeros
            for number in versions:
                self.stats.setdefault((model, str(number)), VersionStats())
        with self._executions_lock:  # a copy: executing threads update the counts meanwhile
            return {
                key: replace(value, batches={n: replace(b) for n, b in value.batches.items()})
                for key, value in self.stats.items()
                if (not name or key[0] == name) and (not version or key[1] == version)
            }

    async def repository_index(
        self, ready_only: bool = False, repository: str = ""
    ) -> list[IndexEntry]:
        """Every model of the repository with its versions' states. The folder is listed in
        a worker thread: on a slow network filesystem the event loop keeps serving."""
        _check_repository(repository)
        names = await asyncio.to_thread(self.manager.repository.list_models)
        loaded = self.manager.loaded()
        failures = self.manager.failures()
        entries: list[IndexEntry] = []
        for name in names:
            versions = loaded.get(name, [])
            if versions:
                entries.extend(IndexEntry(name, str(v), "READY") for v in versions)
                if not ready_only:  # a new version refused while an older one serves
                    refused = self.manager.refused_versions(name)
                    entries.extend(
                        IndexEntry(name, str(v), "UNAVAILABLE", refused[v]) for v in sorted(refused)
                    )
            elif not ready_only:
                state = "UNAVAILABLE" if name in failures else "UNLOADED"
                entries.append(IndexEntry(name, "", state, failures.get(name, "")))
        return entries

    async def load(
        self, name: str, parameters: Mapping[str, Any] | None = None, repository: str = ""
    ) -> list[int]:
        """Load (or reload) a model from the repository. `parameters` are the load request's:
        Triton's `config` override applies to this server (`serving.config_override`); its
        `file:` overrides (model files sent in the request) are refused, as versions come
        only from a publish, which records their sha256 sums."""
        _check_repository(repository)
        parameters = parameters or {}
        files = sorted(p for p in parameters if p.startswith(FILE_PARAMETER_PREFIX))
        if files:
            raise InvalidInput(
                f"load of {name!r}: model files in the request ({', '.join(files)}) are not "
                "supported; publish the version into the repository (headrace train, or a "
                "copy as the README says) and load it again"
            )
        if name not in await asyncio.to_thread(self.manager.repository.list_models):
            raise ModelNotFound(f"model {name!r} is not in the repository")
        config = None
        if OVERRIDE_PARAMETER in parameters:
            text = parameters[OVERRIDE_PARAMETER]
            if not isinstance(text, str):
                raise InvalidInput(
                    f"load of {name!r}: parameter {OVERRIDE_PARAMETER!r} must be a string "
                    f"holding a JSON model configuration, got {type(text).__name__}"
                )
            base = await asyncio.to_thread(self.manager.repository.config, name)
            served = [self.manager.get(name, v).config for v in self.manager.loaded().get(name, [])]
            config = apply_override(text, base, self.manager.policy, served)
        try:
            return await self.manager.load(name, config)
        finally:
            if self.after_load is not None:
                await self.after_load()

    async def unload(self, name: str, repository: str = "") -> None:
        _check_repository(repository)
        await self.manager.unload(name)

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue for the batcher, and answer; records metrics either way."""
        started = time.perf_counter()
        self.last_request_at = time.monotonic()
        model, version = UNKNOWN_MODEL, ""
        try:
            loaded = self._serving_version(request)
            model, version = loaded.name, str(loaded.version)
            if request.parameters:
                check_request_parameters(request.parameters)
            apply_timeout(request)
            response, rows = await self._infer_loaded(request, loaded)
        except HeadraceError as exc:
            self._record_failure(model, version, exc.reason, started)
            raise
        except BaseException:
            # gRPC cancels the call when its deadline passes, before the batcher sees it.
            expired = (
                request.deadline is not None
                and time.monotonic() >= request.deadline - DEADLINE_CANCEL_SLACK_S
            )
            reason = DeadlineExceeded.reason if expired else "cancelled_or_internal"
            self._record_failure(model, version, reason, started)
            raise
        total_s = time.perf_counter() - started
        self._record_success(model, version, rows, response.timings, total_s)
        return response

    def check_inputs(
        self, model_name: str, model_version: str, inputs: Sequence[TensorLayout]
    ) -> None:
        """Refuse a request whose model is not ready or whose inputs' names, datatypes and
        shapes do not fit it, before a transport decodes its data (`infer` checks all of it
        again, with the data); a refusal counts as a failed request, as in `infer`."""
        started = time.perf_counter()
        model, version = UNKNOWN_MODEL, ""
        try:
            loaded = self.manager.get(model_name, model_version or None)
            model, version = loaded.name, str(loaded.version)
            check_inputs(inputs, loaded.config)
        except HeadraceError as exc:
            self._record_failure(model, version, exc.reason, started)
            raise

    async def infer_many(
        self, requests: Sequence[InferRequest]
    ) -> list[InferResponse | BaseException]:
        """One answer per request, in order: its response or the error it failed with.

        Requests for the same model version with the same input names, dtypes and
        non-batch shapes, and no deadline, enter the batcher as one merged submit of
        up to `max_batch_size` rows: a batch of Kafka records costs one queue entry and
        one future instead of one per record. The others go through `infer`. Metrics
        and statistics count every request on its own, as `infer` does."""
        started = time.perf_counter()
        answers: list[InferResponse | BaseException | None] = [None] * len(requests)
        groups: dict[tuple[object, ...], list[_Merged]] = {}
        alone: list[int] = []
        layouts: dict[tuple[object, ...], tuple[int, _Signature]] = {}  # see `_validated`
        for index, request in enumerate(requests):
            if request.deadline is not None or TIMEOUT_PARAMETER in request.parameters:
                alone.append(index)
                continue
            model, version = UNKNOWN_MODEL, ""
            try:
                loaded = self._serving_version(request)
                model, version = loaded.name, str(loaded.version)
                if request.parameters:
                    check_request_parameters(request.parameters)
                rows, signature = _validated(request, loaded, layouts)
            except HeadraceError as exc:
                self._record_failure(model, version, exc.reason, started)
                answers[index] = exc
                continue
            inputs = {tensor.name: tensor.data.reshape(tensor.shape) for tensor in request.inputs}
            key = (id(loaded), signature)
            groups.setdefault(key, []).append(_Merged(index, request, loaded, rows, inputs))
        chunks = [chunk for group in groups.values() for chunk in _chunks(group)]
        merged, single = await asyncio.gather(
            asyncio.gather(*(self._run_merged(chunk) for chunk in chunks), return_exceptions=True),
            asyncio.gather(*(self.infer(requests[i]) for i in alone), return_exceptions=True),
        )
        for chunk, result in zip(chunks, merged, strict=True):
            self._settle_merged(chunk, result, started, answers)
        for index, answer in zip(alone, single, strict=True):
            answers[index] = answer
        done = [answer for answer in answers if answer is not None]
        assert len(done) == len(requests), "every request is answered above"
        return done

    def _serving_version(self, request: InferRequest) -> LoadedVersion:
        """The ready version `request` asks for; refused while the server drains."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        return self.manager.get(request.model_name, request.model_version or None)

    async def _run_merged(self, chunk: list[_Merged]) -> BatchResult:
        first = chunk[0]
        if len(chunk) == 1:
            return await first.loaded.batcher.submit(first.inputs)
        merged = {name: np.concatenate([m.inputs[name] for m in chunk]) for name in first.inputs}
        return await first.loaded.batcher.submit(merged)

    def _settle_merged(
        self,
        chunk: list[_Merged],
        outcome: BatchResult | BaseException,
        started: float,
        answers: list[InferResponse | BaseException | None],
    ) -> None:
        loaded = chunk[0].loaded
        model, version = loaded.name, str(loaded.version)
        if isinstance(outcome, BaseException):
            reason = outcome.reason if isinstance(outcome, HeadraceError) else "internal"
            for item in chunk:
                self._record_failure(model, version, reason, started)
                answers[item.index] = outcome
            return
        total_s = time.perf_counter() - started
        timings = _timings(outcome)
        start = 0
        for item in chunk:
            rows = {
                name: value[start : start + item.rows] for name, value in outcome.outputs.items()
            }
            start += item.rows
            answers[item.index] = self._response(item.request, loaded, rows, timings)
        self._record_success(model, version, start, timings, total_s, requests=len(chunk))

    async def _infer_loaded(
        self, request: InferRequest, loaded: LoadedVersion
    ) -> tuple[InferResponse, int]:
        rows = validate_request(request, loaded.config, values=False)  # the batcher screens
        inputs = {tensor.name: tensor.data.reshape(tensor.shape) for tensor in request.inputs}
        result = await loaded.batcher.submit(inputs, request.deadline)
        timings = _timings(result)
        return self._response(request, loaded, result.outputs, timings), rows

    @staticmethod
    def _response(
        request: InferRequest,
        loaded: LoadedVersion,
        outputs: dict[str, np.ndarray],
        timings: Timings,
    ) -> InferResponse:
        config = loaded.config
        wanted = request.requested_outputs or [spec.name for spec in config.outputs]
        if request.class_counts:
            batched = config.max_batch_size > 0
            outputs = dict(outputs)
            for name, k in request.class_counts.items():
                outputs[name] = top_classes(outputs[name], k, config.labels, batched)
        return InferResponse(
            model_name=loaded.name,
            model_version=str(loaded.version),
            outputs=[InferTensor.from_array(name, outputs[name]) for name in wanted],
            id=request.id,
            timings=timings,
        )

    def count_execution(self, model: str, version: str, batch: BatchTiming) -> None:
        """One batch executed; called from the executing thread, hence the lock."""
        with self._executions_lock:
            stats = self._stats_of(model, version)
            stats.execution_count += 1
            same_size = stats.batches.get(batch.rows)
            if same_size is None:
                same_size = stats.batches[batch.rows] = BatchStats()
            same_size.count += 1
            same_size.input_ns += int(batch.input_s * 1e9)
            same_size.infer_ns += int(batch.infer_s * 1e9)
            same_size.output_ns += int(batch.output_s * 1e9)

    def _stats_of(self, model: str, version: str) -> VersionStats:
        """The version's statistics, created on first use: no new object per call (as a bare
        `setdefault` builds), and one object even when two threads ask first at once."""
        key = (model, version)
        return self.stats.get(key) or self.stats.setdefault(key, VersionStats())

    def _record_success(
        self,
        model: str,
        version: str,
        rows: int,
        timings: Timings,
        total_s: float,
        requests: int = 1,
    ) -> None:
        """`requests` successful requests with `rows` rows in all and the same timings."""
        stats = self._stats_of(model, version)
        stats.success_count += requests
        stats.success_ns += int(total_s * 1e9) * requests
        stats.queue_ns += int(timings.queue_s * 1e9) * requests
        stats.compute_ns += int(timings.compute_s * 1e9) * requests
        stats.input_ns += int(timings.input_s * 1e9) * requests
        stats.output_ns += int(timings.output_s * 1e9) * requests
        stats.inference_count += rows
        stats.last_inference_ms = int(time.time() * 1000)
        if self.metrics is not None:
            self.metrics.observe_success(model, version, rows, timings, total_s, requests)

    def _record_failure(self, model: str, version: str, reason: str, started: float) -> None:
        if model != UNKNOWN_MODEL:
            stats = self._stats_of(model, version)
            stats.fail_count += 1
            stats.fail_ns += int((time.perf_counter() - started) * 1e9)
        if self.metrics is not None:
            self.metrics.observe_failure(model, version, reason)


def _check_repository(name: str) -> None:
    """The model repository extension may name a repository; this server has one, unnamed."""
    if name:
        raise Unsupported(
            f"repository_name {name!r}: this server serves one model repository, which has no "
            "name; leave repository_name empty"
        )


_Signature = tuple[tuple[str, str, tuple[int, ...]], ...]  # inputs that can share a batch


def _validated(
    request: InferRequest,
    loaded: LoadedVersion,
    layouts: dict[tuple[object, ...], tuple[int, _Signature]],
) -> tuple[int, _Signature]:
    """`validate_request`, run once per distinct request layout in `layouts`: whether a
    request fits its config depends only on its input names, datatypes and shapes and its
    requested outputs, except for NaN/infinity, which is checked for every request. Also
    the request's merge signature: its input names, dtypes and shapes without the batch axis.
    """
    layout = (
        id(loaded),
        tuple((t.name, t.datatype, t.shape, t.data.dtype) for t in request.inputs),
        tuple(request.requested_outputs),
        tuple(request.class_counts.items()),
    )
    known = layouts.get(layout)
    if known is not None:
        check_finite(request, loaded.config)
        return known
    rows = validate_request(request, loaded.config)
    signature = tuple(
        sorted((t.name, t.data.dtype.str, tuple(t.shape[1:])) for t in request.inputs)
    )
    layouts[layout] = (rows, signature)
    return rows, signature


@dataclass
class _Merged:
    """One request of a merged submit: where its answer goes and its rows of the batch."""

    index: int
    request: InferRequest
    loaded: LoadedVersion
    rows: int
    inputs: dict[str, np.ndarray]


def _chunks(group: list[_Merged]) -> list[list[_Merged]]:
    """Consecutive runs of `group` whose rows fit the model's max batch size."""
    limit = max(1, group[0].loaded.config.max_batch_size)
    chunks: list[list[_Merged]] = []
    current: list[_Merged] = []
    rows = 0
    for item in group:
        if current and rows + item.rows > limit:
            chunks.append(current)
            current, rows = [], 0
        current.append(item)
        rows += item.rows
    if current:
        chunks.append(current)
    return chunks


def _timings(result: BatchResult) -> Timings:
    """A request's timings: its wait in the queue and its batch's phases."""
    return Timings(
        result.queue_s, result.compute_s, result.batch_size, result.input_s, result.output_s
    )
