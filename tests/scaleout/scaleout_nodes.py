"""VAP nodes for the scale-out tests: separate process groups on this machine (a decoder agent with its
decoders plus an inference service, distinct node ids and ring-name prefixes) that a test can kill -9 as a
whole."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

from vap_common.nats_auth import NatsAuth, NatsCredentials, Role
from vap_shmring import RING_PREFIX, SHM_DIR, cleanup_stale_rings

MODEL = "ssdlite-mbv2-person-300"


def rotated(urls: list[str], first: int) -> str:
    """NATS_URL for a client that prefers server ``first`` (and knows the others for failover)."""
    return ",".join(urls[first:] + urls[:first])


class Node:
    """One node: ``python -m vap_decoder agent`` and ``python -m vap_inference`` in one new process group
    (decoders are the agent's children, so they are in it too), each connected as its role's NATS user
    (``users``; the decoders as decoder-channel), as on a host of a multi-host deployment."""

    def __init__(
        self,
        name: str,
        nats_url: str,
        workdir: Path,
        *,
        labels: dict[str, str],
        users: dict[Role, NatsCredentials],
    ) -> None:
        self.node_id = f"{name}-{uuid.uuid4().hex[:6]}"
        self.agent_id = f"agent-{self.node_id}"
        self.workdir = workdir
        self.users = users
        self.base = {k: v for k, v in os.environ.items() if k != "VAP_CONFIG"} | {"NATS_URL": nats_url}
        self.labels = labels
        self.agent: subprocess.Popen[bytes] | None = None
        self.inference: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def agent_log(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def inference_log(self) -> Path:
        return self.workdir / "inference.log"

    def start(self) -> Node:
        channel = self.users[Role.DECODER_CHANNEL]
        agent_env = self.base | {
            **NatsAuth.of(self.users[Role.DECODER_AGENT]).environment(),
            "VAP_DECODER_CHANNEL_NATS_USER": channel.user,
            "VAP_DECODER_CHANNEL_NATS_PASSWORD": channel.password,
            "VAP_DECODER_AGENT_ID": self.agent_id,
            "VAP_DECODER_NODE_ID": self.node_id,
            "VAP_DECODER_NODE_LABELS": json.dumps(self.labels),
            "VAP_DECODER_NODE_MODELS": json.dumps([MODEL]),
            "VAP_DECODER_NODE_BACKEND": "onnxruntime",
            "VAP_DECODER_MAX_WORKERS": "2",
            "VAP_DECODER_STATUS_INTERVAL_S": "0.5",
            "VAP_DECODER_STOP_GRACE_S": "2",
            "VAP_DECODER_DATA_DIR": str(self.workdir / "data"),
        }
        inference_env = self.base | {
            **NatsAuth.of(self.users[Role.INFERENCE]).environment(),
            "VAP_INFERENCE_NODE_ID": self.node_id,
            "VAP_INFERENCE_DEFAULT_MODEL": MODEL,
            "VAP_INFERENCE_THREADS": "1",
            "VAP_INFERENCE_DATA_DIR": str(self.workdir / "inference-data"),
        }
        self.agent = self._spawn(["vap_decoder", "agent"], agent_env, self.agent_log, group=0)
        self.inference = self._spawn(
            ["vap_inference"], inference_env, self.inference_log, group=self.agent.pid
        )
        return self

    def _spawn(
        self, argv: list[str], env: dict[str, str], log: Path, *, group: int
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        self._logs.append(out)
        return subprocess.Popen(
            [sys.executable, "-m", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            process_group=group,
        )

    def ready(self) -> bool:
        for proc, log in ((self.agent, self.agent_log), (self.inference, self.inference_log)):
            assert proc is not None
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited:\n{log.read_text(errors='replace')[-3000:]}")
        return _has_event(self.agent_log, "decoder agent running") and _has_event(
            self.inference_log, "inference service subscribed"
        )

    def kill(self) -> None:
        """kill -9 of the whole node: agent, decoders and inference at once."""
        assert self.agent is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.agent.pid, signal.SIGKILL)
        for proc in (self.agent, self.inference):
            if proc is not None:
                proc.wait(10)

    def stop(self) -> None:
        for proc in (self.inference, self.agent):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.inference, self.agent):
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for out in self._logs:
            out.close()
        # Rings of decoders killed with the node (their writers are dead).
        ours = [n for n in os.listdir(SHM_DIR) if n.startswith(f"{RING_PREFIX}{self.node_id}.")]
        cleanup_stale_rings(only=ours)


def _has_event(path: Path, event: str) -> bool:
    if not path.exists():
        return False
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("event") == event:
                return True
    return False


def wait_sync(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.1)
