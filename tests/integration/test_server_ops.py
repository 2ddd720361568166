"""Operating the server: grpc.health.v1 (overall and per model), reflection, Prometheus
metrics, graceful shutdown on SIGTERM, TLS, and autoscaling under load."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import (
    Metrics,
    ModelFiles,
    ServerProcess,
    digits_batch,
    inference_stub,
    lenet_config,
    open_channel,
    output_array,
    publish,
    raw_request,
    reference,
    rpc_error,
    run_driver,
    running_server,
    slow_config,
    slow_request,
    wait_until,
)

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from serving.model_config import AutoscalingConfig, DynamicBatchingConfig

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MODEL = "digits"
X = digits_batch(1)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ops-repo")
    publish(root, lenet_config(MODEL), model_files.lenet_a)
    publish(root, lenet_config("digits-health"), model_files.lenet_a)
    scaler = slow_config(
        "scaler",
        dynamic_batching=DynamicBatchingConfig(max_queue_size=1024, max_queue_delay_us=0),
        autoscaling=AutoscalingConfig(
            min_instances=1, max_instances=2, target_queue_depth=1, cooldown_s=0
        ),
    )
    publish(root, scaler, model_files.slow)
    with running_server(root, "--poll-interval-s", "0", log_dir=root.parent) as process:
        yield process


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with open_channel(server.address) as channel:
        yield channel


# -- health and reflection -----------------------------------------------------------------


def test_health_overall_and_per_model(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def check(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status

    assert (check(""), check(MODEL), check("digits-health")) == (SERVING, SERVING, SERVING)
    unknown = rpc_error(lambda: check("no-such-model"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    watch = health.Watch(health_pb2.HealthCheckRequest(service="digits-health"), timeout=60)
    try:
        assert next(watch).status == SERVING
        stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="digits-health"), timeout=30
        )
        assert next(watch).status == NOT_SERVING
        assert (check("digits-health"), check(""), check(MODEL)) == (NOT_SERVING, SERVING, SERVING)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits-health"))
        assert next(watch).status == SERVING
    finally:
        watch.cancel()
    assert check("digits-health") == SERVING


def test_a_model_whose_explicit_load_fails_is_not_serving_on_health_checks(
    server: ServerProcess, channel: grpc.Channel, model_files: ModelFiles
) -> None:
    """A model published while the server runs whose explicit load fails answered NOT_FOUND
    on health checks (as for a name the server never heard of) until a repository poll saw
    the failure, and with polling off (as here) for good; it is NOT_SERVING at once, and
    SERVING once a load succeeds."""
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def check() -> int:
        request = health_pb2.HealthCheckRequest(service="digits-late")
        return health.Check(request, timeout=30).status

    version = publish(server.repository, lenet_config("digits-late"), model_files.lenet_a)
    model_file = server.repository / "digits-late" / str(version) / "model.onnx"
    model_file.write_bytes(b"not the published file")
    load = pb.RepositoryModelLoadRequest(model_name="digits-late")
    assert rpc_error(lambda: stub.RepositoryModelLoad(load, timeout=30)).code() == (
        grpc.StatusCode.INTERNAL
    )
    assert check() == NOT_SERVING
    publish(server.repository, lenet_config("digits-late"), model_files.lenet_a)
    stub.RepositoryModelLoad(load, timeout=30)
    wait_until(lambda: check() == SERVING, "digits-late SERVING")


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.GRPCInferenceService"
        ),
    ]
    listed, found = list(reflection.ServerReflectionInfo(iter(requests), timeout=30))
    assert {s.name for s in listed.list_services_response.service} == {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    [service] = [s for f in files for s in f.service if s.name == "GRPCInferenceService"]
    assert {"ModelInfer", "ModelStreamInfer", "ModelMetadata"} <= {m.name for m in service.method}


# -- metrics -------------------------------------------------------------------------------

PER_VERSION = (
    "inference_request_success_total",
    "inference_count_total",
    "inference_exec_count_total",
    "inference_request_duration_seconds_count",
    "inference_queue_duration_seconds_count",
    "inference_compute_duration_seconds_count",
    "inference_batch_size_count",
    "inference_queue_depth",
    "inference_instances",
)


def test_metrics_are_exposed_and_move_with_requests(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    labels = {"model": MODEL, "version": "1"}
    before = server.scrape()
    for _ in range(2):
        stub.ModelInfer(raw_request(MODEL, digits_batch(3)), timeout=30)
    rpc_error(lambda: stub.ModelInfer(raw_request(MODEL, X.reshape(1, 28, 28)), timeout=30))
    rpc_error(lambda: stub.ModelInfer(raw_request("no-such-model", X), timeout=30))
    after = server.scrape()

    def moved(name: str, **extra: str) -> float:
        return after.value(name, **labels, **extra) - before.value(name, **labels, **extra)

    for name in PER_VERSION:
        assert after.find(name, **labels), f"{name} has no sample for {labels}"
    assert moved("inference_request_success_total") == 2
    assert moved("inference_count_total") == 6
    assert moved("inference_exec_count_total") == 2  # two sequential requests, two batches
    assert moved("inference_request_failure_total", reason="invalid_input") == 1
    unknown = {"model": "unknown", "reason": "model_not_found"}  # no label per made-up name
    failures = [m.value("inference_request_failure_total", **unknown) for m in (before, after)]
    assert failures[1] - failures[0] == 1
    for histogram in ("request_duration", "queue_duration", "compute_duration"):
        assert moved(f"inference_{histogram}_seconds_count") == 2
        assert moved(f"inference_{histogram}_seconds_sum") >= 0
        assert after.find(f"inference_{histogram}_seconds_bucket", le="+Inf", **labels)
    assert moved("inference_request_duration_seconds_sum") > 0
    assert moved("inference_compute_duration_seconds_sum") > 0
    assert moved("inference_batch_size_count") == 2
    assert moved("inference_batch_size_sum") == 6  # two sequential requests of 3 rows
    assert after.value("inference_queue_depth", **labels) == 0
    assert after.value("inference_instances", **labels) == 1
    assert "# TYPE inference_request_duration_seconds histogram" in after.text


# -- autoscaling ---------------------------------------------------------------------------


def test_autoscaling_adds_an_instance_under_load(
    server: ServerProcess, channel: grpc.Channel, model_files: ModelFiles
) -> None:
    labels = {"model": "scaler", "version": "1"}
    assert server.scrape().value("inference_instances", **labels) == 1
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    stop = threading.Event()
    failures: list[grpc.RpcError] = []
    request = slow_request(model_files.trips_for(0.05), model="scaler")

    def load() -> None:
        while not stop.is_set():
            try:
                stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as exc:
                failures.append(exc)
                return

    def scaled_up() -> Metrics | None:
        # The decision is counted once the new instance is in place, so wait on the count:
        # a scrape between the two can already show two instances but no decision yet.
        metrics = server.scrape()
        decided = metrics.value("autoscaler_decisions_total", direction="up", **labels)
        return metrics if decided >= 1 else None

    clients = [threading.Thread(target=load) for _ in range(6)]
    for client in clients:
        client.start()
    try:
        scaled = wait_until(scaled_up, "the autoscaler to add a second instance", timeout_s=30)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
    assert failures == []
    assert scaled.value("inference_instances", **labels) == 2
    assert scaled.value("autoscaler_decisions_total", direction="down", **labels) == 0


# -- graceful shutdown ---------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_and_exits_0(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    root = tmp_path / "repo"
    publish(root, slow_config("slow"), model_files.slow)
    args = ("--grace-s", "20", "--poll-interval-s", "0")
    with (
        running_server(root, *args, log_dir=tmp_path) as server,
        open_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watches = [
            health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60)
            for name in ("", "slow")
        ]
        try:
            assert [next(w).status for w in watches] == [SERVING, SERVING]
            slow = stub.ModelInfer.future(slow_request(model_files.trips_for(1.5)), timeout=60)
            wait_until(lambda: server.in_flight("slow") == 1, "the slow request to execute")

            server.process.send_signal(signal.SIGTERM)
            assert [next(w).status for w in watches] == [NOT_SERVING, NOT_SERVING]
        finally:
            for watch in watches:
                watch.cancel()  # an open stream would hold the drain for the whole grace
        refused = rpc_error(lambda: stub.ModelInfer(slow_request(1), timeout=30))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()
        assert not slow.done(), "the slow request finished before the drain was tested"
        response = slow.result()
        assert (response.model_name, response.model_version) == ("slow", "1")
        assert server.process.wait(timeout=60) == 0, server.log_tail()


def test_sigterm_under_load_answers_every_received_call(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    """Calls the server has received but not yet started when SIGTERM comes (a busy server
    holds many) are answered, each served or refused as UNAVAILABLE: none is cancelled."""
    root = tmp_path / "repo"
    publish(root, lenet_config("big", max_batch_size=64), model_files.lenet_a)
    args = ("--grace-s", "20", "--poll-interval-s", "0")
    with (
        running_server(root, *args, log_dir=tmp_path) as server,
        open_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = raw_request("big", digits_batch(64))
        stub.ModelInfer(request, timeout=30)
        calls = [stub.ModelInfer.future(request, timeout=60) for _ in range(80)]
        wait_until(lambda: server.in_flight("big") >= 1 or None, "the first calls to execute")
        server.process.send_signal(signal.SIGTERM)
        outcomes: Counter[grpc.StatusCode] = Counter()
        for call in calls:
            error = call.exception()
            outcomes[error.code() if error is not None else grpc.StatusCode.OK] += 1
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
        assert server.process.wait(timeout=60) == 0, server.log_tail()


# -- TLS -----------------------------------------------------------------------------------


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("no way to make a test certificate: neither `cryptography` nor `openssl`")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
             "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles
) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("tls-repo")
    cert, key = self_signed_certificate(root.parent)
    publish(root, lenet_config(MODEL), model_files.lenet_a)
    args = ("--tls-cert", str(cert), "--tls-key", str(key), "--poll-interval-s", "0")
    with running_server(root, *args, log_dir=root.parent) as process:
        yield process, cert


def test_tls_server_answers_over_a_secure_channel(
    tls_server: tuple[ServerProcess, Path], model_files: ModelFiles
) -> None:
    server, cert = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with inference_stub(server.address, credentials) as stub:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        logits = output_array(stub.ModelInfer(raw_request(MODEL, X), timeout=30))
        np.testing.assert_allclose(logits, reference(model_files.lenet_a, X), rtol=1e-4, atol=1e-5)
    plain = grpc.insecure_channel(server.address)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(plain)
        error = rpc_error(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()


def test_infer_cli_trusts_the_server_certificate_given_as_tls_ca(
    tls_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    # --tls-ca is checked to hold a PEM certificate when the options are parsed; a real one
    # passes that check and the call goes through
    server, cert = tls_server
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "infer", "--model", MODEL, "--input",
         str(tmp_path / "x.npy"), "--url", server.address, "--tls-ca", str(cert), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == MODEL


def test_tls_with_tritonclient(
    tls_server: tuple[ServerProcess, Path], model_files: ModelFiles
) -> None:
    server, cert = tls_server
    got = run_driver(server.address, "tls", model=MODEL, root_cert=str(cert), batch=X.tolist())
    assert got["live"] is True
    np.testing.assert_allclose(
        np.asarray(got["infer"]["output"]), reference(model_files.lenet_a, X), rtol=1e-4, atol=1e-5
    )


def test_start_up_errors_are_one_line_and_come_before_loading(tmp_path: Path) -> None:
    import socket
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "headrace", "serve", "--repository", str(tmp_path),
             "--metrics-port", "0", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first, _ = self_signed_certificate(tmp_path / "a")
    _, other_key = self_signed_certificate(tmp_path / "b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = [
            (("--port", port), f"cannot listen on 127.0.0.1:{port}: Address already in use"),
            (("--port", "0", "--host", "192.0.2.1"),  # TEST-NET-1: no machine's address
             "cannot listen on 192.0.2.1:0: Cannot assign requested address"),
            (("--port", "0", "--tls-cert", str(first), "--tls-key", str(other_key)),
             "are not a PEM certificate and its private key"),
            (("--repository", str(tmp_path / "typo")), "does not exist; pass --repository"),
        ]  # fmt: skip
        for args, message in cases:
            done = serve(*args)
            assert done.returncode == 2, done.stderr
            assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
            # only headrace's line: grpc's C++ log ('E... add_port.cc:83] Failed to add
            # port ...') came first
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_host_is_announced_as_an_address_clients_can_use(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    """`--host ::1` was announced as 'grpc=::1:PORT' (and logged 'serving on ::1:PORT'),
    which no client can connect to; the host goes in brackets, as in the address bound."""
    publish(tmp_path, lenet_config(MODEL), model_files.lenet_a)
    with running_server(tmp_path, "--host", "::1", log_dir=tmp_path) as server:
        assert server.address.startswith("[::1]:"), server.address
        with inference_stub(server.address) as stub:
            assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=30).ready
        wait_until(lambda: f"serving on {server.address}" in server.log_tail(), "the log line")
