"""`headrace broker start|stop|status`: the embedded Kafka-protocol broker for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic import BaseModel

from headrace.errors import HeadraceError
from headrace.settings import load_settings

STATE_FILE = "broker.json"


class BrokerState(BaseModel):
    """What `broker start` records so `stop` and `status` find the process."""

    pid: int
    host: str
    port: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        """Whether the recorded process is still that broker (its pid may belong to another
        process by now)."""
        from streams.broker import broker_alive

        return broker_alive(self.pid, self.host, self.port)


def _state_path(state_dir: Path | None) -> Path:
    return (state_dir or load_settings().state_dir) / STATE_FILE


def read_state(path: Path) -> BrokerState | None:
    """The recorded broker, or None when there is no (valid) record."""
    try:
        return BrokerState.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def unreachable(bootstrap: str) -> HeadraceError:
    """The error of a command that cannot reach Kafka."""
    return HeadraceError(
        f"cannot reach Kafka at {bootstrap}; start the embedded broker with "
        "`headrace broker start` or set HEADRACE_KAFKA_BOOTSTRAP"
    )


def answering_bootstrap(flag: str | None, timeout_s: float = 5.0) -> str:
    """`resolve_bootstrap(flag)`, once those servers answer a metadata request."""
    from streams.broker import answers_metadata

    bootstrap = resolve_bootstrap(flag)
    if not answers_metadata(bootstrap, timeout_s=timeout_s):
        raise unreachable(bootstrap)
    return bootstrap


def resolve_bootstrap(flag: str | None) -> str:
    """Bootstrap servers: the flag, else HEADRACE_KAFKA_BOOTSTRAP, else the embedded broker."""
    settings = load_settings()
    if flag or settings.kafka_bootstrap:
        return str(flag or settings.kafka_bootstrap)
    state = read_state(settings.state_dir / STATE_FILE)
    if state is None:
        raise HeadraceError(
            "no Kafka cluster configured: set HEADRACE_KAFKA_BOOTSTRAP (or --bootstrap), "
            "or start the embedded broker with `headrace broker start`"
        )
    return state.bootstrap


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="Where the pid/port record lives (default HEADRACE_STATE_DIR or ./.headrace).",
)


@click.group("broker")
def broker() -> None:
    """Run the embedded Tansu broker (memory storage, loopback only)."""


@broker.command("start")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Port to listen on (default: a free one).",
)
@state_dir_option
def start(port: int, state_dir: Path | None) -> None:
    """Start the broker in the background and print its bootstrap address."""
    from streams.broker import EmbeddedBroker

    path = _state_path(state_dir)
    current = read_state(path)
    if current is not None and current.alive():
        raise HeadraceError(
            f"a broker is already running on {current.bootstrap} (pid {current.pid}); "
            "stop it first with `headrace broker stop`"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".log").open("ab").close()
    except OSError as exc:
        raise HeadraceError(
            f"cannot keep the broker's record in {path.parent} ({exc.strerror}); pass "
            "--state-dir (or set HEADRACE_STATE_DIR) to a folder you can write"
        ) from None
    embedded = EmbeddedBroker(port or None).start(detach=True, log_file=path.with_suffix(".log"))
    assert embedded.process is not None
    state = BrokerState(pid=embedded.process.pid, host=embedded.host, port=embedded.port)
    try:
        path.write_text(state.model_dump_json())
    except OSError as exc:  # unrecorded, `stop` could never find it: do not leave it running
        embedded.stop()
        raise HeadraceError(
            f"cannot write {path} ({exc.strerror}); the broker was stopped"
        ) from None
    click.echo(f"broker running on {state.bootstrap} (pid {state.pid})")
    click.echo(f"export HEADRACE_KAFKA_BOOTSTRAP={state.bootstrap}")


@broker.command("stop")
@state_dir_option
def stop(state_dir: Path | None) -> None:
    """Stop the broker started by `headrace broker start`."""
    from streams.broker import stop_pid

    path = _state_path(state_dir)
    state = read_state(path)
    if state is None:
        click.echo("no broker recorded; nothing to stop")
        return
    path.unlink(missing_ok=True)
    if not state.alive():  # never signal a process that only inherited the pid
        click.echo(f"broker on {state.bootstrap} (pid {state.pid}) was not running; record removed")
        return
    stop_pid(state.pid)
    click.echo(f"broker on {state.bootstrap} stopped")


@broker.command("status")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(state_dir: Path | None, as_json: bool) -> None:
    """Whether the recorded broker runs and answers Kafka metadata requests (exit 1 if not)."""
    from streams.broker import answers_metadata

    state = read_state(_state_path(state_dir))
    running = state is not None and state.alive()
    answering = running and state is not None and answers_metadata(state.bootstrap)
    if as_json:
        info: dict[str, object] = {"running": running, "answering": answering}
        if state is not None:
            info |= {"pid": state.pid, "bootstrap": state.bootstrap}
        click.echo(json.dumps(info))
    elif state is None:
        click.echo("no broker recorded")
    else:
        word = (
            "answering" if answering else ("running, not answering" if running else "not running")
        )
        click.echo(f"broker {state.bootstrap} (pid {state.pid}): {word}")
    if not answering:
        raise SystemExit(1)
