"""The numerical gradient check: it passes correct models and catches a wrong backward."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from headrace.commands.gradcheck import check_grad
from headrace.errors import ConfigError
from training.gradcheck import MIN_PER_TENSOR, _sample_counts, check_gradients, random_batch

pytestmark = pytest.mark.unit


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * grad * x


class _WrongSquare(_Square):
    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * x  # the factor 2 is missing


class SquareNet(nn.Module):
    """pre (linear) -> custom square -> head (linear)."""

    def __init__(self, square: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.pre = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)
        self.square = square

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.square.apply(self.pre(x)))


def small_conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )


def test_small_conv_net_passes_on_every_entry() -> None:
    torch.manual_seed(0)
    model = small_conv_net()
    inputs, targets = random_batch((1, 8, 8), num_classes=4)
    report = check_gradients(model, inputs, targets, max_params=None)
    assert report.passed
    assert report.max_rel_error < 1e-3
    assert report.dtype == "float64"
    assert report.checked == sum(p.numel() for p in model.parameters())
    assert [t.name for t in report.per_tensor] == [n for n, _ in model.named_parameters()]


def test_wrong_backward_is_caught_at_the_parameter_feeding_it() -> None:
    torch.manual_seed(0)
    inputs, targets = random_batch((6,), num_classes=3)
    report = check_gradients(SquareNet(_WrongSquare), inputs, targets, max_params=None)
    assert not report.passed
    assert report.worst_parameter.startswith("pre.")
    per_tensor = {t.name: t.max_rel_error for t in report.per_tensor}
    # g_auto = g / 2, so |g - g/2| / (|g| + |g/2|) = 1/3 wherever the gradient is not tiny.
    assert per_tensor["pre.weight"] == pytest.approx(1 / 3, rel=1e-3)
    assert per_tensor["head.weight"] < 1e-6 and per_tensor["head.bias"] < 1e-6


def test_correct_custom_function_passes() -> None:
    torch.manual_seed(0)
    inputs, targets = random_batch((6,), num_classes=3)
    report = check_gradients(SquareNet(_Square), inputs, targets, max_params=None)
    assert report.passed
    assert report.max_rel_error < 1e-6


_snapshots: list[dict[str, torch.Tensor]] = []  # module-level: survives the deepcopy


class _Recording(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = small_conv_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _snapshots.append({n: p.detach().clone() for n, p in self.named_parameters()})
        return self.net(x)


def test_parameters_are_restored_exactly() -> None:
    torch.manual_seed(0)
    model = _Recording()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, targets = random_batch((1, 8, 8), num_classes=4)
    inputs_before = inputs.clone()
    _snapshots.clear()
    step = 1e-6
    check_gradients(model, inputs, targets, max_params=40, step=step)

    # The caller's model and inputs are untouched (same values, still float32).
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype == torch.float32
        assert torch.equal(after[key], value)
    assert torch.equal(inputs, inputs_before)

    # Inside the float64 copy every forward pass sees at most one entry moved off
    # its original value, by exactly +-h: each perturbation was undone before the next.
    base = _snapshots[0]
    assert all(torch.equal(base[n], p.detach().double()) for n, p in model.named_parameters())
    for snapshot in _snapshots[1:]:
        diffs = torch.cat([(snapshot[n] - base[n]).flatten() for n in base])
        moved = diffs[diffs != 0]
        assert moved.numel() <= 1
        if moved.numel():  # h, or h/10 when an entry is measured again
            assert moved.abs().item() in (pytest.approx(step), pytest.approx(step / 10))
    assert len(_snapshots) >= 1 + 2 * 40


def test_sample_is_spread_over_tensors_and_seeded() -> None:
    torch.manual_seed(0)
    model = small_conv_net()
    inputs, targets = random_batch((1, 8, 8), num_classes=4)
    report = check_gradients(model, inputs, targets, max_params=20, seed=3)
    assert report.checked == 20
    assert all(t.checked >= MIN_PER_TENSOR for t in report.per_tensor)
    assert check_gradients(model, inputs, targets, max_params=20, seed=3) == report


def test_a_sample_larger_than_the_model_checks_every_entry_once() -> None:
    # `check-grad --samples 99999999999` reported "PASS: lenet5, -22178729974 entries": the
    # budget beyond the model's size gave tensors more entries than they hold, then negative
    numels = [150, 6, 2400, 16, 48000, 120]
    for max_params in (sum(numels), sum(numels) + 1, 99_999_999_999):
        assert _sample_counts(numels, max_params) == numels
    small = small_conv_net()
    inputs, targets = random_batch((1, 8, 8), num_classes=4)
    total = sum(p.numel() for p in small.parameters())
    assert check_gradients(small, inputs, targets, max_params=10**12).checked == total


def test_bad_arguments_are_config_errors() -> None:
    inputs, targets = random_batch((1, 8, 8), num_classes=4)
    with pytest.raises(ConfigError):
        check_gradients(small_conv_net(), inputs, targets, max_params=0)
    with pytest.raises(ConfigError, match="scalar"):
        check_gradients(small_conv_net(), inputs, targets, loss_fn=lambda out, _: out, max_params=1)


@pytest.mark.parametrize(
    ("name", "value"),
    [("step", math.nan), ("step", math.inf), ("tolerance", math.nan), ("tolerance", math.inf),
     ("tolerance", 0.0)],
)  # fmt: skip
def test_non_finite_step_and_tolerance_are_config_errors(name: str, value: float) -> None:
    # NaN slipped past `step <= 0` (every entry then failed with an error of inf), a NaN
    # tolerance failed a correct model, an infinite one passed any backward
    inputs, targets = random_batch((1, 8, 8), num_classes=4)
    settings = {"step": 1e-6, "tolerance": 1e-3, name: value}
    with pytest.raises(ConfigError, match=f"{name} must be a positive finite number"):
        check_gradients(
            small_conv_net(),
            inputs,
            targets,
            max_params=1,
            step=settings["step"],
            tolerance=settings["tolerance"],
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "nan"], "step must be a positive finite number"),
        (["--tolerance", "nan"], "tolerance must be a positive finite number"),
        (["--seed", str(2**70)], "--seed"),
        (["--seed", "-1"], "--seed"),
        # a torch allocation traceback (313,600,000,000 bytes)
        (["--batch-size", str(10**8)], "--batch-size"),
        (["--num-classes", str(10**11)], "--num-classes"),
    ],
)
def test_cli_refuses_unusable_numbers(args: list[str], message: str) -> None:
    # they printed a FAIL verdict (NaN) or a torch traceback (a seed torch cannot take)
    result = CliRunner().invoke(check_grad, ["--model", "lenet5", "--samples", "1", *args])
    assert result.exit_code != 0
    error = str(result.exception) if isinstance(result.exception, ConfigError) else result.output
    assert message in error
    assert "FAIL" not in result.output


def test_lenet5_from_the_registry_passes() -> None:
    from training.models import build_model, input_shape

    torch.manual_seed(0)
    inputs, targets = random_batch(input_shape("lenet5"), num_classes=10, batch_size=4)
    report = check_gradients(build_model("lenet5"), inputs, targets, name="lenet5")
    assert report.passed, report
    assert report.max_rel_error < 1e-3
    assert report.checked == 200


def test_cli_json_passes_with_exit_code_0() -> None:
    result = CliRunner().invoke(check_grad, ["--model", "lenet5", "--samples", "60", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["model_name"] == "lenet5"
    assert data["max_rel_error"] < 1e-3


def test_cli_text_and_exit_code_1_on_failure() -> None:
    args = ["--model", "lenet5", "--samples", "30"]
    passing = CliRunner().invoke(check_grad, args)
    assert passing.exit_code == 0, passing.output
    assert "classifier" in passing.stdout and "PASS: lenet5" in passing.stdout
    failing = CliRunner().invoke(check_grad, [*args, "--tolerance", "1e-15"])
    assert failing.exit_code == 1, failing.output
    assert "FAIL: lenet5" in failing.stdout
