"""Decode a file with the real decoder process (``python -m vap_decoder channel``), as the agent starts it.

Same launch as production (``vap_decoder.process.channel_argv`` / ``child_environment``: StartChannel on
stdin, settings in the environment), and the figures come from the process's own ChannelHealth reports:
fps = frames after the first / (time of STOPPED - time of STREAMING), i.e. from the first decoded frame to
the last frame in the ring: interpreter start-up and opening the file excluded, as ffmpeg's ``-benchmark``
excludes opening its input.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
from nats.aio.msg import Msg

from vap_common import subjects
from vap_decoder.health import STOPPED, STREAMING, TERMINAL_STATES
from vap_decoder.process import channel_argv, child_environment
from vap_decoder.settings import DecoderSettings
from vap_proto.v1.agent_pb2 import StartChannel
from vap_proto.v1.health_pb2 import ChannelHealth
from vap_proto.v1.source_pb2 import SourceSpec

_TIMEOUT_S = 300.0


async def decode_in_process(path: Path, settings: DecoderSettings) -> tuple[float, int]:
    """(fps, frames) of one decoder process decoding ``path`` unpaced into its ring."""
    assert settings.nats_url, "the decoder process reports over NATS"
    channel_id = f"bench-decode-{uuid.uuid4().hex[:8]}"
    reports: list[ChannelHealth] = []
    ended = asyncio.Event()

    async def on_health(msg: Msg) -> None:
        health = ChannelHealth.FromString(msg.data)
        reports.append(health)
        if health.state in TERMINAL_STATES:
            ended.set()

    nc = await nats.connect(settings.nats_url, name="bench-decode")
    try:
        await nc.subscribe(subjects.channel_health(channel_id), cb=on_health)
        await nc.flush()
        start = StartChannel(channel_id=channel_id, source=SourceSpec(url=str(path)))
        proc = await asyncio.create_subprocess_exec(
            *channel_argv(0), stdin=asyncio.subprocess.PIPE, env=child_environment(settings)
        )
        assert proc.stdin is not None
        proc.stdin.write(start.SerializeToString())
        proc.stdin.close()
        try:
            await asyncio.wait_for(ended.wait(), _TIMEOUT_S)
        finally:
            if proc.returncode is None:
                await asyncio.wait_for(proc.wait(), 30)
    finally:
        await nc.close()
    final = reports[-1]
    if final.state != STOPPED or final.reason != "end of file":
        raise RuntimeError(f"decoder process ended {final.state}: {final.reason}")
    # Like ffmpeg's -benchmark rtime, which starts once the input is open: from the first decoded frame
    # (STREAMING) to the last frame in the ring, for the frames after the first one.
    streaming = next(h for h in reports if h.state == STREAMING)
    elapsed = (final.state_since_ns - streaming.state_since_ns) / 1e9
    return (final.frames_total - 1) / elapsed, final.frames_total
