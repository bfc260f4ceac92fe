"""The gateway's client of the control API. Every call carries the browser's own bearer token, so the control
service's interceptor decides who may see what, exactly as for any other API client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from vap_common.counts import WINDOW_MINUTES, query_counts
from vap_proto.v1 import control_pb2, control_pb2_grpc, scenario_pb2
from vap_web import payloads
from vap_web.payloads import Json
from vap_web.settings import WebSettings

_LIST_PAGE = 200
# One query per camera every few seconds for the camera list's counts of the last hour is plenty, however
# many browsers show the list.
LIST_COUNTS_TTL_S = 2.0


def metadata(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def open_channel(settings: WebSettings) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [("grpc.keepalive_time_ms", 30_000)]
    if settings.control_ca_file is None:
        return grpc.aio.insecure_channel(settings.control_target, options=options)
    credentials = grpc.ssl_channel_credentials(settings.control_ca_file.read_bytes())
    return grpc.aio.secure_channel(settings.control_target, credentials, options=options)


class ControlClient:
    def __init__(self, settings: WebSettings, channel: grpc.aio.Channel | None = None) -> None:
        self.channel = channel if channel is not None else open_channel(settings)
        self.stub = control_pb2_grpc.ControlServiceStub(self.channel)
        self.timeout = settings.control_timeout_s
        self._list_counts: dict[str, tuple[float, dict[str, Json]]] = {}

    async def close(self) -> None:
        await self.channel.close()

    async def token_accepted(self, token: str) -> bool:
        """Whether the control API accepts ``token``; other failures (API down) raise AioRpcError."""
        try:
            await self.stub.ListScenarios(
                control_pb2.ListScenariosRequest(page_size=1), metadata=metadata(token), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            raise
        return True

    async def scenarios(self, token: str) -> list[scenario_pb2.Scenario]:
        out: list[scenario_pb2.Scenario] = []
        page_token = ""
        while True:
            reply = await self.stub.ListScenarios(
                control_pb2.ListScenariosRequest(page_size=_LIST_PAGE, page_token=page_token),
                metadata=metadata(token),
                timeout=self.timeout,
            )
            out.extend(reply.scenarios)
            page_token = reply.next_page_token
            if not page_token:
                return out

    async def channels(self, token: str, scenario_ids: list[str]) -> dict[str, control_pb2.ChannelStatus]:
        reply = await self.stub.ListChannels(
            control_pb2.ListChannelsRequest(scenario_ids=scenario_ids),
            metadata=metadata(token),
            timeout=self.timeout,
        )
        return {c.scenario_id: c for c in reply.channels}

    async def scenario(self, token: str, scenario_id: str) -> scenario_pb2.Scenario:
        reply = await self.stub.GetScenario(
            control_pb2.GetScenarioRequest(scenario_id=scenario_id),
            metadata=metadata(token),
            timeout=self.timeout,
        )
        return reply.scenario

    async def counts(self, token: str, scenario_id: str, minutes: float) -> list[Json]:
        """Counts per rule and interval over the last ``minutes``, oldest first (all pages)."""
        rows, _interval = await self.counts_and_interval(token, scenario_id, minutes)
        return rows

    async def counts_and_interval(
        self, token: str, scenario_id: str, minutes: float
    ) -> tuple[list[Json], float]:
        """As ``counts``, with the interval size (seconds) they were aggregated to."""
        counts, interval = await query_counts(
            self.stub, scenario_id, minutes=minutes, metadata=metadata(token), timeout=self.timeout
        )
        return payloads.interval_counts(counts), interval

    async def window_totals(
        self, token: str, scenario_id: str, minutes: float = WINDOW_MINUTES
    ) -> dict[str, Json]:
        """Counts per rule over the last ``minutes`` (vap_common.counts: what every surface shows)."""
        counts, _interval = await query_counts(
            self.stub, scenario_id, minutes=minutes, metadata=metadata(token), timeout=self.timeout
        )
        return payloads.summed(counts)

    async def camera_list(self, token: str, counts_minutes: float = WINDOW_MINUTES) -> list[Json]:
        """Every camera (scenario) with its channel's health and live figures and its counts of the last
        hour, ordered by name."""
        scenarios = await self.scenarios(token)
        channels = await self.channels(token, [s.id for s in scenarios]) if scenarios else {}
        counts = await asyncio.gather(*(self._summed_counts(token, s.id, counts_minutes) for s in scenarios))
        self._list_counts = {s.id: self._list_counts[s.id] for s in scenarios if s.id in self._list_counts}
        out = []
        for s, summed in zip(scenarios, counts, strict=True):
            row = payloads.camera(s, channels.get(s.id))
            row["counts"] = summed
            row["rules"] = [payloads.rule(r) for r in s.analytics.rules]
            out.append(row)
        out.sort(key=lambda r: (r["name"], r["id"]))
        return out

    async def _summed_counts(self, token: str, scenario_id: str, minutes: float) -> dict[str, Json]:
        cached = self._list_counts.get(scenario_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            summed = await self.window_totals(token, scenario_id, minutes)
        except grpc.aio.AioRpcError:
            return {}  # a scenario deleted meanwhile, or no counts yet: the row shows none
        self._list_counts[scenario_id] = (time.monotonic() + LIST_COUNTS_TTL_S, summed)
        return summed

    async def camera_detail(self, token: str, scenario_id: str) -> Json:
        scenario = await self.scenario(token, scenario_id)
        channels = await self.channels(token, [scenario_id])
        return payloads.camera_detail(scenario, channels.get(scenario_id))
