"""The tracker service over a real NATS server: FrameDetections in; TrackedFrame, AnalyticsEvent and
IntervalCounts out; rules changed at runtime by ScenarioConfig; the service as a process with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from vap_common import subjects
from vap_common.bus import NatsBus
from vap_proto.v1 import analytics_pb2, scenario_pb2, tracking_pb2
from vap_tracker.service import TrackerService
from vap_tracker.settings import TrackerServiceSettings
from vap_tracker.testing import Walker, detections, line_path, line_rule, scenario_config

pytestmark = pytest.mark.integration


class Inbox:
    """Everything the tracker publishes for one channel, parsed."""

    def __init__(self) -> None:
        self.tracked: list[tracking_pb2.TrackedFrame] = []
        self.events: list[analytics_pb2.AnalyticsEvent] = []
        self.counts: list[analytics_pb2.IntervalCounts] = []

    async def subscribe(self, nc: NatsClient, channel: str) -> None:
        async def on_tracks(msg: object) -> None:
            self.tracked.append(tracking_pb2.TrackedFrame.FromString(msg.data))  # type: ignore[attr-defined]

        async def on_events(msg: object) -> None:
            self.events.append(analytics_pb2.AnalyticsEvent.FromString(msg.data))  # type: ignore[attr-defined]

        async def on_counts(msg: object) -> None:
            self.counts.append(analytics_pb2.IntervalCounts.FromString(msg.data))  # type: ignore[attr-defined]

        await nc.subscribe(subjects.tracks(channel), cb=on_tracks)
        await nc.subscribe(subjects.events(channel), cb=on_events)
        await nc.subscribe(subjects.counts(channel), cb=on_counts)
        await nc.flush()


async def eventually(condition: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(loop_scope="session")
async def service(nats_url: str) -> AsyncIterator[TrackerService]:
    bus = await NatsBus.connect(nats_url)
    svc = TrackerService(TrackerServiceSettings(), bus)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        await bus.close()


async def publish_config(nc: NatsClient, svc: TrackerService, config: scenario_pb2.ScenarioConfig) -> None:
    await nc.publish(subjects.scenario_config(config.scenario_id), config.SerializeToString())
    await nc.flush()
    # Detections and configs arrive on different subscriptions: wait until this one is applied.
    channel, revision = config.channel_id, config.revision

    def applied() -> bool:
        pipe = svc.pipelines.get(channel)
        return pipe is None if not config.active else pipe is not None and pipe.revision >= revision

    await eventually(applied)


async def test_tracks_and_line_crossing_then_rules_change_at_runtime(
    nats_client: NatsClient, service: TrackerService
) -> None:
    scenario, channel = f"scn-{uuid.uuid4().hex[:8]}", f"cam/{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    await inbox.subscribe(nats_client, channel)
    door = line_rule("door", (100, 240), (540, 240), min_distance=5)
    await publish_config(
        nats_client, service, scenario_config(scenario, channel, 1, [door], count_interval_s=1.0)
    )

    walker = Walker(line_path((320, 150), (320, 350), 40))
    for f in range(40):
        fd = detections(f, [walker], channel, scenario)
        await nats_client.publish(subjects.detections(channel), fd.SerializeToString())
    await nats_client.flush()
    await eventually(lambda: len(inbox.tracked) == 40 and inbox.events)

    confirmed = {
        t.track_id for tf in inbox.tracked for t in tf.tracks if t.state == tracking_pb2.TRACK_STATE_CONFIRMED
    }
    assert confirmed == {1}, "one person, one stable track id"
    assert [tf.frame.sequence for tf in inbox.tracked] == list(range(40))
    last = inbox.tracked[-1].tracks[0]
    assert last.class_name == "person" and last.velocity.vy > 100  # 5 px/frame at 25 fps = 125 px/s
    (event,) = inbox.events
    assert (event.rule_id, event.track_id, event.line_crossing.direction_label) == ("door", 1, "in")
    assert event.scenario_id == scenario and event.channel_id == channel

    # Runtime change: the door goes away, a vertical line appears. An older revision arriving late is ignored.
    aisle = line_rule("aisle", (320, 0), (320, 480), labels=("east-west", "west-east"))
    await publish_config(
        nats_client, service, scenario_config(scenario, channel, 2, [aisle], count_interval_s=1.0)
    )
    await nats_client.publish(
        subjects.scenario_config(scenario), scenario_config(scenario, channel, 1, [door]).SerializeToString()
    )
    await eventually(lambda: any(c.rule_id == "door" for c in inbox.counts))  # the removed rule's interval
    runner = Walker(line_path((150, 400), (500, 400), 40), start=40)
    for f in range(40, 80):
        fd = detections(f, [runner], channel, scenario)
        await nats_client.publish(subjects.detections(channel), fd.SerializeToString())
    await nats_client.flush()
    await eventually(lambda: len(inbox.events) == 2 and len(inbox.tracked) == 80)
    new_event = inbox.events[1]
    assert new_event.rule_id == "aisle" and new_event.line_crossing.direction_label == "west-east"
    assert new_event.track_id == 2

    # Stop: the open interval is published and the channel's state dropped.
    await publish_config(nats_client, service, scenario_config(scenario, channel, 3, [aisle], active=False))
    assert channel not in service.pipelines
    await eventually(lambda: sum(c.line.b_to_a for c in inbox.counts if c.rule_id == "aisle") == 1)
    aisle_counts = [c for c in inbox.counts if c.rule_id == "aisle"]
    assert sum(c.line.b_to_a for c in aisle_counts) == 1


async def test_the_service_process_tracks_and_stops_on_sigterm(
    nats_client: NatsClient, nats_url: str
) -> None:
    channel = f"proc-{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    await inbox.subscribe(nats_client, channel)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "VAP_TRACKER_CHANNELS": f'["{channel}"]',
        "VAP_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen([sys.executable, "-m", "vap_tracker"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        walker = Walker(line_path((100, 300), (400, 300), 30))
        # Keep publishing until the process has subscribed and answers.
        deadline = asyncio.get_running_loop().time() + 20
        f = 0
        while not inbox.tracked:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert asyncio.get_running_loop().time() < deadline, "no TrackedFrame from the tracker process"
            fd = detections(f % 30, [walker], channel)
            await nats_client.publish(subjects.detections(channel), fd.SerializeToString())
            await nats_client.flush()
            await asyncio.sleep(0.05)
            f += 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_tracker_started_late_applies_the_stored_scenario_config(
    nats_client: NatsClient, nats_url: str, scenario_config_stream: JetStreamContext
) -> None:
    """The scenario exists before the tracker starts (or restarts): its config comes from JetStream."""
    scenario, channel = f"scn-{uuid.uuid4().hex[:8]}", f"late-{uuid.uuid4().hex[:8]}"
    subject = subjects.scenario_config(scenario)
    door = line_rule("door", (100, 240), (540, 240), min_distance=5)
    old = scenario_config(scenario, channel, 1, [line_rule("old", (0, 0), (1, 1))])
    await scenario_config_stream.publish(subject, old.SerializeToString())
    current = scenario_config(scenario, channel, 2, [door], count_interval_s=1.0)
    await scenario_config_stream.publish(subject, current.SerializeToString())
    inbox = Inbox()
    await inbox.subscribe(nats_client, channel)

    bus = await NatsBus.connect(nats_url)
    svc = TrackerService(TrackerServiceSettings(channels=[channel]), bus)
    await svc.start()
    try:
        pipe = svc.pipelines[channel]  # applied during start, before any detection
        assert (pipe.scenario_id, pipe.revision) == (scenario, 2)
        # A live repeat of an older revision after the replay changes nothing.
        await nats_client.publish(subject, old.SerializeToString())
        walker = Walker(line_path((320, 150), (320, 350), 40))
        for f in range(40):
            fd = detections(f, [walker], channel, scenario)
            await nats_client.publish(subjects.detections(channel), fd.SerializeToString())
        await nats_client.flush()
        await eventually(lambda: len(inbox.tracked) == 40 and inbox.events)
        (event,) = inbox.events
        assert (event.rule_id, event.line_crossing.direction_label) == ("door", "in")
        assert event.scenario_id == scenario
    finally:
        await svc.stop()
        await bus.close()
