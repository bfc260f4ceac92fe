"""The inbox gathers a steady trickle of results into a few transactions (inbox_linger_s) and still stores
every frame exactly once."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
import psycopg
import pytest
import pytest_asyncio

from vap_common import subjects
from vap_control.testing import RunningControl, wait_for
from vap_proto.v1 import control_pb2, detection_pb2, frame_pb2, scenario_pb2, source_pb2

pytestmark = pytest.mark.integration

LINGER_S = 0.5
FRAMES = 60


@pytest.fixture(scope="module")
def control_overrides() -> dict[str, Any]:
    return {"inbox_linger_s": LINGER_S}


@pytest_asyncio.fixture
async def publisher(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def _stored_frames(db: str, sid: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM frames WHERE scenario_id = %s", (uuid.UUID(sid),)).fetchone()
    return int(row[0]) if row else 0


async def test_a_trickle_of_results_is_stored_in_few_batches(
    control: RunningControl, publisher: Any, control_db: str
) -> None:
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=scenario_pb2.Scenario(source=source_pb2.SourceSpec(url="rtsp://cam/linger"))
        )
    )
    sid, channel = created.scenario.id, created.scenario.channel_id
    inbox = control.service.inbox
    assert inbox is not None
    js, settings = control.service.bus.js, control.settings

    async def consuming() -> bool:
        # Results published before the inbox made its stream would not be kept for it.
        try:
            await js.consumer_info(settings.inbox_stream, settings.inbox_consumer)
        except nats.js.errors.NotFoundError:
            return False
        return True

    await wait_for(consuming, 30.0, "the inbox's stream and consumer")
    batches_before = inbox.batches
    started = time.monotonic()
    for i in range(FRAMES):
        info = frame_pb2.FrameInfo(
            channel_id=channel, scenario_id=sid, sequence=i, stream_epoch=1, capture_time_ns=10**18 + i
        )
        payload = detection_pb2.FrameDetections(frame=info).SerializeToString()
        await publisher.publish(subjects.detections(channel), payload)
        if i % 3 == 0:
            await publisher.publish(subjects.detections(channel), payload)  # a producer retry
        await asyncio.sleep(0.01)
    await publisher.flush()

    async def all_stored() -> bool:
        return _stored_frames(control_db, sid) == FRAMES

    await wait_for(all_stored, 30.0, "every frame to be stored")
    elapsed = time.monotonic() - started
    # One fetch (and one transaction) per linger period at most, whatever the machine's speed; storing each
    # message as it came would have taken about one batch per frame.
    assert inbox.batches - batches_before <= 2 + math.ceil(elapsed / LINGER_S)
    assert _stored_frames(control_db, sid) == FRAMES  # the retries were not stored twice
