"""docker-compose.yml is accepted by Compose and wires what the deployment needs: shared /dev/shm for the
frame rings, Prometheus scraping every service's metrics port, a provisioned Grafana dashboard.
(No Docker engine here: `docker-compose config` validates the file without one.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vap_common.camera_secrets import generate_key

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SERVICES = {
    "decoder-agent": "DECODER",
    "inference": "INFERENCE",
    "tracker": "TRACKER",
    "control": "CONTROL",
    "web": "WEB",
    "dataset": "DATASET",
}


def test_compose_config_is_valid() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip(
            "docker-compose is not installed (Debian package docker-compose, scripts/apt-packages.txt)"
        )
    env = dict(os.environ, VAP_API_TOKEN="test-token", VAP_CAMERA_KEYS=generate_key())
    ok = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    # The API token and the camera key are mandatory: no deployment with a default token or key.
    for name in ("VAP_API_TOKEN", "VAP_CAMERA_KEYS"):
        missing = subprocess.run(
            [tool, "-f", str(COMPOSE), "config", "-q"],
            env={k: v for k, v in env.items() if k != name},
            capture_output=True,
            text=True,
            check=False,
        )
        assert missing.returncode != 0 and name in missing.stderr


def test_compose_wiring() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"nats", "postgres", "prometheus", "grafana", *SERVICES} <= set(services)
    assert "--jetstream" in services["nats"]["command"]
    # 8 slots of 1080p I420 per channel, for max_workers channels, fit in the agent's /dev/shm.
    agent = services["decoder-agent"]
    shm = int(agent["shm_size"].removesuffix("gb")) * 1024**3
    workers = int(agent["environment"]["VAP_DECODER_MAX_WORKERS"])
    assert shm >= workers * 8 * 1920 * 1080 * 3 // 2
    for reader in ("inference", "tracker", "web", "dataset"):
        assert services[reader]["ipc"] == "service:decoder-agent"
    # The camera key: control seals, every decoder agent opens; no other service holds it.
    holders = {name for name, s in services.items() if "VAP_CAMERA_KEYS" in s.get("environment", {})}
    assert holders == {"control", "decoder-agent", "decoder-agent-2"}
    scraped = {
        t
        for job in yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    for name, prefix in SERVICES.items():
        port = services[name]["environment"][f"VAP_{prefix}_METRICS_PORT"]
        assert f"127.0.0.1:{port}" in scraped, f"Prometheus does not scrape {name}"
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "vap.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("vap_decoder_fps", "stage_seconds", "dropped", "reconnects", "vap_tracker_events_total"):
        assert metric in exprs


def test_every_service_folder_runs_in_compose() -> None:
    """Each process of the architecture is a folder under services/ and a container here (the tree and the
    deployment say the same thing)."""
    commands = {
        arg
        for svc in yaml.safe_load(COMPOSE.read_text())["services"].values()
        for arg in svc.get("command", [])
        if isinstance(arg, str) and arg.startswith("vap_")
    }
    packages = {p.name for p in (REPO / "services").glob("*/vap_*") if (p / "__main__.py").is_file()}
    assert packages == {f"vap_{d.name}" for d in (REPO / "services").iterdir() if d.is_dir()}
    assert packages <= commands, f"not run by docker-compose.yml: {sorted(packages - commands)}"
