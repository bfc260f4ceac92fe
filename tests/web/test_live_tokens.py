"""A live view serves only viewers whose token the control API still accepts, and survives a token rotation:
the real control service (real NATS, real PostgreSQL) is restarted on its port with the old token removed;
the viewer who logged in with the old token is closed with the "log in again" message, the other viewer goes
on receiving tracked frames, whichever of the two opened the watch's control streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vap_common import subjects
from vap_common.ports import free_tcp_port
from vap_control.testing import control_settings, drop_database, fresh_database, running_control
from vap_framebus import AsyncFrameSubscriber
from vap_inference.testing import write_frame
from vap_proto.v1 import frame_pb2, tracking_pb2
from vap_proto.v1.frame_pb2 import PixelFormat
from vap_shmring import RingWriter
from vap_web.control import ControlClient
from vap_web.frames import FrameEncoder
from vap_web.live import TOKEN_REFUSED, Viewer, ViewerClosed, Watches
from vap_web.settings import WebSettings

pytestmark = pytest.mark.integration

OLD = "old-token-" + uuid.uuid4().hex
NEW = "new-token-" + uuid.uuid4().hex
SCENARIO = str(uuid.uuid4())


class Inbox:
    """Everything one viewer was sent: frame headers, and how it was closed."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.frames: list[dict[str, Any]] = []
        self.closed: ViewerClosed | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.viewer.messages():
            if isinstance(message, ViewerClosed):
                self.closed = message
            elif isinstance(message, bytes):
                (size,) = struct.unpack(">I", message[:4])
                self.frames.append(json.loads(message[4 : 4 + size]))

    def tracked_since(self, sequence: int) -> bool:
        return any(not f["raw"] and f["seq"] >= sequence for f in self.frames)


@contextlib.asynccontextmanager
async def control_with(
    nats_url: str, database_url: str, port: int, tokens: list[str], workdir: Path
) -> AsyncIterator[None]:
    consumer = f"test-inbox-{uuid.uuid4().hex[:8]}"
    listen = f"127.0.0.1:{port}"
    settings = control_settings(
        nats_url, database_url, tokens[0], auth_tokens=tokens, listen=listen, inbox_consumer=consumer
    )
    async with running_control(settings, workdir / "control.log") as running:
        assert running.service.fanout is not None and running.service.inbox is not None
        await running.service.fanout.ready.wait()
        try:
            yield
        finally:
            await running.service.inbox.stop()
            with contextlib.suppress(Exception):
                await running.service.bus.js.delete_consumer(settings.inbox_stream, consumer)


async def until(condition: Any, timeout: float, what: str, tick: Any) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        await tick()


async def test_rotated_token_closes_its_viewers_and_the_others_keep_tracked_frames(
    nats_url: str, database_url: str, nats_client: Any, tmp_path: Path
) -> None:
    port = free_tcp_port()
    channel = f"web-tokens-{uuid.uuid4().hex}"
    # raw_after_s: long, so every frame a viewer gets here came through the control API's tracked stream.
    settings = WebSettings(
        control_target=f"127.0.0.1:{port}", max_fps=30, raw_after_s=600, token_cache_s=0.2, nats_url=nats_url
    )
    client = ControlClient(settings)
    bus = AsyncFrameSubscriber()
    await bus.connect(nats_url)
    encoder = FrameEncoder(max_width=0)
    watches = Watches(client, bus, encoder, settings)
    ring = RingWriter.create(
        channel, width=64, height=48, pixel_format=PixelFormat.PIXEL_FORMAT_I420, slots=8
    )
    picture = np.full((48, 64, 3), 128, np.uint8)
    sequence = 0

    async def tick() -> None:
        """One camera frame: its ref on NATS, then its tracked result on the tracker's subject."""
        nonlocal sequence
        sequence += 1
        ref = write_frame(ring, picture, sequence=sequence, scenario_id=SCENARIO)
        await nats_client.publish(subjects.frames(channel), ref.SerializeToString())
        tracked = tracking_pb2.TrackedFrame(
            frame=frame_pb2.FrameInfo(
                channel_id=channel,
                scenario_id=SCENARIO,
                sequence=sequence,
                stream_epoch=ref.stream_epoch,
                capture_time_ns=time.time_ns(),
                width=64,
                height=48,
            ),
            publish_time_ns=time.time_ns(),
        )
        await nats_client.publish(subjects.tracks(channel), tracked.SerializeToString())
        await asyncio.sleep(0.05)

    new_viewer, old_viewer = Viewer(NEW), Viewer(OLD)
    inboxes: list[Inbox] = []
    db = fresh_database(database_url)
    try:
        async with control_with(nats_url, db, port, [NEW, OLD], tmp_path):
            # The old token's viewer joins last: the watch's streams use its token.
            await watches.join(SCENARIO, channel, new_viewer)
            await watches.join(SCENARIO, channel, old_viewer)
            inboxes = [Inbox(new_viewer), Inbox(old_viewer)]
            await until(lambda: all(i.tracked_since(1) for i in inboxes), 30, "tracked frames for both", tick)

        # Rotation: control comes back on the same port accepting only the new token.
        async with control_with(nats_url, db, port, [NEW], tmp_path):
            restarted_at = sequence + 1
            await until(lambda: inboxes[1].closed is not None, 30, "the old token's viewer closed", tick)
            await until(lambda: inboxes[0].tracked_since(restarted_at), 30, "tracked frames after", tick)
        assert inboxes[1].closed == ViewerClosed(TOKEN_REFUSED)
        assert inboxes[0].closed is None
        assert old_viewer not in next(iter(watches._watches.values())).viewers
        assert len(watches) == 1
    finally:
        for inbox in inboxes:
            inbox.task.cancel()
        await watches.leave(SCENARIO, old_viewer)
        await watches.leave(SCENARIO, new_viewer)
        assert len(watches) == 0
        await bus.close()
        await client.close()
        encoder.close()
        ring.close()
        drop_database(database_url, db)
