"""The `headrace` command line: one click group that assembles the command modules."""

from __future__ import annotations

import click

from headrace import __version__
from headrace.commands.broker import broker
from headrace.commands.compress import compress
from headrace.commands.data import data
from headrace.commands.data_ingest import ingest, publish
from headrace.commands.gradcheck import check_grad
from headrace.commands.infer import infer
from headrace.commands.jobs import agent, cancel, events, status, submit
from headrace.commands.models import models
from headrace.commands.produce import produce, results
from headrace.commands.security import security
from headrace.commands.serve import serve
from headrace.commands.stream import stream
from headrace.commands.topics import topics
from headrace.commands.train import train
from headrace.commands.tune import tune
from headrace.commands.watermark import watermark
from headrace.errors import HeadraceError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headrace")
def cli() -> None:
    """headrace: event-driven streaming inference, training and model protection."""


cli.add_command(train)
for _job_command in (submit, status, events, cancel, agent):
    train.add_command(_job_command)
cli.add_command(broker)
cli.add_command(topics)
cli.add_command(check_grad)
cli.add_command(data)
for _data_command in (ingest, publish):
    data.add_command(_data_command)
cli.add_command(models)
cli.add_command(serve)
cli.add_command(infer)
cli.add_command(stream)
cli.add_command(produce)
cli.add_command(results)
cli.add_command(security)
cli.add_command(watermark)
cli.add_command(compress)
cli.add_command(tune)


def main() -> None:
    """Console-script entry point: runs the CLI and turns headrace errors into one clear line."""
    try:
        code = cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except HeadraceError as exc:
        click.echo(f"error: {exc.message}", err=True)
        raise SystemExit(2) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
