"""`headrace train agent` in a consumer group the embedded broker never finishes a rebalance of
(its leader left between JoinGroup and SyncGroup): the agent says so, as the stream worker does
(test_stream_worker.py), instead of waiting without a ready line or a word."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from agent_fixtures import AGENT_READY
from kafka_fixtures import external_bootstrap
from server_fixtures import REPO_ROOT, wait_until
from stream_fixtures import leader_leaves_mid_rebalance

from headrace.processes import stop_process
from streams.broker import EmbeddedBroker
from streams.job_messages import JOBS_TOPIC
from streams.topics import create_topics

RAY_START_S = 60.0  # a local Ray starts before the agent's consumer joins its group
WARN_S = 2.0  # HEADRACE_UNASSIGNED_WARN_S for the stuck agent (the default's 20 s is a wait)


@pytest.mark.skipif(external_bootstrap() is not None, reason="the embedded broker's fault")
def test_an_agent_of_a_stuck_group_says_so(tmp_path: Path) -> None:
    group = f"stuck-agent-{uuid.uuid4().hex[:8]}"
    log_file = tmp_path / "agent.log"
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap)
        leader_leaves_mid_rebalance(broker.bootstrap, group, protocol="range")  # kafka-python's
        command = [sys.executable, "-m", "headrace", "train", "agent", "--bootstrap",
                   broker.bootstrap, "--repository", str(tmp_path / "repo"), "--runs-dir",
                   str(tmp_path / "runs"), "--ray-cpus", "1", "--group", group]  # fmt: skip
        env = dict(os.environ, HEADRACE_UNASSIGNED_WARN_S=str(WARN_S))
        with log_file.open("w") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log, text=True
            )
        try:
            wait_until(
                lambda: "no partitions assigned after" in log_file.read_text(errors="replace"),
                "the agent's warning",
                timeout_s=RAY_START_S + WARN_S,
            )
            text = log_file.read_text(errors="replace")
            assert f"consumer group {group!r} has not finished a rebalance" in text, text
            assert f"run the agents with another --group (a new group reads {JOBS_TOPIC}" in text
            assert AGENT_READY not in text
        finally:
            assert stop_process(process, 60) == 0, log_file.read_text(errors="replace")[-3000:]


@pytest.mark.skipif(external_bootstrap() is not None, reason="needs a group of the embedded broker")
def test_an_agent_in_a_group_of_another_kind_of_client_says_so(tmp_path: Path) -> None:
    """A group whose members offer an assignment protocol the agent lacks (a stream worker's,
    say) made the agent die with kafka-python's InconsistentGroupProtocolError traceback."""
    group = f"taken-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap)
        leader_leaves_mid_rebalance(broker.bootstrap, group)  # protocol "x": not kafka-python's
        command = [sys.executable, "-m", "headrace", "train", "agent", "--bootstrap",
                   broker.bootstrap, "--repository", str(tmp_path / "repo"), "--runs-dir",
                   str(tmp_path / "runs"), "--ray-cpus", "1", "--group", group]  # fmt: skip
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=RAY_START_S + 60
        )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: consumer group {group!r} is already used by clients of another kind" in (
        done.stderr
    ), done.stderr[-3000:]
    assert "give the agent its own --group" in done.stderr
    assert "Traceback" not in done.stderr
