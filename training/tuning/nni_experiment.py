"""The one wrapper around NNI experiments (`nni.experiment.Experiment`, local training service).

`NniExperiment` starts, resumes or views an experiment whose files live in
`<experiment_dir>/<experiment_id>/` (NNI's database, logs, trial folders), reads
its status and trials over NNI's REST API (`/api/v1/nni/...`, on the web UI's
port) and stops its node manager. NNI's failures (port busy, node manager not
starting, an unknown experiment) come out as `TuningError` with a fix.

One process at a time runs an experiment's NNI manager: start, resume and view
hold a lock on `<experiment_id>/headrace.lock` until `stop`, and refuse an
experiment another process holds, or whose manager outlived a killed headrace.

NNI also lists every experiment in `~/nni-experiments/.experiment`; resume and
view register an experiment found in our folder there when it is missing (e.g.
after the folder was moved or HOME changed), so they work from the folder alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from headrace.errors import TuningError
from training.tuning.config import TuneConfig, check_experiment_id
from training.tuning.tuners import algorithm_configs, intermediate_metric, nni_search_space

TRIAL_MODULE = "training.tuning.nni_trial"
FINISHED = frozenset({"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"})
"""Trial states that will not change any more."""
ENDED = frozenset({"DONE", "STOPPED", "ERROR", "NO_MORE_TRIAL", "TUNER_NO_MORE_TRIAL"})
"""Experiment states in which no trial is waiting to be started."""
REST_TIMEOUT_S = 10.0
NNI_DATABASE = "db"
"""The folder NNI's manager creates in an experiment's folder; resume and view need it."""
LOCK_FILE = "headrace.lock"
"""Locked (flock) by the process whose NNI manager runs the experiment: a second manager on
the same database (`--resume` or `view` of a running experiment) ran every trial again and
published the best twice."""


class TrialInfo(BaseModel):
    """One trial as NNI's REST API lists it."""

    trial_id: str
    sequence: int = Field(description="NNI's trial number, from 0 in order of creation.")
    status: str
    params: dict[str, Any] = Field(default_factory=dict, description="As the tuner sent them.")
    final: float | None = Field(default=None, description="Final result's `default` value.")


