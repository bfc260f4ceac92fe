"""The inbox (JetStream -> PostgreSQL, exactly once per frame under redelivery), the stored-result queries
with pagination and filters, and retention."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import psycopg
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2

from vap_common import subjects
from vap_control import retention
from vap_control.testing import RunningControl, wait_for
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

FRAMES = 40
STEP_NS = 40_000_000  # 25 fps
INTERVAL_S = 10
# Capture times aligned to the count interval, a little in the past.
T0 = (time.time_ns() // (INTERVAL_S * 10**9) - 12) * INTERVAL_S * 10**9
PERSON = common_pb2.BoundingBox(x1=10, y1=20, x2=110, y2=320)
CAR = common_pb2.BoundingBox(x1=300, y1=200, x2=500, y2=300)


def _frame_info(sid: str, channel: str, i: int, t0: int = T0) -> frame_pb2.FrameInfo:
    return frame_pb2.FrameInfo(
        channel_id=channel,
        scenario_id=sid,
        sequence=i,
        stream_epoch=1,
        capture_time_ns=t0 + i * STEP_NS,
        width=768,
        height=576,
    )


def _detections(sid: str, channel: str, i: int, t0: int = T0) -> detection_pb2.FrameDetections:
    info = _frame_info(sid, channel, i, t0)
    return detection_pb2.FrameDetections(
        frame=info,
        detections=[
            detection_pb2.Detection(box=PERSON, class_id=0, class_name="person", confidence=0.9),
            detection_pb2.Detection(box=CAR, class_id=2, class_name="car", confidence=0.4),
        ],
        stats=detection_pb2.InferenceStats(model_name="nanodet-m-416", batch_size=1),
        publish_time_ns=info.capture_time_ns + 15_000_000,
    )


def _tracked(sid: str, channel: str, i: int) -> tracking_pb2.TrackedFrame:
    track = tracking_pb2.Track(
        track_id=7,
        global_id=70,
        state=tracking_pb2.TRACK_STATE_CONFIRMED,
        box=PERSON,
        class_id=0,
        class_name="person",
        confidence=0.9,
        age=i + 1,
        hits=i + 1,
        frames_since_update=0,
    )
    info = _frame_info(sid, channel, i)
    return tracking_pb2.TrackedFrame(
        frame=info, tracks=[track], publish_time_ns=info.capture_time_ns + 20_000_000
    )


def _event(sid: str, channel: str, i: int) -> analytics_pb2.AnalyticsEvent:
    kind = {"line_crossing": analytics_pb2.LineCrossing(direction=analytics_pb2.CROSSING_DIRECTION_A_TO_B)}
    if i % 2:
        kind = {"zone_enter": analytics_pb2.ZoneEnter(occupancy=1)}  # type: ignore[dict-item]
    return analytics_pb2.AnalyticsEvent(
        event_id=f"{sid}-{i}",
        scenario_id=sid,
        channel_id=channel,
        rule_id="door" if i % 2 == 0 else "area",
        track_id=7,
        class_name="person",
        event_time_ns=T0 + i * STEP_NS * 5,
        frame_sequence=i * 5,
        **kind,
    )


def _counts(sid: str, channel: str, k: int) -> analytics_pb2.IntervalCounts:
    start = T0 + k * INTERVAL_S * 10**9
    return analytics_pb2.IntervalCounts(
        scenario_id=sid,
        channel_id=channel,
        rule_id="door",
        interval_start_ns=start,
        interval_end_ns=start + INTERVAL_S * 10**9,
        line=analytics_pb2.LineCounts(a_to_b=k + 1, b_to_a=1),
    )


@pytest.fixture(scope="module")
def control_overrides() -> dict[str, Any]:
    # A long window for ListChannels' live figures, so the test does not depend on how fast it runs.
    return {"stats_window_s": 600.0}


COUNT_INTERVALS = (0, 1, 3)  # interval 2 had no activity: no message, zero in the query
EVENTS = 8


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stored(control: RunningControl, nats_client_module: Any, control_db: str) -> dict[str, Any]:
    """A scenario whose results went through the inbox with duplicates and a forced redelivery."""
    interval = duration_pb2.Duration(seconds=INTERVAL_S)
    line = analytics_pb2.AnalyticsRule(
        rule_id="door",
        line=analytics_pb2.Line(p1=common_pb2.Point(x=0, y=100), p2=common_pb2.Point(x=700, y=100)),
    )
    zone = analytics_pb2.AnalyticsRule(
        rule_id="area",
        zone=analytics_pb2.Zone(polygon=[common_pb2.Point(x=x, y=y) for x, y in [(0, 0), (9, 0), (9, 9)]]),
    )
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=scenario_pb2.Scenario(
                source=source_pb2.SourceSpec(url="rtsp://cam/1"),
                analytics=analytics_pb2.AnalyticsSettings(rules=[line, zone], count_interval=interval),
            )
        )
    )
    sid, channel = created.scenario.id, created.scenario.channel_id
    inbox = control.service.inbox
    assert inbox is not None
    await inbox.stop()  # paused: this test drives the first delivery itself
    js = control.service.bus.js
    settings = control.settings

    async def no_pull_waiting() -> bool:
        # The stopped loop's last pull request must expire first, or it would swallow messages (which
        # JetStream redelivers only after ack_wait).
        info = await js.consumer_info(settings.inbox_stream, settings.inbox_consumer)
        return info.num_waiting == 0

    await wait_for(no_pull_waiting, 10.0, "the paused inbox's pull request to expire")

    nc = nats_client_module
    messages: list[tuple[str, bytes]] = []
    for i in range(FRAMES):
        messages.append((subjects.detections(channel), _detections(sid, channel, i).SerializeToString()))
        if i % 2 == 0:
            messages.append((subjects.tracks(channel), _tracked(sid, channel, i).SerializeToString()))
    messages += [
        (subjects.events(channel), _event(sid, channel, i).SerializeToString()) for i in range(EVENTS)
    ]
    messages += [
        (subjects.counts(channel), _counts(sid, channel, k).SerializeToString()) for k in COUNT_INTERVALS
    ]
    # A foreign scenario's frame (no such scenario here) is skipped, not stored.
    stranger = str(uuid.uuid4())
    messages.append(
        (subjects.detections("elsewhere"), _detections(stranger, "elsewhere", 0).SerializeToString())
    )
    for subject, payload in messages:
        await nc.publish(subject, payload)
    # A producer that retried: the first ten messages again, as new JetStream messages.
    for subject, payload in messages[:10]:
        await nc.publish(subject, payload)
    await nc.flush()
    total = len(messages) + 10

    # First delivery: stored, then "crash" before the acks (JetStream redelivers after a nak or ack_wait).
    psub = await inbox.bind()
    fetched: list[Any] = []
    while len(fetched) < total:
        fetched += await psub.fetch(total - len(fetched), timeout=5)
    first = await inbox.process(fetched, ack=False)
    assert first is not None and first.frames == FRAMES
    assert all(m.metadata.num_delivered == 1 for m in fetched)
    for m in fetched:
        await m.nak()
    await psub.unsubscribe()

    redelivered_before = inbox.redelivered
    await inbox.start()  # the normal loop takes the redelivered messages

    async def drained() -> bool:
        # Every message came a second time and nothing is left unacknowledged.
        info = await js.consumer_info(settings.inbox_stream, settings.inbox_consumer)
        seen = inbox.redelivered - redelivered_before
        return seen >= total and info.num_ack_pending == 0 and info.num_pending == 0

    await wait_for(drained, 20.0, "the inbox consumer to acknowledge everything")
    redelivered = inbox.redelivered - redelivered_before
    return {"sid": sid, "channel": channel, "total": total, "redelivered": redelivered, "db": control_db}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def nats_client_module(nats_url: str) -> Any:
    import nats

    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def _count(db: str, table: str, sid: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE scenario_id = %s", (uuid.UUID(sid),)
        ).fetchone()
    return int(row[0]) if row else 0


async def test_every_result_is_stored_exactly_once_under_redelivery(stored: dict[str, Any]) -> None:
    db, sid = stored["db"], stored["sid"]
    # JetStream really delivered every message a second time (after the nak).
    assert stored["redelivered"] >= stored["total"]
    assert _count(db, "frames", sid) == FRAMES
    assert _count(db, "detections", sid) == 2 * FRAMES
    assert _count(db, "tracked_frames", sid) == FRAMES // 2
    assert _count(db, "tracks", sid) == FRAMES // 2
    assert _count(db, "events", sid) == EVENTS
    assert _count(db, "counts", sid) == len(COUNT_INTERVALS)
    with psycopg.connect(db) as conn:
        (foreign,) = conn.execute(
            "SELECT count(*) FROM frames WHERE channel_id = 'elsewhere'"
        ).fetchone() or (0,)
    assert foreign == 0


async def test_query_detections_pages_filters_and_track_ids(
    control: RunningControl, stored: dict[str, Any]
) -> None:
    sid = stored["sid"]
    request = control_pb2.QueryDetectionsRequest(scenario_id=sid, page_size=7)
    frames: list[detection_pb2.FrameDetections] = []
    while True:
        page = await control.stub.QueryDetections(request)
        assert len(page.frames) <= 7
        frames += page.frames
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [f.frame.sequence for f in frames] == list(range(FRAMES))  # oldest first, no gaps or repeats
    assert all(f.frame.scenario_id == sid and f.stats.model_name == "nanodet-m-416" for f in frames)
    for f in frames:
        person, car = f.detections
        assert (person.class_name, car.class_name) == ("person", "car")
        # The tracker ran on even frames: the person carries its track and identity there.
        if f.frame.sequence % 2 == 0:
            assert person.track_id == 7 and person.global_id == 70
        else:
            assert not person.HasField("track_id")
        assert not car.HasField("track_id")

    confident = await control.stub.QueryDetections(
        control_pb2.QueryDetectionsRequest(scenario_id=sid, min_confidence=0.5, page_size=1000)
    )
    assert len(confident.frames) == FRAMES and all(
        [d.class_name for d in f.detections] == ["person"] for f in confident.frames
    )
    cars = await control.stub.QueryDetections(
        control_pb2.QueryDetectionsRequest(scenario_id=sid, class_names=["car"], page_size=1000)
    )
    assert all([d.class_id for d in f.detections] == [2] for f in cars.frames)
    window = common_pb2.TimeRange()
    window.start_time.FromNanoseconds(T0 + 10 * STEP_NS)
    window.end_time.FromNanoseconds(T0 + 20 * STEP_NS)
    ranged = await control.stub.QueryDetections(
        control_pb2.QueryDetectionsRequest(scenario_id=sid, time_range=window, page_size=1000)
    )
    assert [f.frame.sequence for f in ranged.frames] == list(range(10, 20))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await control.stub.QueryDetections(
            control_pb2.QueryDetectionsRequest(
                scenario_id=sid, page_token=page.next_page_token or "x", min_confidence=1
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_query_events_pages_and_filters(control: RunningControl, stored: dict[str, Any]) -> None:
    sid = stored["sid"]
    request = control_pb2.QueryEventsRequest(scenario_id=sid, page_size=3)
    events: list[analytics_pb2.AnalyticsEvent] = []
    while True:
        page = await control.stub.QueryEvents(request)
        events += page.events
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [e.event_id for e in events] == [f"{sid}-{i}" for i in range(EVENTS)]
    crossings = await control.stub.QueryEvents(
        control_pb2.QueryEventsRequest(scenario_id=sid, kinds=[analytics_pb2.EVENT_KIND_LINE_CROSSING])
    )
    assert [e.event_id for e in crossings.events] == [f"{sid}-{i}" for i in range(0, EVENTS, 2)]
    area = await control.stub.QueryEvents(control_pb2.QueryEventsRequest(scenario_id=sid, rule_ids=["area"]))
    assert all(e.rule_id == "area" and e.HasField("zone_enter") for e in area.events)


async def test_query_counts_fills_gaps_and_reaggregates(
    control: RunningControl, stored: dict[str, Any]
) -> None:
    sid = stored["sid"]
    window = common_pb2.TimeRange()
    window.start_time.FromNanoseconds(T0)
    window.end_time.FromNanoseconds(T0 + 6 * INTERVAL_S * 10**9)
    request = control_pb2.QueryCountsRequest(
        scenario_id=sid, time_range=window, rule_ids=["door"], page_size=4
    )
    counts: list[analytics_pb2.IntervalCounts] = []
    while True:
        page = await control.stub.QueryCounts(request)
        assert page.interval.seconds == INTERVAL_S
        counts += page.counts
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [c.interval_start_ns for c in counts] == [T0 + k * INTERVAL_S * 10**9 for k in range(6)]
    assert [c.line.a_to_b for c in counts] == [1, 2, 0, 4, 0, 0]  # interval 2 and the tail: zero, included

    coarse = await control.stub.QueryCounts(
        control_pb2.QueryCountsRequest(
            scenario_id=sid, time_range=window, interval=duration_pb2.Duration(seconds=3 * INTERVAL_S)
        )
    )
    by_rule: dict[str, list[analytics_pb2.IntervalCounts]] = {}
    for c in coarse.counts:
        by_rule.setdefault(c.rule_id, []).append(c)
    # Both rules of the scenario are listed, sums per 30 s.
    assert sorted(by_rule) == ["area", "door"]
    door = by_rule["door"]
    first_bucket = T0 - T0 % (3 * INTERVAL_S * 10**9)
    assert door[0].interval_start_ns == first_bucket
    # The door's crossing events all lie in its stored interval 0: counted there once, not again.
    assert sum(c.line.a_to_b for c in door) == 1 + 2 + 4
    assert sum(c.line.b_to_a for c in door) == 3
    assert not any(c.partial for c in door if c.interval_end_ns <= time.time_ns())
    # No interval of the zone was stored (its tracker "died" before publishing): its four enter events are
    # counted from the events, in their bucket, marked partial; the other buckets are zeros.
    area = by_rule["area"]
    assert all(c.WhichOneof("counts") == "zone" for c in area)
    assert [c.zone.enters for c in area if c.zone.enters] == [EVENTS // 2]
    assert [c.partial for c in area if c.zone.enters] == [True]
    assert sum(c.zone.max_occupancy for c in area) == 1


async def test_retention_deletes_old_results_only(
    control: RunningControl, stored: dict[str, Any], nats_client_module: Any
) -> None:
    sid, channel, db = stored["sid"], stored["channel"], stored["db"]
    old_t0 = T0 - 30 * 86_400 * 10**9
    for i in range(3):
        await nats_client_module.publish(
            subjects.detections(channel), _detections(sid, channel, i, t0=old_t0).SerializeToString()
        )
    await nats_client_module.flush()

    async def arrived() -> bool:
        return _count(db, "frames", sid) == FRAMES + 3

    await wait_for(arrived, 10.0, "the old frames")
    deleted = await retention.purge(
        control.service.pool, older_than_ns=time.time_ns() - 7 * 86_400 * 10**9, keep_outbox_s=7 * 86_400
    )
    assert deleted["frames"] == 3 and deleted["detections"] == 6
    assert _count(db, "frames", sid) == FRAMES and _count(db, "detections", sid) == 2 * FRAMES


async def test_list_channels_reports_live_rate_and_latency(
    control: RunningControl, stored: dict[str, Any]
) -> None:
    """The frames of the fixture went by on the bus: 40 detections (15 ms after capture), 20 tracked frames
    (20 ms after capture). The latency is the one to the tracked result."""
    response = await control.stub.ListChannels(control_pb2.ListChannelsRequest(scenario_ids=[stored["sid"]]))
    (channel,) = response.channels
    assert channel.channel_id == stored["channel"] and channel.redacted_url == "rtsp://cam/1"
    assert channel.detection_fps > 0
    assert channel.latency_p50_ms == pytest.approx(20.0) and channel.latency_p99_ms == pytest.approx(20.0)
