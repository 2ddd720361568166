"""A differentially private model end to end: trained and published with its budget, shown by
`headrace models show`, exposed by a real server in ModelConfig's parameters and as gauges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from server_fixtures import (
    export_lenet,
    inference_stub,
    lenet_config,
    publish,
    running_server,
    wait_until,
)

from headrace.cli import cli
from protos import grpc_service_pb2 as pb
from security.privacy import PrivacyConfig
from training.config import TrainConfig
from training.recipe import run_training

NAME = "lenet5-digits"


def test_dp_budget_is_published_shown_and_served(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    config = TrainConfig(
        dataset="digits",
        epochs=1,
        batch_size=128,
        repository=repository,
        runs_dir=tmp_path / "runs",
        run_id="dp",
        progress=False,
        privacy=PrivacyConfig(target_epsilon=8.0, target_delta=1e-6),
    )
    report = run_training(config)
    assert report.version == 1 and report.dp_epsilon is not None
    assert 0 < report.dp_epsilon <= 8.0 and report.dp_delta == 1e-6
    publish(repository, lenet_config("plain"), export_lenet(tmp_path / "plain.onnx", seed=1))

    runner = CliRunner()
    shown = runner.invoke(cli, ["models", "show", NAME, "--repository", str(repository)])
    assert shown.exit_code == 0, shown.output
    assert f"epsilon={report.dp_epsilon:.4g} delta=1e-06" in shown.output
    as_json = runner.invoke(
        cli, ["models", "show", NAME, "--repository", str(repository), "--json"]
    )
    assert json.loads(as_json.stdout)["metadata"]["dp_epsilon"] == report.dp_epsilon

    with (
        running_server(repository, log_dir=tmp_path) as server,
        inference_stub(server.address) as stub,
    ):
        answer = stub.ModelConfig(pb.ModelConfigRequest(name=NAME), timeout=30)
        parameters = answer.config.parameters
        assert float(parameters["dp_epsilon"].string_value) == report.dp_epsilon
        assert float(parameters["dp_delta"].string_value) == 1e-6
        assert parameters["version"].string_value == "1"
        assert "watermark_id" not in parameters
        plain = stub.ModelConfig(pb.ModelConfigRequest(name="plain"), timeout=30)
        assert "dp_epsilon" not in plain.config.parameters

        metrics = server.scrape()
        epsilon = metrics.find("model_dp_epsilon", model=NAME, version="1")
        assert [s.value for s in epsilon] == [pytest.approx(report.dp_epsilon)]
        assert metrics.value("model_dp_delta", model=NAME, version="1") == 1e-6
        assert not metrics.find("model_dp_epsilon", model="plain")

        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=NAME))
        wait_until(
            lambda: not server.scrape().find("model_dp_epsilon", model=NAME),
            "the unloaded version's gauge to go",
        )
        assert not server.scrape().find("model_dp_delta", model=NAME)
