"""Every service process treats a missing NATS_URL the same way (DESIGN.md "Embedded default"): it starts an
embedded nats-server in ``<data_dir>/embedded``, serves, and stops that server with itself. Checked on the
real processes; the decoder agent, inference and control are started this way by their own suites."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vap_common.ports import free_tcp_port
from vap_stack.supervise import health_serving

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("module", "prefix"),
    [("vap_tracker", "VAP_TRACKER_"), ("vap_web", "VAP_WEB_"), ("vap_dataset", "VAP_DATASET_")],
)
def test_service_without_nats_url_runs_on_an_embedded_server(
    tmp_path: Path, module: str, prefix: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "VAP_CONFIG")}
    health = free_tcp_port()
    env |= {f"{prefix}DATA_DIR": str(tmp_path), f"{prefix}HEALTH_PORT": str(health)}
    if module == "vap_web":
        env["VAP_WEB_LISTEN"] = f"127.0.0.1:{free_tcp_port()}"
    if module == "vap_dataset":
        env["VAP_DATASET_DIR"] = str(tmp_path / "datasets")
    proc = subprocess.Popen(
        [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not asyncio.run(health_serving(health, timeout=1.0)):
            assert proc.poll() is None, (
                f"{module} exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
            assert time.monotonic() < deadline, f"{module} never served"
            time.sleep(0.2)
        pid = int((tmp_path / "embedded" / "nats" / "nats-server.pid").read_text().split()[0])
        os.kill(pid, 0)  # the embedded nats-server runs
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        # ... and went with the service.
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "the embedded nats-server outlived its service"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent, the service, has exited).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize(
    "argv",
    [
        ["vap_control"],
        ["vap_inference"],
        ["vap_tracker"],
        ["vap_web"],
        ["vap_dataset"],
        ["vap_decoder", "agent"],
    ],
)
def test_every_service_refuses_bad_settings_in_one_line(tmp_path: Path, argv: list[str]) -> None:
    """The same entry for every service (vap_common.entry): a settings error is one line naming the
    service and the problem, exit code 2, no traceback."""
    bad = tmp_path / "vap.yaml"
    bad.write_text(
        "tracker: {nonsense: 1}\ninference: {nonsense: 1}\ncontrol: {nonsense: 1}\n"
        "web: {nonsense: 1}\ndataset: {nonsense: 1}\ndecoder: {nonsense: 1}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VAP_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", *argv, "--config", str(bad)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(" ".join(argv) + ": ") and "nonsense" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
