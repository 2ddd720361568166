"""--tls-ca (infer, watermark verify) must be a file of PEM certificates.

A folder ended in an IsADirectoryError traceback; any other file was only refused by gRPC
at each call: 'Failed to create security handshaker', or 'Connection refused' when nothing
listened, never naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from headrace.cli import cli

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("command", ["infer", "verify"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is a directory"),
        ("", "holds no PEM certificate"),
        ("hi\n", "holds no PEM certificate"),
    ],
)
def test_a_tls_ca_without_certificates_is_a_usage_error(
    command: str, content: str | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ca = tmp_path / "ca"
    if content is None:
        ca.mkdir()
    else:
        ca.write_text(content)
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.float32))
    (tmp_path / "key").write_text("{}")
    nobody = "127.0.0.1:1"
    args = {
        "infer": ["infer", "--model", "m", "--input", "x.npy", "--url", nobody],
        "verify": ["watermark", "verify", "--key", "key", "--model", "m", "--grpc", nobody],
    }[command]
    result = CliRunner().invoke(cli, [*args, "--tls-ca", str(ca)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--tls-ca'" in result.output and message in result.output
