"""docker-compose.yml is accepted by Compose and wires what the deployment needs: shared /dev/shm for the
frame rings, Prometheus scraping every service's metrics port, a provisioned Grafana dashboard.
(No Docker engine here: `docker-compose config` validates the file without one.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vap_common.embedded_nats import nats_server_binary
from vap_common.embedded_proc import tcp_accepts
from vap_common.nats_auth import SERVICE_ROLES, Role, password_env, user_name
from vap_common.ports import free_tcp_port
from vap_stack.secrets import COMPOSE_SECRETS, complete_env_file, read_env_file

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
NATS_DIR = REPO / "deploy" / "nats"
# The NATS user of each VAP container.
ROLES = {
    "decoder-agent": Role.DECODER_AGENT,
    "decoder-agent-2": Role.DECODER_AGENT,
    "inference": Role.INFERENCE,
    "inference-2": Role.INFERENCE,
    "tracker": Role.TRACKER,
    "control": Role.CONTROL,
    "web": Role.WEB,
    "dataset": Role.DATASET,
}
SERVICES = {
    "decoder-agent": "DECODER",
    "inference": "INFERENCE",
    "tracker": "TRACKER",
    "control": "CONTROL",
    "web": "WEB",
    "dataset": "DATASET",
}


def _compose_config(tool: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAP_")}
    return subprocess.run(
        [tool, "--env-file", str(env_file), "-f", str(COMPOSE), "--profile", "nats-cluster", "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_config_is_valid(tmp_path: Path) -> None:
    """Valid with the env file `vap secrets` makes, and refused without any one of its secrets: no
    deployment with a default token or password."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip(
            "docker-compose is not installed (Debian package docker-compose, scripts/apt-packages.txt)"
        )
    env_file = tmp_path / ".env"
    assert complete_env_file(env_file) == list(COMPOSE_SECRETS)
    ok = _compose_config(tool, env_file)
    assert ok.returncode == 0, ok.stderr
    full = env_file.read_text().splitlines()
    for name in (
        "VAP_API_TOKEN",
        "VAP_NATS_TRACKER_PASSWORD",
        "VAP_NATS_ROUTE_PASSWORD",
        "VAP_GRAFANA_PASSWORD",
    ):
        env_file.write_text("\n".join(line for line in full if not line.startswith(f"{name}=")) + "\n")
        missing = _compose_config(tool, env_file)
        assert missing.returncode != 0 and name in missing.stderr, (name, missing.stderr)


def test_compose_wiring() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"nats", "postgres", "prometheus", "grafana", *SERVICES} <= set(services)
    assert "jetstream {" in (NATS_DIR / "nats.conf").read_text()
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


def _required(value: str, name: str) -> bool:
    return value.startswith(f"${{{name}:?")


def test_compose_gives_each_service_its_own_nats_user_and_publishes_nothing_open() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    nats = services["nats"]
    assert (
        nats["command"] == ["-c", "/etc/nats/nats.conf"] and "./deploy/nats:/etc/nats:ro" in nats["volumes"]
    )
    for role in Role:  # the server resolves every user's password from its environment
        assert _required(nats["environment"][password_env(role)], password_env(role))
    for name, role in ROLES.items():
        env = services[name]["environment"]
        assert env["VAP_NATS_USER"] == user_name(role), name
        assert _required(env["VAP_NATS_PASSWORD"], password_env(role)), name
        if role is Role.DECODER_AGENT:
            assert env["VAP_DECODER_CHANNEL_NATS_USER"] == user_name(Role.DECODER_CHANNEL)
            channel = env["VAP_DECODER_CHANNEL_NATS_PASSWORD"]
            assert _required(channel, password_env(Role.DECODER_CHANNEL))
    assert {role for role in ROLES.values()} | {Role.DECODER_CHANNEL} == set(SERVICE_ROLES)
    # Published: NATS (users), the control API and the live view (API token), Grafana (password). Not
    # Prometheus (no authentication), not NATS monitoring.
    published = {
        str(port).split(":")[-2 if str(port).count(":") > 1 else 0]
        for svc in services.values()
        for port in svc.get("ports", [])
    }
    assert published == {"4222", "50051", "8080", "3000"}
    for member in ("nats-1", "nats-2", "nats-3"):
        svc = services[member]
        assert svc["command"] == ["-c", "/etc/nats/cluster.conf"]
        assert svc["environment"]["NATS_SERVER_NAME"] == member
        assert all(password_env(role) in svc["environment"] for role in Role)
    # No secret has a default value.
    text = COMPOSE.read_text()
    assert not re.search(r"\$\{VAP_[A-Z_]*(PASSWORD|TOKEN)[A-Z_]*:-", text)


