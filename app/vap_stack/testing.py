"""Helpers for tests that run the real stack: ``vap up`` in a child process, and its API client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import yaml

from vap_common.camera_secrets import KEY_FILE_ENV, KEYS_ENV
from vap_proto.v1 import control_pb2_grpc


class StackProcess:
    """``python -m vap_stack.cli up --config FILE`` with its output in a file; ``start`` waits until the
    scenarios of every camera exist (``stack.json`` written)."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "site.yaml"
        # Tests run side by side: the live view on any free port unless the test names one.
        config = config | {"ports": {"web": 0, **config.get("ports", {})}}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.data_dir = Path(config.get("data_dir", workdir / "stack"))
        self.output = workdir / "vap-up.log"
        # No camera key from outside: `vap up` makes and keeps its own in the data dir, as for a user.
        inherited = {k: v for k, v in os.environ.items() if k not in ("VAP_CONFIG", KEYS_ENV, KEY_FILE_ENV)}
        self.env = inherited | (env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self, timeout: float = 150.0) -> dict[str, Any]:
        self._out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vap_stack.cli",
                "up",
                "--config",
                str(self.config_path),
                "--display",
                "lines",
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._out,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vap up exited with {self.proc.returncode}:\n{self.text()[-4000:]}")
            state = self.state()
            if state:
                return state
            time.sleep(0.2)
        raise RuntimeError(f"vap up not ready within {timeout} s:\n{self.text()[-4000:]}")

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "stack.json").read_text()))
        except (OSError, ValueError):
            return {}

    def token(self) -> str:
        return Path(self.state()["token_file"]).read_text().strip()

    def channel(self) -> tuple[grpc.aio.Channel, control_pb2_grpc.ControlServiceAsyncStub]:
        channel = grpc.aio.insecure_channel(self.state()["control"])
        return channel, control_pb2_grpc.ControlServiceStub(channel)

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl+C; returns the exit status (SIGKILL after ``timeout``, then the status is -9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None
        return int(self.proc.returncode)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``vap ARGS`` against this stack (its data dir), from the stack's working directory."""
        return subprocess.run(
            [sys.executable, "-m", "vap_stack.cli", *args],
            env=self.env | (env or {}),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


async def delete_inbox_consumer(nats_url: str, consumer: str) -> None:
    """Remove a stack's durable inbox consumer: with interest retention, one left behind would keep other
    tests' results pending in the shared NATS server."""
    import nats

    nc = await nats.connect(nats_url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_consumer("VAP_RESULTS", consumer)
    await nc.close()


@contextlib.contextmanager
def running_stack(
    config: dict[str, Any],
    workdir: Path,
    *,
    nats_url: str,
    database_url: str,
    prefix: str,
    nats_credentials: Path | None = None,
) -> Iterator[tuple[StackProcess, dict[str, Any]]]:
    """``vap up`` with ``config`` on a fresh database of the server at ``database_url`` and its own in-memory
    inbox consumer; yields the process and its ``stack.json``. Afterwards Ctrl+C, which must end it with
    status 0, and the database and consumer are removed. ``prefix``: [a-z0-9_]+ naming both.
    ``nats_credentials``: the server's users per role (each service then connects as its role, as with an
    embedded server); without, every service uses ``nats_url``'s user info."""
    from vap_control.testing import drop_database, fresh_database

    db = fresh_database(database_url, prefix=prefix)
    consumer = f"{prefix}-inbox-{uuid.uuid4().hex[:8]}"
    control = dict(config.get("control", {})) | {"inbox_storage": "memory", "inbox_consumer": consumer}
    env = {"NATS_URL": nats_url, "DATABASE_URL": db}
    if nats_credentials is not None:
        env["VAP_NATS_CREDENTIALS"] = str(nats_credentials)
    proc = StackProcess(config | {"control": control}, workdir, env=env)
    try:
        yield proc, proc.start()
    finally:
        status = proc.interrupt() if proc.proc is not None else None
        asyncio.run(delete_inbox_consumer(nats_url, consumer))
        drop_database(database_url, db)
        assert status in (None, 0), f"vap up exited with {status}:\n{proc.text()[-3000:]}"
