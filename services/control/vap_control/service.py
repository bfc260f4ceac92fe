"""The control service assembled: database, NATS, background workers and the gRPC API.

    interceptors, options, ports = grpc_server_setup(settings)
    async with ServiceRuntime("control", settings, interceptors=..., options=..., ports=...) as runtime:
        service = ControlService(settings, nats_url=..., database_url=...)
        await service.start(runtime.add_grpc_service())
        ...
        await service.stop()

Start order: camera keys, migrations, pool, sealing of stored camera URLs (``sealing``), NATS (in the
background: the API works while NATS is down), then the workers (agent sync, fan-out, inbox, outbox relay,
retention), then the servicer and reflection. Stop reverses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from vap_common.camera_secrets import load_camera_keys
from vap_common.embedded import redact_dsn
from vap_common.grpc_auth import BearerTokenInterceptor, load_or_create_token
from vap_common.logs import get_logger
from vap_common.nats_auth import NatsAuth
from vap_control import metrics
from vap_control.agent_sync import AgentSync
from vap_control.bus import NatsConnection
from vap_control.db.migrate import migrate
from vap_control.db.pool import Pool, open_pool
from vap_control.grpc_api import ControlApi
from vap_control.inbox.consume import Inbox
from vap_control.inference import InferenceClient
from vap_control.outbox import OutboxRelay
from vap_control.retention import Retention
from vap_control.scenario_ops import ScenarioOps
from vap_control.sealing import seal_stored_urls
from vap_control.settings import ControlSettings
from vap_control.subscriptions import FanOut, LiveStats
from vap_proto.v1 import control_pb2, control_pb2_grpc

_log = get_logger("vap.control")

CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


# Room above max_request_bytes for the fields of a request besides its image.
REQUEST_HEADROOM = 1024 * 1024


def api_tokens(settings: ControlSettings) -> list[str]:
    tokens = [t.get_secret_value() for t in settings.auth_tokens]
    return tokens or [load_or_create_token(settings.token_file())]


def server_credentials(settings: ControlSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def grpc_server_setup(
    settings: ControlSettings,
) -> tuple[
    list[grpc.aio.ServerInterceptor], list[tuple[str, Any]], list[tuple[str, grpc.ServerCredentials | None]]
]:
    """Interceptors, server options and the API port for ServiceRuntime."""
    interceptors: list[grpc.aio.ServerInterceptor] = [
        BearerTokenInterceptor(api_tokens(settings), on_refused=metrics.refused_call)
    ]
    options: list[tuple[str, Any]] = [
        # Above the request limit by the size of a request's other fields: a Detect image over the limit
        # then gets INVALID_ARGUMENT naming it, not the transport's RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", settings.max_request_bytes + REQUEST_HEADROOM),
        ("grpc.max_send_message_length", settings.max_response_bytes),
        # Long-lived subscription streams through NAT/load balancers: ping idle connections.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    return interceptors, options, [(settings.listen, server_credentials(settings))]


class _GenericHandlersOnly:
    """The runtime's server is already started when services are added. grpc.aio then ignores "registered"
    method handlers (with a warning in the log) but still serves generic ones, which the generated
    ``add_*_to_server`` functions register too: pass only those on."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        pass


class ControlService:
    def __init__(
        self,
        settings: ControlSettings,
        *,
        nats_url: str,
        database_url: str,
        nats_auth: NatsAuth | None = None,
    ) -> None:
        self.settings = settings
        self.nats_url = nats_url
        self.database_url = database_url
        self._pool: Pool | None = None
        self.bus = NatsConnection(nats_url, auth=nats_auth or settings.nats_auth())
        self.inference = InferenceClient(
            settings.inference_target,
            timeout_s=settings.inference_timeout_s,
            cache_s=settings.models_cache_s,
            max_message_bytes=settings.max_request_bytes + REQUEST_HEADROOM,
            token=api_tokens(settings)[0],
        )
        self.agents: AgentSync | None = None
        self.fanout: FanOut | None = None
        self.inbox: Inbox | None = None
        self.relay: OutboxRelay | None = None
        self.retention: Retention | None = None
        self.api: ControlApi | None = None

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "service not started"
        return self._pool

    async def start(self, server: grpc.aio.Server) -> None:
        s = self.settings
        keys = load_camera_keys(s.data_dir, create=True)
        applied = await migrate(self.database_url)
        _log.info("database ready", database=redact_dsn(self.database_url), migrations_applied=applied)
        self._pool = await open_pool(self.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max)
        # Before any worker or the API runs: no plaintext URL is left, none is sealed under an old key.
        await seal_stored_urls(self.pool, keys)
        self.bus.start()
        self.relay = OutboxRelay(self.pool, self.bus, s, self.database_url)
        self.agents = AgentSync(self.pool, self.bus, s, on_agent_appeared=self.relay.wake)
        self.fanout = FanOut(self.bus, queue_size=s.subscriber_queue, stats=LiveStats(s.stats_window_s))
        self.inbox = Inbox(self.pool, self.bus, s)
        self.retention = Retention(self.pool, s)
        for worker in (self.agents, self.fanout, self.inbox, self.relay, self.retention):
            await worker.start()
        ops = ScenarioOps(self.pool, s, self.inference, keys)
        self.api = ControlApi(
            pool=self.pool,
            settings=s,
            ops=ops,
            fanout=self.fanout,
            agents=self.agents,
            inference=self.inference,
        )
        late = cast(grpc.aio.Server, _GenericHandlersOnly(server))
        control_pb2_grpc.add_ControlServiceServicer_to_server(self.api, late)
        reflection.enable_server_reflection([CONTROL_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], late)

    async def stop(self) -> None:
        for worker in (self.retention, self.relay, self.inbox, self.fanout, self.agents):
            if worker is not None:
                with contextlib.suppress(Exception):
                    await worker.stop()
        await self.bus.close()
        await self.inference.close()
        if self._pool is not None:
            await self._pool.close()