def test_compose_secrets_are_the_ones_vap_secrets_makes() -> None:
    required = set(re.findall(r"\$\{(VAP_[A-Z_]+):\?", COMPOSE.read_text()))
    assert required == set(COMPOSE_SECRETS)
    example = read_env_file(REPO / "deploy" / "compose.env.example")
    assert list(example) == list(COMPOSE_SECRETS) and not any(example.values())


def test_compose_nats_users_are_generated_from_the_permission_table() -> None:
    """deploy/nats/auth.conf is `python -m vap_common.nats_auth server-config`'s output: regenerate it
    after changing the table (the command in its first lines)."""
    done = subprocess.run(
        [sys.executable, "-m", "vap_common.nats_auth", "server-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (NATS_DIR / "auth.conf").read_text() == done.stdout, "deploy/nats/auth.conf is stale"


def test_compose_nats_config_refuses_anonymous_clients(tmp_path: Path) -> None:
    """The real nats-server with deploy/nats/nats.conf and the passwords of a `vap secrets` env file:
    anonymous clients are refused, each user gets its own rights. (A copy with port, store and monitoring
    moved aside.) The cluster members' config is valid with the same variables."""
    import asyncio

    from vap_common.bus import connect_nats
    from vap_common.nats_auth import NatsAuth, NatsAuthError

    env_file = tmp_path / ".env"
    complete_env_file(env_file)
    secrets = read_env_file(env_file)
    env = dict(os.environ) | secrets
    port = free_tcp_port()
    config = (NATS_DIR / "nats.conf").read_text()
    moved = {"port: 4222": f"port: {port}", '"/data"': json.dumps(str(tmp_path / "js"))}
    moved['"127.0.0.1:8222"'] = json.dumps(f"127.0.0.1:{free_tcp_port()}")
    for old, new in moved.items():
        assert old in config, old
        config = config.replace(old, new)
    (tmp_path / "nats.conf").write_text(config)
    shutil.copy(NATS_DIR / "auth.conf", tmp_path / "auth.conf")
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(tmp_path / "nats.conf")], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while not tcp_accepts("127.0.0.1", port):
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "nats.log").read_text()
            time.sleep(0.05)

        async def check() -> None:
            url = f"nats://127.0.0.1:{port}"
            with pytest.raises(NatsAuthError, match="anonymous"):
                await connect_nats(url, name="compose-anonymous")
            auth = NatsAuth(user_name(Role.TRACKER), secrets[password_env(Role.TRACKER)])
            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc))

            tracker = await connect_nats(url, name="compose-tracker", auth=auth, error_cb=on_error)
            await tracker.publish("vap.agent.a.commands", b"forged")
            await tracker.flush()
            await asyncio.sleep(0.3)
            await tracker.close()
            assert any("permissions violation" in e for e in errors), errors

        asyncio.run(check())
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert not any(value in (tmp_path / "nats.log").read_text() for value in secrets.values())
    cluster_env = env | {
        "NATS_SERVER_NAME": "nats-1",
        **{f"NATS_ROUTE_{i}": f"nats-route://vap-route:x@nats-{i}:6222" for i in (1, 2, 3)},
    }
    tested = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(NATS_DIR / "cluster.conf")],
        env=cluster_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_vap_secrets_completes_an_env_file_and_keeps_what_is_there(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# mine\nVAP_API_TOKEN=kept-token\nVAP_GRAFANA_PASSWORD=\nOTHER=1\n")
    env_file.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "vap_stack.cli", "secrets", str(env_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    values = read_env_file(env_file)
    assert values["VAP_API_TOKEN"] == "kept-token" and values["OTHER"] == "1"
    assert all(values[name] for name in COMPOSE_SECRETS)
    assert env_file.read_text().count("VAP_GRAFANA_PASSWORD=") == 1
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert not any(values[name] in done.stdout + done.stderr for name in COMPOSE_SECRETS)
    again = subprocess.run(
        [sys.executable, "-m", "vap_stack.cli", "secrets", str(env_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "added nothing" in again.stdout and read_env_file(env_file) == values
