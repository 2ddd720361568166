"""`headrace tune`: hyper-parameter search with NNI; the best trial's model is published.

`headrace tune --model lenet5 --dataset digits --tuner TPE --trials 8` starts an
NNI experiment (local training service; web UI on a free port, its URL
printed), prints each trial as it finishes and a summary table at the end, and
publishes the best trial. `--resume ID` continues a stopped experiment (flags
that contradict its stored settings are refused);
`headrace tune view ID` serves a finished experiment's web UI again. Ctrl-C,
SIGTERM and SIGHUP stop the experiment (node manager, tuner, trials) before exit.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from headrace.commands.options import FiniteFloatRange, build_config
from headrace.commands.tune_resume import check_resume_flags
from headrace.errors import ConfigError, JobCancelled
from headrace.settings import load_settings
from headrace.signals import stop_requested

TUNER_NAMES = ["TPE", "GP", "Anneal", "Random", "BOHB"]
ASSESSOR_NAMES = ["Medianstop", "Curvefitting"]
PORT = click.IntRange(1, 65_535)
"""A TCP port NNI can serve on (0 is no port to NNI: it needs the number up front)."""


def _experiment_dir(given: Path | None) -> Path:
    return given if given is not None else load_settings().runs_dir / "tune"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _params(params: dict[str, object]) -> str:
    def one(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key}={one(value)}" for key, value in sorted(params.items()))


def _table(rows: list[object], best: str | None = None) -> str:
    from training.tuning.runner import TrialRow

    lines = [f"  {'#':>3} {'trial':<8} {'status':<14} {'val loss':>9} {'val acc':>8}  params"]
    for row in rows:
        assert isinstance(row, TrialRow)
        mark = "*" if row.trial_id == best else " "
        lines.append(
            f"{mark} {row.sequence:>3} {row.trial_id:<8} {row.status:<14} "
            f"{_fmt(row.val_loss):>9} {_fmt(row.val_accuracy):>8}  {_params(row.params)}"
        )
    return "\n".join(lines)


def trial_line(number: int, total: int, row: object) -> str:
    """The line printed as a trial finishes; a failed trial's reason ends it."""
    from training.tuning.runner import TrialRow

    assert isinstance(row, TrialRow)
    line = (
        f"trial {number}/{total} {row.trial_id} {row.status}: "
        f"val loss {_fmt(row.val_loss)} acc {_fmt(row.val_accuracy)} {_params(row.params)}"
    )
    return line + (f" -- {row.error}" if row.error else "")


def _explicit(ctx: click.Context) -> dict[str, object]:
    """The parameters given on the command line (not left at their defaults), by name."""
    from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) in given}


def finished_line(report: object, experiment_dir: Path) -> str:
    """What `--resume` says of an experiment that already published its best trial."""
    from training.tuning.runner import TuneReport

    assert isinstance(report, TuneReport)
    return (
        f"experiment {report.experiment_id} had already finished: its best trial "
        f"{report.best_trial_id} (val loss {report.best_val_loss:.4f}, test accuracy "
        f"{report.test_accuracy:.4f}) was published as {report.name} version {report.version} "
        f"to {report.repository}; nothing was run or published again. See its trials with "
        f"`headrace tune view {report.experiment_id} --experiment-dir {experiment_dir}`, or "
        "start a new experiment (without --resume) to search further"
    )


