"""`headrace check-grad`: compare a model's autograd gradients with central differences.

torch and the model registry are imported inside the command, so `headrace --help`
stays fast.
"""

from __future__ import annotations

import click

from headrace.commands.options import MAX_SEED

# Bounds that keep a float64 check of a model within memory: a batch of 10**8 or a classifier
# of 10**11 classes ended in a torch allocation traceback.
MAX_BATCH_SIZE = 1024
MAX_CLASSES = 100_000


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


@click.command("check-grad")
@click.option(
    "--model", "model_name", required=True, help="Registered architecture to check, e.g. lenet5."
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Parameter entries to check, spread over all tensors; 0 checks every entry.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_BATCH_SIZE),
    default=4,
    show_default=True,
    help="Size of the random input batch.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=2, max=MAX_CLASSES),
    default=10,
    show_default=True,
    help="Output classes of the model (and range of the random labels).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    default=0,
    show_default=True,
    help="Seed of the random batch and of the sampled entries.",
)
@click.option(
    "--step",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-6,
    show_default=True,
    help="Finite-difference step h.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Largest relative error that still passes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def check_grad(
    model_name: str,
    samples: int,
    batch_size: int,
    num_classes: int,
    seed: int,
    step: float,
    tolerance: float,
    as_json: bool,
) -> None:
    """Check a model's gradients numerically in float64; exit 1 if they disagree.

    Builds the model with random weights, runs it in eval mode on a seeded random
    batch with random labels and compares autograd gradients of the cross-entropy
    loss with central differences for a sample of parameter entries.
    """
    import torch

    from training.gradcheck import check_gradients, random_batch
    from training.models import build_model, input_shape

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=num_classes)
    inputs, targets = random_batch(input_shape(model_name), num_classes, batch_size, seed)
    report = check_gradients(
        model,
        inputs,
        targets,
        max_params=samples or None,
        step=step,
        tolerance=tolerance,
        seed=seed,
        name=model_name,
    )

    if as_json:
        click.echo(report.model_dump_json())
    else:
        rows = [
            [t.name, "x".join(map(str, t.shape)), str(t.checked), f"{t.max_rel_error:.2e}"]
            for t in report.per_tensor
        ]
        click.echo(_table(["parameter", "shape", "checked", "max rel error"], rows))
        worst = f"{report.worst_parameter}[{', '.join(map(str, report.worst_index))}]"
        verdict = "PASS" if report.passed else "FAIL"
        click.echo(
            f"\n{verdict}: {report.model_name}, {report.checked} entries in {report.dtype}, "
            f"max rel error {report.max_rel_error:.2e} (tolerance {report.tolerance:.0e}), "
            f"max abs error {report.max_abs_error:.2e}, worst {worst}"
        )
    if not report.passed:
        # Not ctx.exit(1): `headrace.cli.main` runs click with standalone_mode=False,
        # which returns (and drops) the code of ctx.exit instead of exiting with it.
        raise SystemExit(1)
