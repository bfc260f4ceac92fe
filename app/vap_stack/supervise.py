"""Child processes of ``vap up``: started in order, watched, restarted with backoff, stopped in reverse.

Each service is ``python -m <module>`` with its log (JSON lines, as in production) in ``<data_dir>/logs``.
A service that exits while the stack runs is logged with its exit status and the tail of its log, and
restarted after a backoff that doubles up to 30 s and resets once it has run for a minute, so a broken
service neither spins nor is given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vap_common.process import terminate

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
RESET_AFTER_S = 60.0


class StackError(RuntimeError):
    """Something `vap up` cannot get past (a service that never becomes healthy, a missing model...)."""


@dataclass
class Service:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    # Local port where grpc.health.v1 says SERVING once the service is ready.
    health_port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = BACKOFF_INITIAL_S
    last_exit: int | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        # Should `vap up` itself be killed, the services get SIGTERM rather than live on. setpriv sets the
        # parent-death signal between fork and exec in C. A preexec_fn would do it in Python, and Python code
        # in the child of a process with gRPC threads (fork handlers run there) crashed it with SIGSEGV
        # now and then: seen as "exited with status -11" on restarts (tests/faults).
        setpriv = _SETPRIV if _PRCTL is not None else None
        prefix = [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *self.argv],
            env=dict(self.env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            # Own process group: a Ctrl+C in the terminal reaches only `vap up`, which then stops the
            # services in order instead of all of them racing each other.
            start_new_session=True,
            # Without setpriv (not Debian's util-linux): prctl from Python after all.
            preexec_fn=None if setpriv else _die_with_parent,  # noqa: PLW1509
        )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        status = terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return status


async def health_serving(port: int, timeout: float = 2.0) -> bool:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.aio.AioRpcError:
        return False


async def wait_healthy(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if service.proc is not None and service.proc.poll() is not None:
            raise StackError(
                f"{service.name} exited with status {service.proc.returncode} while starting "
                f"(log: {service.log_path}):\n{service.log_tail()}"
            )
        if await health_serving(service.health_port):
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{service.name} not healthy within {timeout:.0f} s (log: {service.log_path}):\n"
                f"{service.log_tail()}"
            )
        await asyncio.sleep(0.2)


class Supervisor:
    """The stack's services; ``watch()`` restarts the ones that die until ``stop_all()``."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.services: list[Service] = []
        self._report = report
        self._stopping = False

    async def start(self, service: Service, ready_timeout: float) -> None:
        self.services.append(service)
        service.start()
        await wait_healthy(service, ready_timeout)
        self._report(f"{service.name} ready (pid {service.pid}, health port {service.health_port})")

    async def watch(self, interval: float = 0.5) -> None:
        while not self._stopping:
            for service in self.services:
                if self._stopping or service.running() or service.proc is None:
                    continue
                now = time.monotonic()
                if service.last_exit is None:
                    # Just noticed: log once, then wait out the backoff before restarting.
                    service.last_exit = service.proc.returncode
                    if now - service.started_at > RESET_AFTER_S:
                        service.backoff_s = BACKOFF_INITIAL_S
                    self._report(
                        f"{service.name} exited with status {service.last_exit}; restarting in "
                        f"{service.backoff_s:.0f} s (log: {service.log_path})"
                    )
                    service.started_at = now
                    continue
                if now - service.started_at >= service.backoff_s:
                    service.backoff_s = min(service.backoff_s * 2, BACKOFF_MAX_S)
                    service.last_exit = None
                    service.restarts += 1
                    service.start()
            await asyncio.sleep(interval)

    def stop_all(self) -> None:
        """Stop in reverse start order: control first (no new commands), the decoder agent (which stops its
        decoders and removes their rings) after the services that read the rings."""
        self._stopping = True
        for service in reversed(self.services):
            with contextlib.suppress(ProcessLookupError):
                status = service.stop()
            if status not in (None, 0, -signal.SIGTERM):
                self._report(f"{service.name} stopped with status {status} (log: {service.log_path})")


try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _PRCTL = None
_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)
_SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0)


def child_environment(extra: Mapping[str, str], *, drop: Sequence[str] = ()) -> dict[str, str]:
    """Our environment without VAP_CONFIG and the variables named in ``drop``, plus ``extra``."""
    env = dict(os.environ)
    for name in ("VAP_CONFIG", *drop):
        env.pop(name, None)
    env.update(extra)
    return env
