"""Helpers for tests and tools that drive a real control service (no mocks of NATS or PostgreSQL).

- ``fresh_database``: a new, empty database on a PostgreSQL server (isolation per test module).
- ``running_control``: the control service in this process (ServiceRuntime + ControlService), with an
  authenticated gRPC stub.
- ``ControlProcess``: ``python -m vap_control`` as a child process with its log captured to a file.
- ``control_settings``: settings for a test instance (free port, fast retries, in-memory JetStream).
- ``wait_for``: poll an async condition until it holds (no fixed sleeps in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from psycopg import sql

from vap_common.process import terminate
from vap_common.runtime import ServiceRuntime
from vap_control.service import ControlService, grpc_server_setup
from vap_control.settings import ControlSettings
from vap_proto.v1 import control_pb2_grpc

T = TypeVar("T")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def fresh_database(admin_url: str, prefix: str = "vap_control_test") -> str:
    """CREATE DATABASE with a unique name on the server of ``admin_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


@contextlib.contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A fresh database (``fresh_database``) for the ``with`` block, dropped afterwards."""
    url = fresh_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def wait_for(
    condition: Callable[[], Awaitable[T]], timeout: float, what: str, *, interval: float = 0.05
) -> T:
    """Await ``condition()`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s (last value: {last!r})")
        await asyncio.sleep(interval)


def control_settings(nats_url: str, database_url: str, token: str, **overrides: Any) -> ControlSettings:
    """Settings for a test instance: any free port, fast retries and reconciles, in-memory JetStream."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "listen": "127.0.0.1:0",
        "auth_tokens": [token],
        "log_level": "INFO",
        "outbox_poll_s": 0.2,
        "retry_initial_s": 0.1,
        "retry_max_s": 1.0,
        "command_timeout_s": 5.0,
        "reconcile_s": 0.5,
        "inbox_storage": "memory",
        "inbox_max_bytes": 64 * 1024 * 1024,
        "inbox_ack_wait_s": 5.0,
        "health_persist_s": 1.0,
        "db_pool_min": 1,
        "db_pool_max": 6,
    }
    values.update(overrides)
    return ControlSettings(**values)


@dataclass
class RunningControl:
    service: ControlService
    runtime: ServiceRuntime
    settings: ControlSettings
    port: int
    token: str
    channel: grpc.aio.Channel
    stub: control_pb2_grpc.ControlServiceAsyncStub
    log_path: Path | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path is not None else ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)


def authenticated_channel(
    target: str, token: str, *, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """An insecure channel that sends the bearer token with every call (an interceptor would do too)."""
    interceptor = _TokenInterceptor(token)
    return grpc.aio.insecure_channel(
        target, options=options or [], interceptors=[interceptor, _StreamToken(token)]
    )


class _TokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._md), request)


class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._md), request)


def _with_token(details: Any, md: tuple[str, str]) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), md)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


@contextlib.asynccontextmanager
async def running_control(
    settings: ControlSettings, log_path: Path | None = None
) -> AsyncIterator[RunningControl]:
    """The control service in this process; its API on ``RunningControl.port``. With ``log_path`` the
    process's log lines (JSON, as in production) go to that file instead of stderr, for assertions."""
    assert settings.nats_url is not None and settings.database_url is not None
    interceptors, options, ports = grpc_server_setup(settings)
    token = settings.auth_tokens[0].get_secret_value()
    log_file: IO[str] | None = None
    try:
        async with ServiceRuntime(
            "control", settings, interceptors=interceptors, options=options, ports=ports
        ) as rt:
            # A test runner's SIGINT/SIGTERM (Ctrl-C, timeouts) must stop the run, not just this service.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if log_path is not None:
                log_file = log_path.open("a", encoding="utf-8")
                _redirect_logs(log_file)
            service = ControlService(settings, nats_url=settings.nats_url, database_url=settings.database_url)
            await service.start(rt.add_grpc_service())
            await rt.set_serving(True)
            port = rt.bound_ports[0]
            channel = authenticated_channel(f"127.0.0.1:{port}", token)
            stub = control_pb2_grpc.ControlServiceStub(channel)
            try:
                yield RunningControl(service, rt, settings, port, token, channel, stub, log_path)
            finally:
                await channel.close()
                await service.stop()
    finally:
        if log_file is not None:
            # The process's real stderr: a test runner's capture object may be gone by now.
            _redirect_logs(sys.__stderr__)
            log_file.close()


def _redirect_logs(stream: IO[str] | None) -> None:
    for handler in logging.getLogger().handlers:
        # Exactly the handler configure_logging installs (a test runner adds StreamHandler subclasses).
        if type(handler) is logging.StreamHandler and stream is not None:
            handler.setStream(stream)


class ControlProcess:
    """``python -m vap_control`` in a child process; ``settings`` become VAP_CONTROL_* variables."""

    def __init__(
        self, log_path: Path, *, config: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        self.config = config
        self.env = dict(os.environ)
        self.env.pop("VAP_CONFIG", None)
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ControlProcess:
        self._log = self.log_path.open("ab")
        argv = [sys.executable, "-m", "vap_control"] + (["--config", str(self.config)] if self.config else [])
        self.proc = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if self.record("control API listening") is not None:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"control not ready within {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def record(self, event: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if r.get("event") == event), None)

    @property
    def port(self) -> int:
        found = self.record("control API listening")
        assert found is not None
        return int(found["port"])

    @property
    def health_port(self) -> int:
        found = self.record("service started")
        assert found is not None
        return int(found["health_port"])

    @property
    def metrics_port(self) -> int:
        found = self.record("service started")
        assert found is not None
        return int(found["metrics_port"])

    def stop(self, timeout: float = 20.0) -> int | None:
        status = terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return status
