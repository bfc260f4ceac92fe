"""Track attributes through the control plane: TrackedFrames and events go through the inbox into the real
PostgreSQL; QueryDetections shows each track's vote (with its vote count) and QueryCounts splits the line
crossings of each interval by gender, the latest vote of each track winning."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import psycopg
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2

from vap_common import subjects
from vap_control.testing import (
    RunningControl,
    control_settings,
    drop_database,
    fresh_database,
    running_control,
    wait_for,
)
from vap_proto.v1 import (
    analytics_pb2,
    common_pb2,
    control_pb2,
    detection_pb2,
    frame_pb2,
    scenario_pb2,
    source_pb2,
    tracking_pb2,
)

pytestmark = pytest.mark.integration

INTERVAL_S = 10
T0 = (time.time_ns() // (INTERVAL_S * 10**9) - 6) * INTERVAL_S * 10**9
STEP_NS = 40_000_000
# Three people side by side: track id -> (box x offset, final gender vote or None)
PEOPLE = {7: (0, "male"), 8: (200, "female"), 9: (400, None)}
A_TO_B = analytics_pb2.CROSSING_DIRECTION_A_TO_B


@pytest.fixture(scope="module")
def control_db(database_url: str) -> Iterator[str]:
    url = fresh_database(database_url, prefix="vap_attr_test")
    try:
        yield url
    finally:
        drop_database(database_url, url)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def control(nats_url: str, control_db: str) -> AsyncIterator[RunningControl]:
    consumer = f"test-attr-{uuid.uuid4().hex[:8]}"
    settings = control_settings(nats_url, control_db, "t-" + uuid.uuid4().hex, inbox_consumer=consumer)
    async with running_control(settings) as running:
        yield running
        assert running.service.inbox is not None
        await running.service.inbox.stop()
        await running.service.bus.js.delete_consumer(settings.inbox_stream, consumer)


def _box(tid: int) -> common_pb2.BoundingBox:
    x = PEOPLE[tid][0]
    return common_pb2.BoundingBox(x1=10 + x, y1=20, x2=110 + x, y2=320)


def _info(sid: str, channel: str, i: int) -> frame_pb2.FrameInfo:
    return frame_pb2.FrameInfo(
        channel_id=channel, scenario_id=sid, sequence=i, stream_epoch=1, capture_time_ns=T0 + i * STEP_NS
    )


def _messages(sid: str, channel: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i in range(4):
        info = _info(sid, channel, i)
        fd = detection_pb2.FrameDetections(frame=info)
        tf = tracking_pb2.TrackedFrame(frame=info)
        for tid, (_, gender) in PEOPLE.items():
            fd.detections.add(box=_box(tid), class_id=0, class_name="person", confidence=0.9)
            track = tf.tracks.add(
                track_id=tid, state=tracking_pb2.TRACK_STATE_CONFIRMED, box=_box(tid), class_id=0, hits=i + 1
            )
            if gender is not None:  # the vote firms up: unknown with one vote, then the label with i votes
                value = gender if i >= 2 else "unknown"
                track.attributes.add(name="gender", value=value, confidence=0.5 + 0.1 * i, votes=i)
        out += [(subjects.detections(channel), fd.SerializeToString())]
        out += [(subjects.tracks(channel), tf.SerializeToString())]
    for k, tid in enumerate(PEOPLE):
        event = analytics_pb2.AnalyticsEvent(
            event_id=f"{sid}-x{tid}",
            scenario_id=sid,
            channel_id=channel,
            rule_id="door",
            track_id=tid,
            class_name="person",
            event_time_ns=T0 + k * STEP_NS,
            line_crossing=analytics_pb2.LineCrossing(direction=A_TO_B),
        )
        out.append((subjects.events(channel), event.SerializeToString()))
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stored(control: RunningControl, nats_url: str, control_db: str) -> dict[str, Any]:
    line = analytics_pb2.AnalyticsRule(
        rule_id="door",
        line=analytics_pb2.Line(p1=common_pb2.Point(x=0, y=100), p2=common_pb2.Point(x=700, y=100)),
    )
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=scenario_pb2.Scenario(
                source=source_pb2.SourceSpec(url="rtsp://cam/attr"),
                analytics=analytics_pb2.AnalyticsSettings(
                    rules=[line], count_interval=duration_pb2.Duration(seconds=INTERVAL_S)
                ),
            )
        )
    )
    sid, channel = created.scenario.id, created.scenario.channel_id
    nc = await nats.connect(nats_url)
    try:
        for subject, payload in _messages(sid, channel):
            await nc.publish(subject, payload)
        await nc.flush()
    finally:
        await nc.close()

    def rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(control_db) as conn:
            return conn.execute(
                "SELECT track_id, value, votes FROM track_attributes WHERE scenario_id = %s"
                " ORDER BY track_id",
                (uuid.UUID(sid),),
            ).fetchall()

    async def all_stored() -> bool:
        events = await control.stub.QueryEvents(control_pb2.QueryEventsRequest(scenario_id=sid))
        return len(events.events) == len(PEOPLE) and len(rows()) == 2 and rows()[0][2] == 3

    await wait_for(all_stored, 20.0, "the inbox to store the tracked frames and events")
    return {"sid": sid, "rows": rows()}


async def test_track_votes_are_stored_and_shown_on_detections(
    control: RunningControl, stored: dict[str, Any]
) -> None:
    assert stored["rows"] == [(7, "male", 3), (8, "female", 3)]  # the latest vote per track
    page = await control.stub.QueryDetections(control_pb2.QueryDetectionsRequest(scenario_id=stored["sid"]))
    last = page.frames[-1]
    by_track = {d.track_id: list(d.attributes) for d in last.detections}
    assert [(a.name, a.value, a.votes) for a in by_track[7]] == [("gender", "male", 3)]
    assert [(a.value, a.votes) for a in by_track[8]] == [("female", 3)]
    assert by_track[9] == []


async def test_counts_are_split_by_gender(control: RunningControl, stored: dict[str, Any]) -> None:
    window = common_pb2.TimeRange()
    window.start_time.FromNanoseconds(T0)
    window.end_time.FromNanoseconds(T0 + INTERVAL_S * 10**9)
    response = await control.stub.QueryCounts(
        control_pb2.QueryCountsRequest(
            scenario_id=stored["sid"], time_range=window, split_by_attribute="gender"
        )
    )
    split = {(c.rule_id, c.direction, c.value): c.count for c in response.attribute_counts}
    assert split == {
        ("door", A_TO_B, "male"): 1,
        ("door", A_TO_B, "female"): 1,
        ("door", A_TO_B, "unknown"): 1,
    }
    assert all(
        c.interval_start_ns == T0 and c.kind == analytics_pb2.EVENT_KIND_LINE_CROSSING
        for c in response.attribute_counts
    )
    plain = await control.stub.QueryCounts(
        control_pb2.QueryCountsRequest(scenario_id=stored["sid"], time_range=window)
    )
    assert not plain.attribute_counts
