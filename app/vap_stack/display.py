"""The live view of ``vap up`` and ``vap watch``: per camera state, fps, latency, people tracked and counts.

Figures come from the control API only (so `vap watch` on another machine sees the same): tracked
detections and events are streamed (StreamDetections tracked=true, StreamEvents), channel state, fps and
latency are polled (ListChannels), line counts are those of the last hour as QueryCounts gives them
(vap_common.counts: the same numbers as the web view and the API). A stream that breaks (control
restarting) is re-opened after a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from vap_common.counts import WINDOW_MINUTES, query_counts, totals
from vap_proto.v1 import control_pb2, control_pb2_grpc, health_pb2

Metadata = tuple[tuple[str, str], ...]


@dataclass
class CameraView:
    camera: str
    scenario_id: str
    state: str = "-"
    fps: float = 0.0
    latency_ms: float = 0.0
    reconnects: int = 0
    people: int = 0
    track_ids: set[int] = field(default_factory=set)
    # rule id -> (label a->b, count, label b->a, count) over the last hour (QueryCounts)
    lines: dict[str, tuple[str, int, str, int]] = field(default_factory=dict)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # line rule id -> direction labels
    zones: dict[str, int] = field(default_factory=dict)
    events: int = 0
    frames: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def line_text(self) -> str:
        parts = [f"{rule} {a}:{na} {b}:{nb}" for rule, (a, na, b, nb) in sorted(self.lines.items())]
        parts += [f"{zone} occ {n}" for zone, n in sorted(self.zones.items())]
        return ", ".join(parts) or "-"


class LiveView:
    def __init__(
        self,
        stub: control_pb2_grpc.ControlServiceAsyncStub,
        metadata: Metadata,
        scenarios: dict[str, str],
        *,
        poll_s: float = 2.0,
    ) -> None:
        self._stub = stub
        self._md = metadata
        self._poll_s = poll_s
        self.cameras = {sid: CameraView(camera, sid) for camera, sid in scenarios.items()}
        self.recent_events: deque[str] = deque(maxlen=8)
        self._recount = asyncio.Event()  # a crossing happened: query the counts again soon

    # -- data --------------------------------------------------------------------------------------------
    async def _detections(self) -> None:
        request = control_pb2.StreamDetectionsRequest(
            scenario_ids=list(self.cameras), tracked=True, include_empty=True
        )
        async for item in self._stub.StreamDetections(request, metadata=self._md):
            view = self.cameras.get(item.frame.frame.scenario_id)
            if view is None:
                continue
            tracked = [d for d in item.frame.detections if d.HasField("track_id")]
            view.people = sum(1 for d in tracked if d.class_name == "person")
            view.track_ids.update(d.track_id for d in tracked)
            view.frames.append(time.monotonic())

    async def _events(self) -> None:
        request = control_pb2.StreamEventsRequest(scenario_ids=list(self.cameras))
        async for item in self._stub.StreamEvents(request, metadata=self._md):
            ev = item.event
            view = self.cameras.get(ev.scenario_id)
            if view is None:
                continue
            view.events += 1
            kind = ev.WhichOneof("kind")
            if kind == "line_crossing":
                lc = ev.line_crossing
                self._recount.set()
                what = f"crossed {ev.rule_id} ({lc.direction_label or lc.direction})"
            elif kind == "zone_enter":
                view.zones[ev.rule_id] = ev.zone_enter.occupancy
                what = f"entered {ev.rule_id}"
            elif kind == "zone_exit":
                view.zones[ev.rule_id] = max(0, view.zones.get(ev.rule_id, 1) - 1)
                what = f"left {ev.rule_id}"
            else:
                what = f"{kind} {ev.rule_id}"
            stamp = time.strftime("%H:%M:%S")
            self.recent_events.append(f"{stamp} {view.camera}: {ev.class_name} #{ev.track_id} {what}")

    async def _channels(self) -> None:
        while True:
            reply = await self._stub.ListChannels(
                control_pb2.ListChannelsRequest(scenario_ids=list(self.cameras)),
                metadata=self._md,
                timeout=10,
            )
            for ch in reply.channels:
                view = self.cameras.get(ch.scenario_id)
                if view is None:
                    continue
                view.state = health_pb2.ChannelState.Name(ch.health.state).removeprefix("CHANNEL_STATE_")
                view.latency_ms = ch.latency_p50_ms
                view.reconnects = ch.health.reconnect_count
                view.fps = ch.detection_fps
            await asyncio.sleep(self._poll_s)

    async def _counts(self) -> None:
        for view in self.cameras.values():
            if not view.labels:
                reply = await self._stub.GetScenario(
                    control_pb2.GetScenarioRequest(scenario_id=view.scenario_id),
                    metadata=self._md,
                    timeout=10,
                )
                view.labels = {
                    r.rule_id: (r.line.a_to_b_label or "a_to_b", r.line.b_to_a_label or "b_to_a")
                    for r in reply.scenario.analytics.rules
                    if r.WhichOneof("kind") == "line"
                }
        while True:
            for view in self.cameras.values():
                counts, _ = await query_counts(
                    self._stub, view.scenario_id, minutes=WINDOW_MINUTES, metadata=self._md
                )
                for rule_id, tot in totals(counts).items():
                    if tot.kind == "line":
                        a, b = view.labels.get(rule_id, ("a_to_b", "b_to_a"))
                        view.lines[rule_id] = (a, tot.a_to_b, b, tot.b_to_a)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recount.wait(), self._poll_s)
                await asyncio.sleep(1.0)  # the control service stores results in batches
            self._recount.clear()

    @staticmethod
    async def _forever(source: Callable[[], Awaitable[None]]) -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await source()
            await asyncio.sleep(1.0)

    # -- output ------------------------------------------------------------------------------------------
    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="VAP — live (Ctrl+C stops)", expand=False)
        columns = (
            "camera",
            "state",
            "fps",
            "latency p50",
            "people now",
            "ids seen",
            "lines (last hour) / zones",
        )
        for column in columns:
            table.add_column(
                column, justify="right" if column in ("fps", "people now", "ids seen") else "left"
            )
        for view in self.cameras.values():
            table.add_row(
                view.camera,
                view.state + (f" ({view.reconnects} reconnects)" if view.reconnects else ""),
                f"{view.fps:.1f}",
                f"{view.latency_ms:.0f} ms" if view.latency_ms else "-",
                str(view.people),
                str(len(view.track_ids)),
                view.line_text(),
            )
        if self.recent_events:
            table.caption = "\n".join(self.recent_events)
        return table

    def line(self, view: CameraView) -> str:
        return (
            f"{view.camera}: state={view.state} fps={view.fps:.1f} latency_p50={view.latency_ms:.0f}ms "
            f"people={view.people} ids_seen={len(view.track_ids)} counts_last_hour=[{view.line_text()}]"
        )

    def print_summary(self) -> None:
        for view in self.cameras.values():
            _out(f"summary {self.line(view)} events={view.events}")

    async def run(self, mode: Literal["table", "lines", "none"], *, interval: float = 5.0) -> None:
        tasks = [
            asyncio.ensure_future(self._forever(source))
            for source in (self._detections, self._events, self._channels, self._counts)
        ]
        try:
            if mode == "table":
                from rich.live import Live

                with Live(self.table(), refresh_per_second=2, screen=False) as live:
                    while True:
                        await asyncio.sleep(0.5)
                        live.update(self.table())
            elif mode == "lines":
                while True:
                    await asyncio.sleep(interval)
                    for view in self.cameras.values():
                        _out(self.line(view))
            else:
                await asyncio.Event().wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _out(line: str) -> None:
    with contextlib.suppress(OSError):  # stdout closed (terminal gone): the stack still stops cleanly
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def default_mode() -> Literal["table", "lines"]:
    return "table" if sys.stdout.isatty() else "lines"
