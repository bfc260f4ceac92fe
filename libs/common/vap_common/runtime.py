"""What every VAP service process has: structured logs, a gRPC health endpoint (grpc.health.v1),
Prometheus metrics over HTTP, and a clean shutdown on SIGTERM/SIGINT.

    settings = DecoderSettings.load(args.config)
    async with ServiceRuntime("decoder-agent", settings) as runtime:
        ...start work...
        runtime.set_serving(True)
        await runtime.stopped()          # returns on SIGTERM/SIGINT or runtime.request_stop()
        ...stop work...

The bound ports are in ``runtime.health_port`` / ``runtime.metrics_port`` (settings may ask for 0 = any free
port, which tests use) and are logged at start.

A service with a public API (the control service) passes ``interceptors`` and ``options`` for the server and
``ports``: more listening addresses, each insecure (credentials None) or TLS; their bound port numbers are
in ``runtime.bound_ports`` in the same order. gRPC can only add ports before the server starts, hence here.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from vap_common.grpc_guard import MalformedRequestInterceptor
from vap_common.logs import configure_logging, get_logger
from vap_common.settings import ServiceSettings

_log = get_logger("vap.runtime")


class ServiceRuntime:
    def __init__(
        self,
        service: str,
        settings: ServiceSettings,
        *,
        metrics: bool = True,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        ports: Sequence[tuple[str, grpc.ServerCredentials | None]] = (),
    ) -> None:
        self.service = service
        self.settings = settings
        self._metrics_enabled = metrics
        self._interceptors = list(interceptors)
        self._options = list(options)
        self._ports = list(ports)
        self.bound_ports: list[int] = []
        self._stop = asyncio.Event()
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics_server: object | None = None
        self.health_port = 0
        self.metrics_port = 0

    async def __aenter__(self) -> Self:
        configure_logging(self.service, level=self.settings.log_level, fmt=self.settings.log_format)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        # The malformed-request guard innermost: a service's own interceptors (authentication) run first.
        interceptors = [*self._interceptors, MalformedRequestInterceptor()]
        self._server = grpc.aio.server(interceptors=interceptors, options=self._options)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        health_address = f"{self.settings.bind_host}:{self.settings.health_port}"
        self.health_port = self._server.add_insecure_port(health_address)
        for address, credentials in self._ports:
            if credentials is None:
                self.bound_ports.append(self._server.add_insecure_port(address))
            else:
                self.bound_ports.append(self._server.add_secure_port(address, credentials))
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._metrics_enabled:
            server, _thread = start_http_server(self.settings.metrics_port, addr=self.settings.bind_host)
            self._metrics_server = server
            self.metrics_port = int(server.server_port)
        _log.info(
            "service started",
            health_port=self.health_port,
            metrics_port=self.metrics_port,
            ports=self.bound_ports,
        )
        return self

    def add_grpc_service(self) -> grpc.aio.Server:
        """The process's gRPC server, to add more services before ``set_serving``."""
        assert self._server is not None
        return self._server

    async def set_serving(self, serving: bool, service: str = "") -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set(service, status)

    def request_stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace=1.0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        _log.info("service stopped")
