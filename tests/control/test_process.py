"""``python -m vap_control`` as a process: YAML config, TLS on the API port, a generated API token file,
health without a token, Prometheus metrics, JSON logs without secrets, clean exit on SIGTERM."""

from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vap_control.testing import ControlProcess
from vap_proto.v1 import control_pb2, control_pb2_grpc

pytestmark = pytest.mark.integration


def _self_signed(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def _delete_consumer(nats_url: str, consumer: str) -> None:
    """The process's durable inbox consumer would otherwise keep collecting other tests' results."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_consumer("VAP_RESULTS", consumer)
    finally:
        await nc.close()


async def test_the_service_process_with_tls_and_a_generated_token(
    tmp_path: Path, nats_url: str, control_db: str
) -> None:
    cert, key = _self_signed(tmp_path)
    config = tmp_path / "vap.yaml"
    consumer = f"test-inbox-{uuid.uuid4().hex[:8]}"
    config.write_text(
        yaml.safe_dump(
            {
                "control": {
                    "listen": "127.0.0.1:0",
                    "data_dir": str(tmp_path / "data"),
                    "tls_cert_file": str(cert),
                    "tls_key_file": str(key),
                    "inbox_storage": "memory",
                    "inbox_max_bytes": 64 * 1024 * 1024,
                    "inbox_consumer": consumer,
                }
            }
        )
    )
    process = ControlProcess(
        tmp_path / "control.log", config=config, env={"NATS_URL": nats_url, "DATABASE_URL": control_db}
    ).start()
    try:
        token_file = tmp_path / "data" / "control" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()

        # Health on the local health port, no token, no TLS.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="vap.v1.ControlService")
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # The API port speaks TLS only.
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{process.port}", credentials) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            listed = await stub.ListScenarios(
                control_pb2.ListScenariosRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            assert listed.total_size == 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListScenarios(control_pb2.ListScenariosRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                await control_pb2_grpc.ControlServiceStub(channel).ListScenarios(
                    control_pb2.ListScenariosRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=5,
                )
            assert plain.value.code() == grpc.StatusCode.UNAVAILABLE

        with urllib.request.urlopen(
            f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10
        ) as response:
            metrics = response.read().decode()
        assert 'vap_control_rpc_total{code="OK",method="ListScenarios"}' in metrics
        assert "vap_control_auth_failures_total" in metrics
    finally:
        code = process.stop()
        await _delete_consumer(nats_url, consumer)
    assert code == 0
    records = process.records()
    assert records and all("event" in r for r in records)  # JSON lines
    assert token not in process.log_text()
    assert "service stopped" in {r["event"] for r in records}
