"""Which model versions are loaded and ready, with hot reload from the repository.

A `VersionPolicy` (Triton's: latest N, all, specific) selects each model's versions.
`load(name)` loads the selected versions not loaded yet (or published again under their
number since they were loaded), then retires the others: load
before unload, so an update never leaves a model dark. If no selected version loads
(say a tampered file), the versions already serving stay and the error goes to
`failures()` (and to the `on_load_failure` hook, once per change of the files).
Integrity checks (sha256, then `security.model_files`: no external data or link
reaching outside the version folder) and session building run in worker threads.

A retired version leaves the ready set at once, so new requests go to the new one,
while its batcher drains in the background. `get()` hands out a `LoadedVersion`:
submit to its batcher before the next `await` (as the dataplane does) and the request
is part of that drain. Changes to one model happen under that model's `asyncio.Lock`;
the ready map is replaced, never mutated, so other threads (metrics) may read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import NoReturn

from headrace.errors import (
    HeadraceError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    RepositoryError,
    ShuttingDown,
    UnsafeModel,
)
from security.model_files import check_version_files
from serving.batcher import BatchTiming, DynamicBatcher
from serving.interfaces import ModelRunner, RunnerFactory
from serving.model_config import ModelConfig, VersionMetadata
from serving.onnx_interface import interface_problems
from serving.repository import (
    METADATA_FILE,
    MODEL_FILE,
    ModelRepository,
    ModelVersion,
    version_config,
)
from serving.runner import OnnxModel
from serving.validation import non_finite_problem
from serving.version_policy import VersionPolicy
from serving.version_stamps import FileStamp, Stamp, file_stamp, folder_stamp, metadata_stamp

log = logging.getLogger(__name__)
ExecuteHook = Callable[[str, int, BatchTiming], None]  # (model, version, batch) per executed batch
LoadFailureHook = Callable[[str, int, str], None]  # (model, version, reason) per refused load
REMOVED = "version_removed"  # load failure reason: the version's folder or files were deleted
MAX_VERSION_DIGITS = 18  # a version is an int64, as in Triton
# Said when the repository's own folder is missing (an unmounted volume, a network filesystem
# outage, a folder moved away): no model can be read, which is not the same as every model
# having been deleted, so nothing is unloaded. No path: the message may reach a client.
REPOSITORY_GONE = (
    "the model repository's folder cannot be found (is its volume mounted?); the loaded "
    "models keep serving as they are until it is back"
)


@dataclass
class LoadedVersion:
    """One ready model version: its config, its sessions and the batcher in front of them."""

    name: str
    version: int
    config: ModelConfig
    metadata: VersionMetadata
    model: ModelRunner
    batcher: DynamicBatcher
    published: FileStamp | None = None  # its metadata.json when loaded: see `_republished`


@dataclass(frozen=True)
class _Failure:
    stamp: Stamp  # the version folder's files and config.json when the load failed
    message: str


class ModelManager:
    """Loads, serves and retires model versions of one repository (see the module docstring)."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        policy: VersionPolicy | None = None,
        batching: bool = True,
        instances_override: int | None = None,
        on_change: Callable[[str, list[int]], None] | None = None,
        runner_factory: RunnerFactory = OnnxModel,
        on_execute: ExecuteHook | None = None,
        on_load_failure: LoadFailureHook | None = None,
    ) -> None:
        self.repository = repository
        self.policy = policy or VersionPolicy()
        self.batching = batching
        self.instances_override = instances_override
        self._on_change = on_change
        self._runner_factory = runner_factory
        self._on_execute = on_execute
        self._on_load_failure = on_load_failure
        self._ready: dict[str, dict[int, LoadedVersion]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, str] = {}
        self._failed: dict[tuple[str, int], _Failure] = {}
        self._in_repository: dict[str, list[int]] = {}  # each model's versions at its last sync
        self._unloaded: set[str] = set()  # unloaded on request: polling leaves them alone
        self._overrides: dict[str, ModelConfig] = {}  # load-time config overrides, by model
        self._retiring: set[asyncio.Task[None]] = set()
        self._folder_found = True  # the repository's folder, at the last poll
        self._closed = False

    # -- control -------------------------------------------------------------------------

    async def load(self, name: str, config: ModelConfig | None = None) -> list[int]:
        """Load the policy's versions of `name`, then retire the others; the ready versions.

        `config` (Triton's load-time override, see `serving.config_override`) replaces the
        model's config.json for this server until a load without one or an unload; the
        versions already loaded are reloaded with it, and versions published meanwhile
        load with it. Raises ModelLoadError (after keeping what could be loaded) if a
        selected version failed.
        """
        self._check_open()
        async with self._lock(name):
            self._unloaded.discard(name)
            if config is None:
                self._overrides.pop(name, None)
            else:
                self._overrides[name] = config
            return await self._sync(name, retry_failed=True)

    async def unload(self, name: str) -> None:
        """Stop serving `name`; returns once the requests already queued on it have finished."""
        if name not in self._ready and not self._known(name):
            raise ModelNotFound(f"model {name!r} not found; {self._available()}")
        async with self._lock(name):
            self._unloaded.add(name)
            self._overrides.pop(name, None)
            self._failures.pop(name, None)
            retiring = self._retire(name, {})
        if retiring:
            await asyncio.wait(retiring)  # not gather: a cancelled caller must not stop a drain

    async def load_all(self) -> None:
        """Load every model of the repository; one model's failure does not stop the others."""
        self._check_open()
        names = await asyncio.to_thread(self.repository.list_models)
        await asyncio.gather(*(self._quietly(name, poll=False) for name in names))

    async def poll_once(self) -> None:
        """Bring the loaded state in line with the repository: new versions in, removed ones out.

        Models unloaded on request stay unloaded; a version that failed is retried only
        once its files change. While the repository's folder is missing nothing changes
        (see REPOSITORY_GONE; logged once).
        """
        self._check_open()
        if not await self._repository_folder_found():
            return
        names = set(await asyncio.to_thread(self.repository.list_models))
        await asyncio.gather(
            *(self._quietly(n, poll=True) for n in sorted(names | set(self._ready)))
        )

    async def run_polling(
        self,
        interval_s: float,
        stop: asyncio.Event,
        after_each: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`poll_once` (then `after_each`) every `interval_s` until `stop` is set or the
        manager closes."""
        while not stop.is_set() and not self._closed:
            try:
                await self.poll_once()
                if after_each is not None:
                    await after_each()
            except Exception:  # a failed poll must not end hot reload for good
                log.exception("polling the model repository failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def close(self) -> None:
        """Unload everything, letting queued requests finish."""
        self._closed = True
        for name in sorted(set(self._ready) | set(self._locks)):  # also models mid-load
            async with self._lock(name):
                self._retire(name, {})
        if self._retiring:
            await asyncio.wait(set(self._retiring))

    # -- lookups -------------------------------------------------------------------------

    def get(self, name: str, version: str | int | None = None) -> LoadedVersion:
        """A ready version; `None` or "" means the latest ready one."""
        versions = self._ready.get(name)
        if not versions:
            if name in self._failures:
                raise ModelNotReady(f"model {name!r} is not ready: {self._failures[name]}")
            if name in self._unloaded:
                raise ModelNotReady(f"model {name!r} is not loaded; load it first")
            if self._known(name):  # published since the last scan, or loading right now
                raise ModelNotReady(
                    f"model {name!r} is in the repository but not loaded yet: it loads at the "
                    "next repository scan (or with an explicit load); send the request again "
                    "shortly"
                )
            raise ModelNotFound(f"model {name!r} not found; {self._available()}")
        if version is None or version == "":
            return versions[max(versions)]
        number = version if isinstance(version, int) else _int_or_none(version)
        if number in versions:
            return versions[number]
        ready = ", ".join(map(str, sorted(versions)))
        failure = self._failed.get((name, number)) if number is not None else None
        if failure is not None:
            raise ModelNotReady(f"{failure.message}; ready versions: {ready}")
        in_repository = self._in_repository.get(name, [])
        if number in in_repository and number not in self.policy.select(in_repository):
            raise ModelNotFound(
                f"model {name!r} version {number} is not served (version policy "
                f"{self.policy.describe()}; ready versions: {ready}); ask for a ready version, "
                "or leave the version out for the latest"
            )
        raise ModelNotFound(f"model {name!r} has no ready version {version}; versions: {ready}")

    def ready(self, name: str, version: str | int | None = None) -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return True

    def loaded(self) -> dict[str, list[int]]:
        """Model name -> its ready versions (ascending)."""
        return {name: sorted(versions) for name, versions in self._ready.items() if versions}

    def failures(self) -> dict[str, str]:
        """Model name -> the last load error of that model."""
        return dict(self._failures)

    def refused_versions(self, name: str) -> dict[int, str]:
        """Versions of `name` the policy selects that failed to load (and are not served),
        with why; kept until their files change or they leave the repository."""
        selected = set(self.policy.select(self._in_repository.get(name, [])))
        served = self._ready.get(name, {})
        return {
            version: failure.message
            for (model, version), failure in self._failed.items()
            if model == name and version in selected and version not in served
        }

    # -- internals -----------------------------------------------------------------------

    async def _sync(self, name: str, *, retry_failed: bool) -> list[int]:
        """Load the selected versions, retire the rest (caller holds the model's lock)."""
        if not await asyncio.to_thread(self.repository.root.is_dir):
            raise RepositoryError(REPOSITORY_GONE)  # not a deleted model: nothing is retired
        available: list[int] = []
        try:
            available = await asyncio.to_thread(self.repository.versions, name)
        except ModelNotFound:  # the model left the repository
            self._failures.pop(name, None)
            self._retire(name, {})
            raise
        finally:
            self._in_repository[name] = available
            for key in [k for k in self._failed if k[0] == name and k[1] not in available]:
                del self._failed[key]  # forget failures of versions that are gone
        selected = self.policy.select(available)
        errors: list[str] = []
        missing = sorted(set(self.policy.versions) - set(available))
        if self.policy.kind == "specific" and missing:
            listed = ", ".join(map(str, missing))
            errors.append(f"model {name!r}: version policy asks for version(s) {listed}, not found")
        current = dict(self._ready.get(name, {}))
        edited = None
        if retry_failed:
            try:
                edited = await self._edited_config(name, current)
            except RepositoryError as exc:  # the loaded versions keep serving as they are
                errors.append(
                    f"{exc.message}; the loaded version(s) keep serving with the config they "
                    "were loaded with"
                )
        republished = await asyncio.to_thread(self._republished, name, current)
        replaced: list[LoadedVersion] = []
        # What the autoscaler has grown the served versions to: a new version starts there
        # (see `_open`), or a rollout under load would drop to config.instance_count.
        scaled_to = max((v.model.instances for v in current.values()), default=0)
        for version in selected:
            if (
                version in current
                and version not in republished
                and (
                    edited is None
                    or current[version].config == version_config(edited, current[version].metadata)
                )
            ):
                continue
            known = None if retry_failed else self._failed.get((name, version))
            try:
                loaded = await self._load_version(name, version, known, scaled_to)
            except HeadraceError as exc:
                errors.append(exc.message)
                if known is None or known.message != exc.message:  # say it once per change
                    log.warning("model %s version %d not loaded: %s", name, version, exc.message)
                continue
            except Exception as exc:  # a bug or OS error: keep serving the other versions
                log.exception("model %s version %d not loaded", name, version)
                errors.append(f"model {name!r} version {version}: {type(exc).__name__}")
                continue
            if version in current:  # reloaded: an edited config.json, or published again
                replaced.append(current[version])
            current[version] = loaded
            self._publish(name, dict(current))  # ready now; older versions still serve
        for old in replaced:
            self._close_later(old)
        still_there = {v: loaded for v, loaded in current.items() if v in available}
        keep = {v: loaded for v, loaded in still_there.items() if v in selected}
        self._retire(name, keep or still_there)  # nothing selected loaded: keep what serves
        if errors:
            self._failures[name] = "; ".join(errors)
            raise ModelLoadError(self._failures[name])
        self._failures.pop(name, None)
        return sorted(keep)

    async def _load_version(
        self, name: str, version: int, known: _Failure | None, scaled_to: int = 0
    ) -> LoadedVersion:
        found, model, published = await asyncio.to_thread(
            self._open, name, version, known, scaled_to
        )
        config = found.config
        hook = self._on_execute
        try:
            batcher = DynamicBatcher(
                model.run,
                max_batch_size=config.max_batch_size,
                max_queue_delay_us=config.dynamic_batching.max_queue_delay_us,
                preferred_batch_sizes=config.dynamic_batching.preferred_batch_sizes,
                max_queue_size=config.dynamic_batching.max_queue_size,
                concurrency=model.instances,
                enabled=self.batching,
                name=f"{name}/{version}",
                on_batch=None if hook is None else partial(hook, name, version),
                screen=non_finite_problem if config.reject_non_finite else None,
            )
        except HeadraceError as exc:  # settings the batcher refuses (ConfigError)
            model.close()
            raise ModelLoadError(f"model {name!r} version {version}: {exc.message}") from exc
        log.info("model %s version %d loaded (%d instances)", name, version, model.instances)
        return LoadedVersion(name, version, config, found.metadata, model, batcher, published)

    def _open(
        self, name: str, version: int, known: _Failure | None, scaled_to: int = 0
    ) -> tuple[ModelVersion, ModelRunner, FileStamp | None]:
        """Blocking: verify one version's files and build its sessions (in a worker thread);
        also the stamp of its metadata.json. An autoscaled model starts with the instances
        its served versions were scaled to (`scaled_to`), within its autoscaling bounds."""
        prefix = f"model {name!r} version {version}"
        try:
            stamp = folder_stamp(self.repository.version_dir(name, version))
        except OSError:
            unreadable = f"{prefix}: its folder cannot be read"
            if self.repository.removed(name, version) is None:
                raise ModelLoadError(unreadable) from None
            self._refuse(name, version, (), unreadable, "model_load_failed", ModelLoadError)
        if known is not None and known.stamp == stamp:
            raise ModelLoadError(known.message)  # same files as last time: same failure
        try:
            found = self.repository.get(name, version)
        except (RepositoryError, ModelNotFound) as exc:  # e.g. an invalid config.json: kept
            self._refuse(name, version, stamp, exc.message, exc.reason, ModelLoadError)
        override = self._overrides.get(name)
        if override is not None:
            found = replace(found, config=version_config(override, found.metadata))
        error: type[ModelLoadError] = ModelLoadError
        reason = "integrity_check_failed"
        try:
            found.verify()
            check_version_files(found.path, MODEL_FILE, found.metadata.sha256)
        except UnsafeModel as exc:
            message = f"{prefix}: {exc.message} (unsafe model files; the version is refused)"
            error, reason = UnsafeModel, exc.reason
        except ModelLoadError as exc:  # not ONNX at all
            message, reason = f"{prefix}: {exc.message}", exc.reason
        except (RepositoryError, OSError) as exc:
            detail = exc.message if isinstance(exc, RepositoryError) else "files unreadable"
            message = f"{detail} (integrity check failed; the version is refused)"
        else:
            instances = self.instances_override or found.config.instance_count
            scaling = found.config.autoscaling
            if self.instances_override is None and scaling is not None:
                instances = min(max(instances, scaled_to), scaling.max_instances)
            try:
                model = self._runner_factory(found.model_file, instances=instances)
            except ModelLoadError as exc:
                message, reason = f"{prefix}: {exc.message}", exc.reason
            else:
                problems = _interface_problems(found.config, model)
                if not problems:
                    self._failed.pop((name, version), None)
                    return found, model, metadata_stamp(stamp)
                model.close()
                message = (
                    f"{prefix}: its {MODEL_FILE} does not match the model's config.json: "
                    f"{'; '.join(problems)} (the version is refused)"
                )
                reason = "interface_mismatch"
        self._refuse(name, version, stamp, message, reason, error, found.metadata.sha256)

    def _refuse(
        self,
        name: str,
        version: int,
        stamp: Stamp,
        message: str,
        reason: str,
        error: type[ModelLoadError],
        files: Iterable[str] = (MODEL_FILE,),
    ) -> NoReturn:
        """Remember why a version failed (until its files change) and raise it. A version
        whose folder or files (`files`: those its metadata.json records) were deleted while it
        loaded failed whichever check met the gap first: it is refused as removed (REMOVED),
        not as corrupt, tampered or broken."""
        gone = self.repository.removed(name, version, files)
        if gone is not None:
            reason, error = REMOVED, ModelLoadError
            message = (
                f"model {name!r} version {version} was removed from the repository while it "
                "was loading; it is not served"
                if gone == METADATA_FILE
                else f"model {name!r} version {version}: its {gone} was deleted (a publish never "
                "leaves it out); the version is not served; publish the model again"
            )
        self._failed[(name, version)] = _Failure(stamp, message)
        if self._on_load_failure is not None:
            try:
                self._on_load_failure(name, version, reason)
            except Exception:
                log.exception("on_load_failure callback failed for model %s", name)
        raise error(message)

    def _retire(self, name: str, keep: dict[int, LoadedVersion]) -> set[asyncio.Task[None]]:
        """Serve only `keep`; drain and close the other versions in the background."""
        gone = [v for n, v in self._ready.get(name, {}).items() if n not in keep]
        self._publish(name, keep)
        return {self._close_later(v) for v in gone}

    def _close_later(self, loaded: LoadedVersion) -> asyncio.Task[None]:
        task = asyncio.create_task(self._close_version(loaded))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    def _republished(self, name: str, current: dict[int, LoadedVersion]) -> set[int]:
        """Blocking: the loaded versions whose folder now holds another publish. A deleted
        version's number is given again to the next publish, so a folder replaced between two
        polls kept serving the deleted weights under the new version's number."""
        changed = set()
        for number, loaded in current.items():
            if loaded.published is None:
                continue
            with contextlib.suppress(OSError):  # a folder gone: `_sync` retires it
                path = self.repository.version_dir(name, number) / METADATA_FILE
                if file_stamp(path) != loaded.published:
                    changed.add(number)
        return changed

    async def _edited_config(
        self, name: str, current: dict[int, LoadedVersion]
    ) -> ModelConfig | None:
        """For an explicit load: the model's config.json (or its load-time override) when it
        differs from the one its
        loaded versions run with (they are then reloaded, as Triton does), else None; a
        RepositoryError when it is invalid (an explicit load must say so, not answer OK)."""
        if not current:
            return None
        config = self._overrides.get(name)
        if config is None:
            config = await asyncio.to_thread(self.repository.config, name)
        unchanged = all(v.config == version_config(config, v.metadata) for v in current.values())
        return None if unchanged else config

    async def _close_version(self, loaded: LoadedVersion) -> None:
        try:
            await loaded.batcher.close(drain=True)
        except Exception:
            log.exception("draining model %s version %d failed", loaded.name, loaded.version)
        finally:
            await asyncio.to_thread(loaded.model.close)
        log.info("model %s version %d unloaded", loaded.name, loaded.version)

    def _publish(self, name: str, versions: dict[int, LoadedVersion]) -> None:
        before = sorted(self._ready.get(name, {}))
        if versions:
            self._ready = {**self._ready, name: versions}
        else:
            self._ready = {n: v for n, v in self._ready.items() if n != name}
        after = sorted(versions)
        if after != before and self._on_change is not None:
            try:
                self._on_change(name, after)
            except Exception:
                log.exception("on_change callback failed for model %s", name)

    async def _quietly(self, name: str, poll: bool) -> None:
        """Load (or, polling, sync) one model; errors are logged and kept in failures()."""
        try:
            if not poll:
                await self.load(name)
                return
            async with self._lock(name):
                if name not in self._unloaded and not self._closed:
                    await self._sync(name, retry_failed=False)
        except HeadraceError as exc:
            log.debug("model %s: %s", name, exc.message)
        except Exception:
            log.exception("loading model %s failed", name)

    async def _repository_folder_found(self) -> bool:
        """Whether the repository's folder is there; a change is logged (once, not per poll)."""
        found = await asyncio.to_thread(self.repository.root.is_dir)
        if found != self._folder_found:
            self._folder_found = found
            if found:
                log.info("model repository %s is back; polling resumes", self.repository.root)
            else:
                log.warning("model repository %s: %s", self.repository.root, REPOSITORY_GONE)
        return found

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _known(self, name: str) -> bool:
        """Whether the repository has `name` (only asked on error paths: it reads the disk)."""
        if name in self._unloaded:
            return True
        try:
            self.repository.versions(name)
        except HeadraceError:
            return False
        return True

    def _available(self) -> str:
        names = sorted(self.loaded())
        return f"ready models: {', '.join(names)}" if names else "no model is ready"

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown("the model manager is closed")


def _int_or_none(text: str) -> int | None:
    """The version number a request's version string names, or None when it names none.
    A client's string: only ASCII digits (str.isdecimal takes any script's, and int() of
    more than 4,300 digits raises ValueError, which reached clients as an internal error
    and stopped a stream worker for good), at most MAX_VERSION_DIGITS of them."""
    digits = text.strip()
    if not digits.isascii() or not digits.isdigit() or len(digits) > MAX_VERSION_DIGITS:
        return None
    return int(digits)


def _interface_problems(config: ModelConfig, model: ModelRunner) -> list[str]:
    """`interface_problems` of a runner that knows its tensors (ONNX Runtime's does)."""
    inputs = getattr(model, "input_meta", None)
    outputs = getattr(model, "output_names", None)
    if inputs is None or outputs is None:
        return []
    return interface_problems(config, inputs, outputs)
