"""`headrace tune --resume ID`: flags given beside it must not contradict the experiment.

A resumed experiment runs with the settings it was started with
(`headrace-tune.json`); NNI's database holds its search space, tuner and trial
budget. A flag given explicitly with `--resume` whose value differs from the stored
one would be silently ignored, so it is refused, every such flag named at once.
`--port`, `--experiment-dir` and `--json` only say where and how to run, and are
taken as given. `--trials` is refused too: NNI can raise a resumed experiment's
trial budget, but headrace's report and tuner state would then disagree with
`headrace-tune.json`; start a new experiment instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headrace.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports this module at start; training loads only when used
    from training.tuning.config import TuneConfig

Getter = Callable[["TuneConfig"], Any]

STORED: dict[str, tuple[str, Getter]] = {
    "model": ("--model", lambda c: c.train.model),
    "dataset": ("--dataset", lambda c: c.train.dataset),
    "data_dir": ("--data-dir", lambda c: c.train.data_dir),
    "tuner": ("--tuner", lambda c: c.tuner),
    "assessor": ("--assessor", lambda c: c.assessor),
    "trials": ("--trials", lambda c: c.trials),
    "concurrency": ("--concurrency", lambda c: c.concurrency),
    "epochs": ("--epochs", lambda c: c.train.epochs),
    "search_space": ("--search-space", lambda c: c.search_space),
    "repository": ("--repository", lambda c: c.train.repository),
    "name": ("--name", lambda c: c.train.model_name),
    "seed": ("--seed", lambda c: c.train.seed),
    "max_duration_s": ("--max-duration-s", lambda c: c.max_duration_s),
}
"""`headrace tune` parameter -> (its flag, the value the resumed experiment keeps)."""


def _comparable(key: str, value: Any) -> Any:
    """A flag's or a stored value in one form: absolute paths, tuner names in any case,
    a search space file as its validated content."""
    if value is None:
        return None
    if key in {"data_dir", "repository"}:
        return Path(value).expanduser().resolve()
    if key in {"tuner", "assessor"}:
        return str(value).lower()
    if key == "search_space" and not isinstance(value, dict):
        from training.tuning.search_space import load_search_space

        return load_search_space(Path(value))
    return value


def resume_conflicts(stored: TuneConfig, resume_id: str, given: Mapping[str, Any]) -> list[str]:
    """`--flag VALUE (experiment: STORED)` for each given parameter that differs from `stored`.

    `given` holds the parameters given explicitly on the command line, by parameter name.
    """
    conflicts = []
    experiment_id = given.get("experiment_id")
    if experiment_id is not None and experiment_id != resume_id:
        conflicts.append(f"--experiment-id {experiment_id} (resuming: {resume_id})")
    for key, (flag, getter) in STORED.items():
        if key not in given:
            continue
        kept = getter(stored)
        if _comparable(key, given[key]) == _comparable(key, kept):
            continue
        if key == "search_space":
            conflicts.append(f"{flag} {given[key]} (not the experiment's search space)")
        else:
            conflicts.append(
                f"{flag} {given[key]} (experiment: {'none' if kept is None else kept})"
            )
    return conflicts


def check_resume_flags(stored: TuneConfig, resume_id: str, given: Mapping[str, Any]) -> None:
    """ConfigError naming every flag that contradicts the experiment being resumed."""
    conflicts = resume_conflicts(stored, resume_id, given)
    if conflicts:
        raise ConfigError(
            f"--resume {resume_id} continues the experiment with the settings it was started "
            "with; these flags differ from them and cannot change on resume: "
            + "; ".join(conflicts)
            + ". Drop them (only --port, --experiment-dir and --json may be given), or start "
            "a new experiment without --resume"
        )
