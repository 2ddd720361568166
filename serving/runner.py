"""ONNX Runtime sessions for one model version: a pool of N interchangeable instances.

The one module that talks to ONNX Runtime on the serving side. Each instance
is an `InferenceSession` on the CPU provider with sequential execution, one
inter-op thread and `intra_op_threads` intra-op threads, so N instances
running at once use about N * intra_op_threads cores (`default_threads`
splits the cores this process may use between the instances).

Before any session is built, the file's ONNX external data must lie inside its
folder (`security.model_files`): no `..`, absolute path or symlink out.

`run` blocks: it takes an idle session from a `queue.Queue` (waiting when all
are busy), runs it and gives it back, so at most N requests execute at once
and any number of threads may call it. `set_instances` builds new sessions
outside the pool lock and shrinks by dropping idle sessions as they come back.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from headrace.errors import (
    ConfigError,
    HeadraceError,
    InvalidInput,
    ModelLoadError,
    ModelNotReady,
    UnsafeModel,
)
from security.model_files import check_external_data

Shape = tuple[int | str | None, ...]
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(instances: int) -> int:
    """Intra-op threads per instance so that `instances` instances share this process's cores."""
    return max(1, _usable_cpus() // max(1, instances))


class OnnxModel:
    """A pool of ONNX Runtime sessions of one model file (implements `ModelRunner`)."""

    def __init__(
        self, model_file: Path, *, instances: int = 1, intra_op_threads: int | None = None
    ) -> None:
        if instances < 1:
            raise ConfigError(f"instances must be at least 1, not {instances}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ConfigError(f"intra_op_threads must be at least 1, not {intra_op_threads}")
        self._file = Path(model_file)
        self._fixed_threads = intra_op_threads
        self._lock = threading.Lock()
        self._idle: queue.Queue[ort.InferenceSession | None] = queue.Queue()  # None: closed
        self._target = instances  # the size the pool converges to
        self._live = 0  # sessions idle or running
        self._pending = 0  # sessions being built by set_instances
        self._closed = False

        self._check_external_data()
        threads = self._threads(instances)
        sessions = [self._new_session(threads) for _ in range(instances)]
        first = sessions[0]
        self.input_names = [i.name for i in first.get_inputs()]
        self.output_names = [o.name for o in first.get_outputs()]
        self.input_meta: dict[str, tuple[str, Shape]] = {
            i.name: (i.type, tuple(i.shape)) for i in first.get_inputs()
        }
        for session in sessions:
            self._idle.put(session)
        self._live = instances

    @property
    def instances(self) -> int:
        return self._target

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute on a free instance (waits for one); every output by name."""
        session = self._idle.get()
        if session is None:
            self._idle.put(None)  # wake the next waiter too
            raise ModelNotReady(f"model file {self._file.name!r} was unloaded")
        try:
            outputs = session.run(None, dict(inputs))
        except (InvalidArgument, ValueError) as exc:  # ValueError: a missing input
            raise InvalidInput(f"the model refused the input: {_strip_prefix(exc)}") from None
        except Exception as exc:
            raise HeadraceError(f"the model failed to execute: {_strip_prefix(exc)}") from exc
        finally:
            self._give_back(session)
        return dict(zip(self.output_names, outputs, strict=True))

    def set_instances(self, n: int) -> None:
        """Resize the pool to `n` sessions; busy sessions above `n` go when they come back.

        New sessions get `default_threads(n)` threads (unless fixed at construction);
        existing ones keep theirs.
        """
        if n < 1:
            raise ConfigError(f"instances must be at least 1, not {n}")
        with self._lock:
            if self._closed:
                raise ModelNotReady(f"model file {self._file.name!r} was unloaded")
            self._target = n
            missing = max(0, n - self._live - self._pending)
            self._pending += missing
            self._drop_idle_locked()
        created: list[ort.InferenceSession] = []
        try:
            threads = self._threads(n)
            for _ in range(missing):
                created.append(self._new_session(threads))
        finally:
            with self._lock:
                self._pending -= missing
                for session in created:
                    if not self._closed and self._live < self._target:
                        self._live += 1
                        self._idle.put(session)

    def close(self) -> None:
        """Drop idle sessions now and busy ones as they finish; `run` then raises ModelNotReady."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._target = 0
            self._drop_idle_locked()
            self._idle.put(None)

    def _threads(self, instances: int) -> int:
        return self._fixed_threads or default_threads(instances)

    def _give_back(self, session: ort.InferenceSession) -> None:
        with self._lock:
            if self._closed or self._live > self._target:
                self._live -= 1  # shrinking: let this one go
            else:
                self._idle.put(session)

    def _drop_idle_locked(self) -> None:
        while self._live > self._target:
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                return
            if session is None:
                self._idle.put(None)
                return
            self._live -= 1

    def _check_external_data(self) -> None:
        """Refuse (UnsafeModel) a file whose external data lies outside its folder."""
        if not self._file.is_file():
            return  # `_new_session` says so
        try:
            check_external_data(self._file)
        except UnsafeModel:
            raise
        except ModelLoadError:
            pass  # not ONNX at all: ONNX Runtime's own message says why, in `_new_session`

    def _new_session(self, threads: int) -> ort.InferenceSession:
        name = self._file.name
        if not self._file.is_file():
            raise ModelLoadError(f"cannot load model file {name!r}: it does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            return ort.InferenceSession(
                str(self._file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            reason = _strip_prefix(exc)
            for path in {str(self._file), str(self._file.absolute()), str(self._file.resolve())}:
                reason = reason.replace(path, name)  # never leak the server's folders
            raise ModelLoadError(f"cannot load model file {name!r}: {reason}") from None


def _strip_prefix(exc: Exception) -> str:
    """ONNX Runtime's message without its `[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : ` prefix."""
    return _ORT_PREFIX.sub("", str(exc)).strip() or type(exc).__name__
