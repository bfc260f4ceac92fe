"""Live subscriptions: filters of StreamDetections / StreamEvents, and a slow subscriber that loses only its
own oldest messages (and is told how many) while a fast one and the bus are unaffected."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from vap_common import subjects
from vap_control.testing import RunningControl, authenticated_channel, wait_for
from vap_proto.v1 import (
    analytics_pb2,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    detection_pb2,
    frame_pb2,
    tracking_pb2,
)

pytestmark = pytest.mark.integration

QUEUE = 16


@pytest.fixture(scope="module")
def control_overrides() -> dict[str, Any]:
    return {"subscriber_queue": QUEUE}


@pytest_asyncio.fixture(loop_scope="session")
async def bus(nats_url: str) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def _frame(
    scenario: str, seq: int, dets: list[tuple[str, int, float]], channel: str = ""
) -> detection_pb2.FrameDetections:
    info = frame_pb2.FrameInfo(
        channel_id=channel or f"ch-{scenario}",
        scenario_id=scenario,
        sequence=seq,
        capture_time_ns=time.time_ns(),
    )
    box = common_pb2.BoundingBox(x1=1, y1=2, x2=30, y2=40)
    return detection_pb2.FrameDetections(
        frame=info,
        detections=[
            detection_pb2.Detection(box=box, class_name=n, class_id=c, confidence=p) for n, c, p in dets
        ],
        publish_time_ns=time.time_ns(),
    )


async def _open(stub: Any, request: Any, method: str = "StreamDetections") -> Any:
    call = getattr(stub, method)(request)
    await call.initial_metadata()  # the server registered the subscriber before it sent the headers
    return call


async def _publish(nc: Any, frame: detection_pb2.FrameDetections) -> None:
    await nc.publish(subjects.detections(frame.frame.channel_id), frame.SerializeToString())


async def _read(call: Any, n: int) -> list[Any]:
    return [await asyncio.wait_for(call.read(), 15.0) for _ in range(n)]


async def test_detection_filters(control: RunningControl, bus: Any) -> None:
    s1, s2 = str(uuid.uuid4()), str(uuid.uuid4())
    stub = control.stub
    by_scenario = await _open(stub, control_pb2.StreamDetectionsRequest(scenario_ids=[s1]))
    cars = await _open(stub, control_pb2.StreamDetectionsRequest(scenario_ids=[s1, s2], class_names=["car"]))
    confident = await _open(
        stub, control_pb2.StreamDetectionsRequest(scenario_ids=[s1, s2], min_confidence=0.5)
    )
    with_empty = await _open(stub, control_pb2.StreamDetectionsRequest(scenario_ids=[s1], include_empty=True))
    tracked = await _open(stub, control_pb2.StreamDetectionsRequest(scenario_ids=[s1], tracked=True))

    await _publish(bus, _frame(s1, 1, [("person", 0, 0.9), ("car", 2, 0.4)]))
    await _publish(bus, _frame(s2, 2, [("car", 2, 0.8)]))
    await _publish(bus, _frame(s1, 3, []))
    track = tracking_pb2.Track(
        track_id=5,
        global_id=9,
        state=tracking_pb2.TRACK_STATE_CONFIRMED,
        class_id=0,
        class_name="person",
        confidence=0.9,
        box=common_pb2.BoundingBox(x1=1, y1=1, x2=9, y2=9),
    )
    lost = tracking_pb2.Track(
        track_id=6, state=tracking_pb2.TRACK_STATE_LOST, frames_since_update=3, class_name="person"
    )
    tf = tracking_pb2.TrackedFrame(
        frame=frame_pb2.FrameInfo(channel_id=f"ch-{s1}", scenario_id=s1, sequence=1), tracks=[track, lost]
    )
    await bus.publish(subjects.tracks(f"ch-{s1}"), tf.SerializeToString())
    marker = _frame(s1, 99, [("car", 2, 0.99)])
    await _publish(bus, marker)

    def seqs(items: list[control_pb2.StreamDetectionsResponse]) -> list[int]:
        return [i.frame.frame.sequence for i in items]

    got = await _read(by_scenario, 2)
    assert seqs(got) == [1, 99] and [d.class_name for d in got[0].frame.detections] == ["person", "car"]
    got = await _read(cars, 3)
    assert seqs(got) == [1, 2, 99] and all(d.class_name == "car" for i in got for d in i.frame.detections)
    got = await _read(confident, 3)
    assert seqs(got) == [1, 2, 99]
    assert [d.class_name for d in got[0].frame.detections] == ["person"]  # the 0.4 car is filtered out
    got = await _read(with_empty, 3)
    assert seqs(got) == [1, 3, 99] and not got[1].frame.detections
    (only,) = await _read(tracked, 1)
    # Only the matched track is a detection of this frame; it carries its ids.
    assert [(d.track_id, d.global_id) for d in only.frame.detections] == [(5, 9)]
    assert all(i.dropped_total == 0 for i in got)
    for call in (by_scenario, cars, confident, with_empty, tracked):
        call.cancel()


async def test_event_filters(control: RunningControl, bus: Any) -> None:
    s1 = str(uuid.uuid4())
    door = await _open(
        control.stub,
        control_pb2.StreamEventsRequest(scenario_ids=[s1], rule_ids=["door"]),
        "StreamEvents",
    )
    enters = await _open(
        control.stub,
        control_pb2.StreamEventsRequest(scenario_ids=[s1], kinds=[analytics_pb2.EVENT_KIND_ZONE_ENTER]),
        "StreamEvents",
    )
    events = [
        analytics_pb2.AnalyticsEvent(
            event_id="1", scenario_id=s1, rule_id="door", line_crossing=analytics_pb2.LineCrossing()
        ),
        analytics_pb2.AnalyticsEvent(
            event_id="2", scenario_id=s1, rule_id="area", zone_enter=analytics_pb2.ZoneEnter()
        ),
        analytics_pb2.AnalyticsEvent(
            event_id="3", scenario_id=str(uuid.uuid4()), rule_id="door", zone_enter=analytics_pb2.ZoneEnter()
        ),
        analytics_pb2.AnalyticsEvent(
            event_id="4", scenario_id=s1, rule_id="door", zone_enter=analytics_pb2.ZoneEnter()
        ),
    ]
    for e in events:
        await bus.publish(subjects.events("ch"), e.SerializeToString())
    assert [i.event.event_id for i in await _read(door, 2)] == ["1", "4"]
    assert [i.event.event_id for i in await _read(enters, 2)] == ["2", "4"]
    door.cancel()
    enters.cancel()


async def test_a_slow_subscriber_loses_only_its_own_oldest_messages(
    control: RunningControl, bus: Any
) -> None:
    sid = str(uuid.uuid4())
    total, chunk = 600, QUEUE // 2
    request = control_pb2.StreamDetectionsRequest(scenario_ids=[sid])
    fast = await _open(control.stub, request)
    # The slow client reads nothing until the end. Without BDP probing its HTTP/2 window stays small, so the
    # transport cannot absorb the stream and the server-side queue must overflow.
    slow_channel = authenticated_channel(control.target, control.token, options=[("grpc.http2.bdp_probe", 0)])
    slow = await _open(control_pb2_grpc.ControlServiceStub(slow_channel), request)

    # The bus side: a plain NATS subscriber, standing for the rest of the pipeline.
    on_bus: list[int] = []

    async def count(msg: Any) -> None:
        on_bus.append(1)

    raw = await bus.subscribe(subjects.detections(f"ch-{sid}"), cb=count)
    received: list[control_pb2.StreamDetectionsResponse] = []
    progress = asyncio.Event()

    async def read_fast() -> None:
        while len(received) < total:
            received.append(await fast.read())
            progress.set()

    async def fast_has(n: int) -> None:
        while len(received) < n:
            progress.clear()
            await asyncio.wait_for(progress.wait(), 15.0)

    reader = asyncio.create_task(read_fast())
    dets = [("person", 0, 0.9)] * 100  # ~4 kB per message: 2.4 MB in all, far beyond any transport buffer
    try:
        for start in range(0, total, chunk):
            for seq in range(start, min(start + chunk, total)):
                await _publish(bus, _frame(sid, seq, dets))
            # Pace the publisher on the fast subscriber only, so that one never overflows its queue.
            await fast_has(min(start + chunk, total))
        await reader
    finally:
        reader.cancel()
    assert [r.frame.frame.sequence for r in received] == list(range(total))
    assert all(r.dropped_total == 0 for r in received)

    slow_items: list[control_pb2.StreamDetectionsResponse] = []
    while not slow_items or slow_items[-1].frame.frame.sequence != total - 1:  # the newest is never dropped
        slow_items.append(await asyncio.wait_for(slow.read(), 15.0))
    sequences = [i.frame.frame.sequence for i in slow_items]
    assert sequences == sorted(sequences)  # order kept; what is missing was dropped oldest-first
    dropped = slow_items[-1].dropped_total
    assert dropped > 0, dropped
    assert len(slow_items) + dropped == total  # every message either delivered or counted as dropped
    await wait_for(_at_least(on_bus, total), 10.0, "every message on the bus")
    await raw.unsubscribe()
    fast.cancel()
    slow.cancel()
    await slow_channel.close()


def _at_least(items: list[Any], n: int) -> Any:
    async def check() -> bool:
        return len(items) >= n

    return check


async def test_stream_ends_with_unauthenticated_without_token(control: RunningControl) -> None:
    async with grpc.aio.insecure_channel(control.target) as channel:
        call = control_pb2_grpc.ControlServiceStub(channel).StreamDetections(
            control_pb2.StreamDetectionsRequest()
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