def project_root() -> Path:
    """The folder holding the `training` package: trials run `python -m` from it."""
    return Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port the OS says is free now (NNI needs a number, not port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def trial_command(tune_file: Path) -> str:
    """The shell command NNI runs for each trial (this interpreter, our trial module)."""
    import shlex

    return f"{shlex.quote(sys.executable)} -m {TRIAL_MODULE} {shlex.quote(str(tune_file))}"


INCLUDE_INTERMEDIATE_RESULTS = {"includeIntermediateResults": True}
"""The config's `deprecated` section: NNI's manager then starts the dispatcher with
NNI_INCLUDE_INTERMEDIATE_RESULTS=true, and the dispatcher sends a trial the assessor stopped
to the tuner with its last per-epoch result as its final one. Without it (NNI 3.0's Python
config no longer writes the key) the tuner learns nothing from stopped trials, and TPE stays
in its random start-up when most trials are stopped. Only set when the per-epoch result is
the validation loss, the final result's own quantity (not Curvefitting's accuracy)."""


@functools.cache
def _config_class(include_intermediate_results: bool) -> Any:
    """NNI's ExperimentConfig; when asked, with the `deprecated` section in the JSON that
    NNI's launcher posts to its manager."""
    from nni.experiment import ExperimentConfig

    if not include_intermediate_results:
        return ExperimentConfig

    class HeadraceExperimentConfig(ExperimentConfig):
        def json(self) -> dict[str, Any]:
            return {**super().json(), "deprecated": dict(INCLUDE_INTERMEDIATE_RESULTS)}

    return HeadraceExperimentConfig


def _experiment_config(config: TuneConfig, experiment_id: str, tune_file: Path) -> Any:
    from nni.experiment.config.algorithm import AlgorithmConfig, CustomAlgorithmConfig

    exp = _config_class(intermediate_metric(config) == "val_loss")("local")
    exp.experiment_name = f"headrace {config.train.model_name}"
    exp.search_space = nni_search_space(config)
    exp.trial_command = trial_command(tune_file)
    exp.trial_code_directory = str(project_root())
    exp.trial_concurrency = config.concurrency
    exp.max_trial_number = config.trials
    if config.max_duration_s is not None:
        exp.max_experiment_duration = f"{config.max_duration_s}s"
    exp.experiment_working_directory = str(config.experiment_root)
    exp.log_level = "info"
    for section, values in algorithm_configs(config, project_root()).items():
        kind = CustomAlgorithmConfig if "class_name" in values else AlgorithmConfig
        setattr(exp, section, kind(**values))
    return exp


class NniExperiment:
    """One NNI experiment under our experiment folder."""

    def __init__(self, root: Path, experiment_id: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.experiment_id = check_experiment_id(experiment_id)
        self._experiment: Any = None
        self._lock_fd: int | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.experiment_id

    @property
    def port(self) -> int | None:
        return None if self._experiment is None else self._experiment.port

    @property
    def url(self) -> str:
        """The web UI's address."""
        if self.port is None:
            raise TuningError(f"experiment {self.experiment_id} is not running")
        return f"http://127.0.0.1:{self.port}/oview"

    @property
    def pid(self) -> int | None:
        """The node manager's process id while it runs."""
        proc = None if self._experiment is None else self._experiment._proc
        return None if proc is None else int(proc.pid)

    # -- starting ------------------------------------------------------------------------

    def start(self, config: TuneConfig, tune_file: Path, port: int | None = None) -> None:
        """Create and start the experiment (its web UI on `port`, else a free port)."""
        from nni.experiment import Experiment

        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            experiment = Experiment(
                _experiment_config(config, self.experiment_id, tune_file), id=self.experiment_id
            )
            self._launch(experiment, port)

    def resume(self, port: int | None = None) -> None:
        """Resume a stopped experiment of our folder; trials continue up to its trial budget."""
        self._require_database()
        with self._locked():
            self._refuse_orphaned_manager()
            experiment = self._stopped_experiment()
            experiment._action = "resume"
            self._launch(experiment, port)

    def view(self, port: int | None = None) -> None:
        """Serve a stopped experiment's web UI (read-only) until `stop`."""
        self._require_database()
        with self._locked():
            self._refuse_orphaned_manager()
            experiment = self._stopped_experiment()
            experiment._action = "view"
            self._launch(experiment, port)

    def _require_database(self) -> None:
        if not (self.folder / NNI_DATABASE).is_dir():
            raise TuningError(
                f"no experiment {self.experiment_id!r} in {self.root}: pass the "
                "--experiment-dir it was started with (see the folders there)"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Take the experiment's lock (`LOCK_FILE`) for as long as its NNI manager runs; give it
        back if starting fails. `stop` gives it back otherwise. The OS drops the lock when this
        process ends, however it ends."""
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "pid unknown"
            os.close(fd)
            raise TuningError(
                f"experiment {self.experiment_id} is in use by another headrace process "
                f"({holder}): wait for it to end, or stop it (Ctrl-C there), and try again"
            ) from None
        self._lock_fd = fd
        self._write_lock(f"pid {os.getpid()}")
        try:
            yield
        except BaseException:
            self._unlock()
            raise
        self._write_lock(f"pid {os.getpid()}, web UI {self.url}")

    def _refuse_orphaned_manager(self) -> None:
        """TuningError if an NNI manager still runs this experiment though no process holds its
        lock: the headrace process that started it was killed (SIGKILL, the OOM killer), and
        the detached manager went on. A second manager on the same database would run the
        trials again; the user decides whether to stop the first."""
        import psutil  # NNI's own dependency

        for process in psutil.process_iter(["pid", "cmdline"]):
            args = process.info["cmdline"] or []
            if not any(str(arg).endswith("main.js") for arg in args):
                continue
            flags = dict(zip(args, args[1:], strict=False))
            where = flags.get("--experiments-directory")
            if flags.get("--experiment-id") != self.experiment_id or where is None:
                continue
            if Path(where).expanduser().resolve() != self.root:
                continue
            pid, port = process.info["pid"], flags.get("--port", "?")
            raise TuningError(
                f"experiment {self.experiment_id} is still run by an NNI manager (pid {pid}, web "
                f"UI http://127.0.0.1:{port}/oview) that a headrace process left behind when it "
                f"was killed: stop it (`kill {pid}`) and try again"
            )

    def _write_lock(self, holder: str) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, holder.encode(), 0)

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def _stopped_experiment(self) -> Any:
        from nni.experiment import Experiment
        from nni.experiment.launcher import get_stopped_experiment_config_json
        from nni.tools.nnictl.config_utils import Experiments

        manifest = Experiments()
        if self.experiment_id not in manifest.get_all_experiments():
            manifest.add_experiment(
                self.experiment_id, 0, int(time.time() * 1000), "local", "headrace",
                status="STOPPED", logDir=str(self.root),
            )  # fmt: skip
        try:
            stored = get_stopped_experiment_config_json(self.experiment_id, str(self.root))
            if stored is None:
                raise ValueError("no config in its database")
            deprecated = stored.pop("deprecated", None) or {}  # NNI's class has no such field
            config = _config_class(bool(deprecated.get("includeIntermediateResults")))(**stored)
        except Exception as exc:  # NNI raises ValueError, AttributeError or sqlite errors
            raise TuningError(
                f"experiment {self.experiment_id!r} in {self.root} cannot be read ({exc})"
            ) from None
        config.experiment_working_directory = str(self.root)
        experiment = Experiment(config, id=self.experiment_id)
        return experiment

    def _launch(self, experiment: Any, port: int | None) -> None:
        """Start NNI's node manager detached: its output (and the tuner's and the trials')
        goes to the experiment's log folder, not to our terminal; `stop` ends it."""
        from nni.experiment import RunMode
        from nni.runtime.log import silence_stdout

        silence_stdout()
        chosen = port if port is not None else free_port()
        if _port_busy(chosen):
            raise TuningError(
                f"port {chosen} is in use: pass another --port (or none for a free one)"
            )
        try:
            experiment.start(chosen, run_mode=RunMode.Detach)
        except Exception as exc:  # NNI raises RuntimeError, requests errors, ...
            with contextlib.suppress(Exception):
                experiment.stop()
            raise TuningError(
                f"NNI's experiment manager did not start on port {chosen} ({exc}); see "
                f"{self.folder / 'log'} (nnimanager.log) for its own message"
            ) from None
        self._experiment = experiment

    # -- watching ------------------------------------------------------------------------

    def _get(self, api: str) -> Any:
        if self.port is None:
            raise TuningError(f"experiment {self.experiment_id} is not running")
        url = f"http://127.0.0.1:{self.port}/api/v1/nni/{api}"
        try:
            with urllib.request.urlopen(url, timeout=REST_TIMEOUT_S) as response:
                return json.loads(response.read())
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, bad JSON
            raise TuningError(
                f"NNI's experiment manager stopped answering ({type(exc).__name__}); see "
                f"{self.folder / 'log'}"
            ) from None

    def status(self) -> str:
        """NNI's experiment status (RUNNING, DONE, NO_MORE_TRIAL, ERROR, ...)."""
        return str(self._get("check-status")["status"])

    def error(self) -> str:
        """NNI's error message when the status is ERROR (often the tuner's traceback tail)."""
        errors = self._get("check-status").get("errors") or []
        return "; ".join(str(e) for e in errors)[-500:]

    def trials(self) -> list[TrialInfo]:
        """Every trial NNI knows of, in creation order."""
        listed: list[TrialInfo] = []
        for job in self._get("trial-jobs"):
            params: dict[str, Any] = {}
            forms = job.get("hyperParameters") or []
            if forms:
                params = dict(json.loads(forms[-1]).get("parameters") or {})
            final = None
            finals = job.get("finalMetricData") or []
            if finals:
                value = json.loads(finals[-1]["data"])
                if isinstance(value, str):
                    value = json.loads(value)
                final = float(value["default"] if isinstance(value, dict) else value)
            listed.append(
                TrialInfo(
                    trial_id=job["trialJobId"],
                    sequence=int(job.get("sequenceId", len(listed))),
                    status=job["status"],
                    params=params,
                    final=final,
                )
            )
        return sorted(listed, key=lambda t: t.sequence)

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the node manager (and with it any running trial); safe to call twice."""
        experiment, self._experiment = self._experiment, None
        if experiment is None:
            return
        logging.getLogger("nni").setLevel(logging.CRITICAL)  # its stop logs to stdout
        try:
            with contextlib.suppress(Exception):
                experiment.stop()
        finally:
            self._unlock()


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0