@click.group("tune", invoke_without_command=True)
@click.option("--model", default="lenet5", show_default=True, help="Registered architecture.")
@click.option("--dataset", default="digits", show_default=True, help="digits, mnist or cifar10.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Folder of a file-based dataset (default HEADRACE_DATA_DIR).",
)
@click.option(
    "--tuner",
    type=click.Choice(TUNER_NAMES, case_sensitive=False),
    default="TPE",
    show_default=True,
    help="NNI tuner (BOHB is an advisor that also sets each trial's epochs).",
)
@click.option(
    "--assessor",
    type=click.Choice(ASSESSOR_NAMES, case_sensitive=False),
    help="Stop poor trials early from their per-epoch curves (default: none).",
)
@click.option("--trials", type=int, default=10, show_default=True, help="Trials in all.")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Trials at once.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Most epochs per trial.")
@click.option(
    "--search-space",
    type=click.Path(path_type=Path, dir_okay=False),
    help="NNI search space (JSON or YAML); default: learning rate, batch size, width, "
    "dropout, weight decay, optimizer (see docs/tuning.md).",
)
@click.option("--port", type=PORT, help="Web UI / REST port (default: a free port).")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    help="Model repository (default HEADRACE_MODEL_REPOSITORY or ./model_repository).",
)
@click.option("--name", help="Repository model name of the best trial (default MODEL-DATASET).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds splits, training, tuner."
)
@click.option(
    "--experiment-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where NNI keeps experiments and trial archives (default RUNS_DIR/tune).",
)
@click.option("--max-duration-s", type=int, help="Stop starting trials after this long.")
@click.option(
    "--experiment-id",
    help="Id of the new experiment (letters, digits, - and _; default a random one).",
)
@click.option("--resume", "resume_id", help="Continue the stopped experiment with this id.")
@click.option("--json", "as_json", is_flag=True, help="Print only the final report as JSON.")
def tune(
    model: str,
    dataset: str,
    data_dir: Path | None,
    tuner: str,
    assessor: str | None,
    trials: int,
    concurrency: int,
    epochs: int,
    search_space: Path | None,
    port: int | None,
    repository: Path | None,
    name: str | None,
    seed: int,
    experiment_dir: Path | None,
    max_duration_s: int | None,
    experiment_id: str | None,
    resume_id: str | None,
    as_json: bool,
) -> None:
    """Search hyper-parameters of MODEL on DATASET with NNI and publish the best trial.

    With the subcommand `view EXPERIMENT_ID`: serve a finished experiment's web UI.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    from training.config import TrainConfig
    from training.datasets import unread_folder
    from training.tuning.config import TuneConfig
    from training.tuning.runner import TrialRow, finished_report, load_tune_config, run_tuning
    from training.tuning.search_space import load_search_space

    stored = None
    if resume_id is not None:
        stored = load_tune_config(_experiment_dir(experiment_dir), resume_id)
        check_resume_flags(stored, resume_id, _explicit(click.get_current_context()))
        saved = finished_report(_experiment_dir(experiment_dir), resume_id)
        if saved is not None:
            click.echo(finished_line(saved, _experiment_dir(experiment_dir)), err=as_json)
            if as_json:
                click.echo(saved.model_dump_json())
            return
    if data_dir is not None and (problem := unread_folder(dataset, "--data-dir")) is not None:
        raise ConfigError(problem)  # HEADRACE_DATA_DIR is a default for every dataset: not it
    settings = load_settings()
    tuner = next(n for n in TUNER_NAMES if n.lower() == tuner.lower())
    if assessor is not None:
        assessor = next(n for n in ASSESSOR_NAMES if n.lower() == assessor.lower())
    train = build_config(
        TrainConfig,
        model=model,
        dataset=dataset,
        data_dir=data_dir or settings.data_dir,
        epochs=epochs,
        seed=seed,
        name=name,
        repository=repository or settings.model_repository,
        progress=False,
    )
    config = build_config(
        TuneConfig,
        train=train,
        tuner=tuner,
        assessor=assessor,
        trials=trials,
        concurrency=concurrency,
        search_space=load_search_space(search_space),
        experiment_dir=_experiment_dir(experiment_dir),
        port=port,
        max_duration_s=max_duration_s,
    )
    if resume_id is None:
        from training.tuning.tuners import check_available

        check_available(config.tuner)
    started: list[str] = []
    done: list[TrialRow] = []
    total = (stored or config).trials  # a resumed experiment keeps its own budget

    def on_started(experiment_id: str, url: str) -> None:
        started.append(experiment_id)
        click.echo(f"experiment {experiment_id}: web UI {url}", err=as_json)

    def on_trial(row: TrialRow) -> None:
        done.append(row)
        if as_json:
            return
        click.echo(trial_line(len(done), total, row))

    def resume_hint(how: str) -> None:
        if started:
            click.echo(
                f"stopped experiment {started[0]}{how}; continue it with "
                f"`headrace tune --resume {started[0]} --experiment-dir {config.experiment_dir}`",
                err=True,
            )

    with stop_requested() as stop:  # SIGTERM/SIGHUP: stop the experiment as Ctrl-C does
        try:
            report = run_tuning(
                config,
                resume_id=resume_id,
                experiment_id=experiment_id,
                on_started=on_started,
                on_trial=on_trial,
                should_stop=stop.is_set,
            )
        except KeyboardInterrupt:
            resume_hint("")
            raise click.Abort() from None
        except JobCancelled:
            if not stop.is_set():
                raise
            resume_hint(f" on {stop.name}")
            raise click.exceptions.Exit(stop.exit_code) from None
    if as_json:
        click.echo(report.model_dump_json())
        return
    click.echo(_table(list(report.trials), report.best_trial_id))
    click.echo(
        f"best trial {report.best_trial_id}: val loss {report.best_val_loss:.4f}, test accuracy "
        f"{report.test_accuracy:.4f}; published {report.name} version {report.version} "
        f"to {report.repository}"
    )


@tune.command("view")
@click.argument("experiment_id")
@click.option(
    "--experiment-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the experiment was kept (default RUNS_DIR/tune).",
)
@click.option("--port", type=PORT, help="Web UI port (default: a free port).")
@click.option(
    "--timeout-s",
    type=FiniteFloatRange(min=0, min_open=True),  # NaN or <= 0 stopped at once, exit 0
    help="Stop serving after this many seconds (default: until Ctrl-C).",
)
def view(
    experiment_id: str, experiment_dir: Path | None, port: int | None, timeout_s: float | None
) -> None:
    """Serve the web UI of a stopped EXPERIMENT_ID again, read-only, until Ctrl-C."""
    from training.tuning.nni_experiment import NniExperiment
    from training.tuning.runner import trial_row, viewed_row

    experiment = NniExperiment(_experiment_dir(experiment_dir), experiment_id)
    with stop_requested() as stop:  # SIGTERM/SIGHUP end the serving as Ctrl-C does
        try:
            experiment.view(port)
            click.echo(f"experiment {experiment_id}: web UI {experiment.url} (Ctrl-C to stop)")
            rows = [
                viewed_row(trial_row(experiment.folder, trial)) for trial in experiment.trials()
            ]
            click.echo(_table(list(rows)))
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                left = 0.2 if deadline is None else deadline - time.monotonic()
                time.sleep(min(0.2, max(0.0, left)))
        except KeyboardInterrupt:
            pass
        finally:
            experiment.stop()
