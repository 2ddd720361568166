"""Number flags that take seconds or rates refuse NaN, infinity and out-of-range values.

NaN passes every range check (`nan <= 0` is false), so these reached the command: `results
--idle-s nan` ended in a traceback, `train status --wait nan` waited forever, `infer
--timeout-s nan` (or 0, or 1e300) answered 'DEADLINE_EXCEEDED', `data profile --timeout-s nan`
said 'the nan s timeout ran out', `tune view --timeout-s nan` stopped at once with exit 0.
Each is now refused while the options are parsed, before anything is contacted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from headrace.cli import cli

pytestmark = pytest.mark.unit

NOBODY = "127.0.0.1:1"  # were a value let through, the command fails fast there, not hangs
PROFILE = ["data", "profile", "--dataset", "digits", "--ingested", "--bootstrap", NOBODY]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["infer", "--model", "m", "--timeout-s", "nan"], "nan is not a finite number"),
        (["infer", "--model", "m", "--timeout-s", "0"], "0.0 is not in the range"),
        (["infer", "--model", "m", "--timeout-s", "1e300"], "is not in the range"),
        (["results", "--bootstrap", NOBODY, "--idle-s", "nan"], "must be a finite number"),
        (["results", "--bootstrap", NOBODY, "--idle-s", "inf"], "must be a finite number"),
        # an OverflowError traceback once Kafka answered (an infinite consumer timeout in ms)
        (["results", "--bootstrap", NOBODY, "--idle-s", "1e306"], "at most 31,622,400 s"),
        (["produce", "--model", "m", "--bootstrap", NOBODY, "--rate", "nan"], "finite number"),
        (["train", "status", "j", "--bootstrap", NOBODY, "--wait", "nan"], "not a finite"),
        (["train", "status", "j", "--bootstrap", NOBODY, "--wait", "-1"], "not in the range"),
        ([*PROFILE, "--timeout-s", "nan"], "nan is not a finite number"),
        (["tune", "view", "x", "--timeout-s", "nan"], "nan is not a finite number"),
        (["tune", "view", "x", "--timeout-s", "-1"], "not in the range"),
    ],
)
def test_unusable_seconds_and_rates_are_refused_as_usage_errors(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.float32))
    if args[0] == "infer":
        args = [*args, "--input", "x.npy", "--url", NOBODY]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    flag = next(a for a in args if a in {"--timeout-s", "--idle-s", "--rate", "--wait"})
    assert f"Invalid value for '{flag}'" in result.output
