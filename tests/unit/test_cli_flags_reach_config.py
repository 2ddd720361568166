"""Every flag of a headrace command reaches what it configures, or is refused when nothing
would read it. Each command is stopped where it hands its config on (no data, Kafka or
training), and the config is compared with the flags given."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.cli import main


class _Stop(Exception):
    """Ends a command at its hand-off."""


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"the command went on with a flag dropped: {args} {kwargs}")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    from security.watermark.key import generate_key, save_key

    return save_key(generate_key(10, 0), tmp_path / "key.json")


@pytest.mark.parametrize(
    ("argv", "stops"),
    [
        (["produce", "--model", "m", "--bootstrap", "127.0.0.1:1"],
         "headrace.commands.produce.answering_bootstrap"),
        (["data", "publish", "--bootstrap", "127.0.0.1:1"],
         "headrace.commands.data_ingest.reachable"),
        (["data", "profile", "--dataset", "digits"], "training.preprocess.profile_arrays"),
        (["watermark", "embed", "--key", "{key}"], "training.recipe.run_training"),
    ],
    ids=["produce", "data publish", "data profile", "watermark embed"],
)  # fmt: skip
def test_a_data_dir_an_embedded_dataset_would_not_read_is_refused(
    argv: list[str],
    stops: str,
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `produce --data-dir ~/mnist` (no --dataset) sent digits, `data publish` the
    same, `data profile --dataset digits --data-dir F` profiled digits and `watermark embed
    --data-dir F` trained on digits, the folder unread (train and tune refuse it since
    1acf121)."""
    monkeypatch.setattr(stops, _never)
    args = [arg.format(key=key_file) for arg in argv]
    monkeypatch.setattr("sys.argv", ["headrace", *args, "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: --data-dir: dataset 'digits' is embedded and reads no folder; name a dataset "
        "read from files (mnist or cifar10) or leave --data-dir out\n"
    )
