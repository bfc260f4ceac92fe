# ruff: noqa: N802  (gRPC method names are CamelCase)
"""ControlService: the gRPC servicer. Thin: validate ids, call the use case, map errors to status codes.

Every ControlError becomes its status code with its (credential-free) message; anything unexpected is logged
and answered INTERNAL without details. Authentication happens before (auth.BearerTokenInterceptor).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc

from vap_common.logs import get_logger
from vap_common.redact import redact_text, redact_url
from vap_control import lifecycle, metrics, placement, queries, validation
from vap_control.agent_sync import AgentSync
from vap_control.db.pool import Pool
from vap_control.errors import ControlError, InvalidArgumentError, NotFoundError
from vap_control.inference import InferenceClient
from vap_control.repo import scenarios as repo
from vap_control.scenario_ops import ScenarioOps
from vap_control.settings import ControlSettings
from vap_control.subscriptions import DetectionFilter, EventFilter, FanOut
from vap_proto.v1 import control_pb2, control_pb2_grpc, health_pb2, inference_pb2

_log = get_logger("vap.control.api")

# GetScenario's wait_streaming: at most this long, and only while the scenario is starting or running.
MAX_WAIT_STREAMING_S = 60.0
WAIT_STREAMING_WHILE = frozenset({lifecycle.INIT_STARTUP, lifecycle.IN_STARTUP_PROCESSING, lifecycle.ACTIVE})

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


def unary(
    fn: Callable[[Any, Req, Context], Awaitable[Resp]],
) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """Error mapping and metrics for a unary method."""
    method = fn.__name__

    @wraps(fn)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        started = time.perf_counter()
        code = "OK"
        try:
            return await fn(self, request, context)
        except ControlError as exc:
            code = exc.code.name
            await context.abort(exc.code, exc.message)
        except Exception:
            code = "INTERNAL"
            _log.exception("unexpected error", method=method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the control service log)")
        finally:
            metrics.RPC_TOTAL.labels(method, code).inc()
            metrics.RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
        raise AssertionError("unreachable")  # context.abort raises

    return wrapper


def _uuid(raw: str, field: str = "scenario_id") -> uuid.UUID:
    return validation.scenario_id(raw, field)


class ControlApi(control_pb2_grpc.ControlServiceServicer):
    def __init__(
        self,
        *,
        pool: Pool,
        settings: ControlSettings,
        ops: ScenarioOps,
        fanout: FanOut,
        agents: AgentSync,
        inference: InferenceClient,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._ops = ops
        self._fanout = fanout
        self._agents = agents
        self._inference = inference

    # --- scenarios ------------------------------------------------------------------------------------------

    @unary
    async def CreateScenario(
        self, request: control_pb2.CreateScenarioRequest, context: Context
    ) -> control_pb2.CreateScenarioResponse:
        return await self._ops.create(request)

    @unary
    async def GetScenario(
        self, request: control_pb2.GetScenarioRequest, context: Context
    ) -> control_pb2.GetScenarioResponse:
        scenario_id = _uuid(request.scenario_id)
        scenario = await self._ops.get(scenario_id)
        if request.HasField("wait_streaming"):
            wait_s = request.wait_streaming.ToNanoseconds() / 1e9
            if not 0 <= wait_s <= MAX_WAIT_STREAMING_S:
                raise InvalidArgumentError(
                    "wait_streaming", f"must be between 0 and {MAX_WAIT_STREAMING_S:g} s"
                )
            deadline = time.monotonic() + wait_s
            while (
                scenario.status in WAIT_STREAMING_WHILE
                and scenario.health.state != health_pb2.CHANNEL_STATE_STREAMING
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
                scenario = await self._ops.get(scenario_id)
        return control_pb2.GetScenarioResponse(scenario=scenario)

    @unary
    async def ListScenarios(
        self, request: control_pb2.ListScenariosRequest, context: Context
    ) -> control_pb2.ListScenariosResponse:
        return await self._ops.list(request)

    @unary
    async def UpdateScenario(
        self, request: control_pb2.UpdateScenarioRequest, context: Context
    ) -> control_pb2.UpdateScenarioResponse:
        return control_pb2.UpdateScenarioResponse(scenario=await self._ops.update(request))

    @unary
    async def StartScenario(
        self, request: control_pb2.StartScenarioRequest, context: Context
    ) -> control_pb2.StartScenarioResponse:
        return control_pb2.StartScenarioResponse(scenario=await self._ops.start(_uuid(request.scenario_id)))

    @unary
    async def StopScenario(
        self, request: control_pb2.StopScenarioRequest, context: Context
    ) -> control_pb2.StopScenarioResponse:
        return control_pb2.StopScenarioResponse(scenario=await self._ops.stop(_uuid(request.scenario_id)))

    @unary
    async def DeleteScenario(
        self, request: control_pb2.DeleteScenarioRequest, context: Context
    ) -> control_pb2.DeleteScenarioResponse:
        await self._ops.delete(_uuid(request.scenario_id), force=request.force)
        return control_pb2.DeleteScenarioResponse()

    # --- live streams ---------------------------------------------------------------------------------------

    async def StreamDetections(
        self, request: control_pb2.StreamDetectionsRequest, context: Context
    ) -> AsyncIterator[control_pb2.StreamDetectionsResponse]:
        try:
            validation.unit_interval(request.min_confidence, "min_confidence")
        except InvalidArgumentError as exc:
            metrics.RPC_TOTAL.labels("StreamDetections", exc.code.name).inc()
            await context.abort(exc.code, exc.message)
        metrics.RPC_TOTAL.labels("StreamDetections", "OK").inc()
        await self._fanout.ready.wait()
        sub = self._fanout.add_detections(DetectionFilter.from_request(request))
        try:
            # Headers go out now, so a client knows the subscription is live before the first item.
            await context.send_initial_metadata(())
            while (item := await sub.get()) is not None:
                frame, dropped = item
                yield control_pb2.StreamDetectionsResponse(frame=frame, dropped_total=dropped)
        finally:
            self._fanout.remove_detections(sub)

    async def StreamEvents(
        self, request: control_pb2.StreamEventsRequest, context: Context
    ) -> AsyncIterator[control_pb2.StreamEventsResponse]:
        metrics.RPC_TOTAL.labels("StreamEvents", "OK").inc()
        await self._fanout.ready.wait()
        sub = self._fanout.add_events(EventFilter.from_request(request))
        try:
            await context.send_initial_metadata(())
            while (item := await sub.get()) is not None:
                event, dropped = item
                yield control_pb2.StreamEventsResponse(event=event, dropped_total=dropped)
        finally:
            self._fanout.remove_events(sub)

    # --- stored results -------------------------------------------------------------------------------------

    async def _scenario(self, raw_id: str) -> repo.ScenarioRow:
        scenario_id = _uuid(raw_id)
        async with self._pool.connection() as conn:
            row = await repo.get(conn, scenario_id)
        if row is None:
            raise NotFoundError(f"scenario {scenario_id} not found")
        return row

    @unary
    async def QueryDetections(
        self, request: control_pb2.QueryDetectionsRequest, context: Context
    ) -> control_pb2.QueryDetectionsResponse:
        row = await self._scenario(request.scenario_id)
        async with self._pool.connection() as conn:
            return await queries.query_detections(conn, row, request)

    @unary
    async def QueryEvents(
        self, request: control_pb2.QueryEventsRequest, context: Context
    ) -> control_pb2.QueryEventsResponse:
        row = await self._scenario(request.scenario_id)
        async with self._pool.connection() as conn:
            return await queries.query_events(conn, row, request)

    @unary
    async def QueryCounts(
        self, request: control_pb2.QueryCountsRequest, context: Context
    ) -> control_pb2.QueryCountsResponse:
        row = await self._scenario(request.scenario_id)
        base = repo.count_interval_s(row, self._settings.default_count_interval_s)
        async with self._pool.connection() as conn:
            return await queries.query_counts(conn, row, request, base_interval_s=base, now_ns=time.time_ns())

    # --- inference ------------------------------------------------------------------------------------------

    @unary
    async def Detect(
        self, request: inference_pb2.DetectRequest, context: Context
    ) -> inference_pb2.DetectResponse:
        if not request.image:
            raise InvalidArgumentError("image", "required: JPEG or PNG bytes")
        limit = self._settings.max_request_bytes
        if len(request.image) > limit:
            raise InvalidArgumentError(
                "image", f"{len(request.image)} bytes is over the limit of {limit} bytes (max_request_bytes)"
            )
        if request.HasField("confidence_threshold"):
            validation.unit_interval(request.confidence_threshold, "confidence_threshold")
        return await self._inference.detect(request)

    @unary
    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: Context
    ) -> inference_pb2.ListModelsResponse:
        return await self._inference.list_models(fresh=True)

    # --- channels -------------------------------------------------------------------------------------------

    @unary
    async def ListChannels(
        self, request: control_pb2.ListChannelsRequest, context: Context
    ) -> control_pb2.ListChannelsResponse:
        ids = [_uuid(raw, "scenario_ids") for raw in request.scenario_ids]
        states = {int(s) for s in request.states}
        async with self._pool.connection() as conn:
            rows = await repo.list_for_channels(conn, scenario_ids=ids, include_inactive=bool(ids))
        response = control_pb2.ListChannelsResponse()
        for row in rows:
            scenario = repo.to_proto(row)
            health = scenario.health
            live = self._agents.latest_health.get(row.channel_id)
            if live is not None and row.agent_id and live.agent_id and live.agent_id != row.agent_id:
                live = None  # from a node the scenario moved away from
            if live is not None and live.report_time_ns >= health.report_time_ns:
                health = health_pb2.ChannelHealth()
                health.CopyFrom(live)
                health.reason = redact_text(health.reason)
            if states and int(health.state) not in states:
                continue
            fps, p50, p99 = self._fanout.stats.snapshot(row.channel_id)
            channel = response.channels.add(
                channel_id=row.channel_id,
                scenario_id=str(row.id),
                redacted_url=redact_url(row.redacted_url),
                detection_fps=fps,
                latency_p50_ms=p50,
                latency_p99_ms=p99,
            )
            channel.health.CopyFrom(health)
            if scenario.HasField("worker"):
                channel.worker.CopyFrom(scenario.worker)
        return response

    # --- nodes ----------------------------------------------------------------------------------------------

    @unary
    async def ListNodes(
        self, request: control_pb2.ListNodesRequest, context: Context
    ) -> control_pb2.ListNodesResponse:
        async with self._pool.connection() as conn:
            nodes = await placement.list_nodes(conn, self._settings, include_dead=request.include_dead)
        return control_pb2.ListNodesResponse(nodes=nodes)

    @unary
    async def DrainNode(
        self, request: control_pb2.DrainNodeRequest, context: Context
    ) -> control_pb2.DrainNodeResponse:
        node_id = validation.node_id(request.node_id)
        async with self._pool.connection() as conn, conn.transaction():
            node, moved = await placement.drain(conn, self._settings, node_id, undrain=request.undrain)
        self._agents.wake_relay()
        return control_pb2.DrainNodeResponse(node=node, moved=moved)
