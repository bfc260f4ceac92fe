"""Helpers for tests and tools that drive real decoder agents and processes (no mocks).

- ``AgentProcess``: ``python -m vap_decoder agent`` as a child process with its settings in the environment,
  its log captured to a file (for assertions such as "no credential in any log line").
- ``ChannelProcess``: one ``python -m vap_decoder channel`` without an agent.
- ``request``: an AgentCommand over NATS request/reply.
- ``HealthWatch`` / ``FrameWatch``: record ChannelHealth / FrameRef messages of one channel (nats-py) and
  wait for conditions; ``FrameWatch`` can read every frame's Y plane from the ring as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vap_common import subjects
from vap_common.process import terminate
from vap_proto.v1.agent_pb2 import (
    AgentCommand,
    AgentReply,
    ListAgentChannels,
    StartChannel,
    StopChannel,
)
from vap_proto.v1.frame_pb2 import FrameRef
from vap_proto.v1.health_pb2 import ChannelHealth
from vap_proto.v1.source_pb2 import SourceSpec
from vap_shmring import ReaderPool, ShmRingError, cleanup_stale_rings, ring_name


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


# Agent settings for tests: restarts, reconnects and stall detection in about a second instead of the
# production defaults' tens of seconds.
FAST_AGENT_SETTINGS: dict[str, float] = {
    "restart_backoff_initial_s": 0.2,
    "restart_backoff_max_s": 1.0,
    "stop_grace_s": 3.0,
    "status_interval_s": 0.5,
    "health_interval_s": 0.3,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 1.0,
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "stall_timeout_s": 2.0,
}


def source_spec(url: str, **fields: Any) -> SourceSpec:
    """A SourceSpec; float values for the Duration fields (open_timeout=1.0) are converted."""
    for name in ("open_timeout", "read_timeout", "stall_timeout", "backoff_max"):
        if isinstance(fields.get(name), int | float):
            fields[name] = duration(float(fields[name]))
    return SourceSpec(url=url, **fields)


def start_command(
    channel_id: str, spec: SourceSpec, *, agent_id: str = "", scenario_id: str = ""
) -> AgentCommand:
    return AgentCommand(
        command_id=uuid.uuid4().hex,
        agent_id=agent_id,
        start_channel=StartChannel(channel_id=channel_id, scenario_id=scenario_id, source=spec),
    )


def stop_command(channel_id: str, *, agent_id: str = "", grace: float | None = None) -> AgentCommand:
    stop = StopChannel(channel_id=channel_id)
    if grace is not None:
        stop.grace_period.CopyFrom(duration(grace))
    return AgentCommand(command_id=uuid.uuid4().hex, agent_id=agent_id, stop_channel=stop)


def list_command(*, agent_id: str = "") -> AgentCommand:
    return AgentCommand(command_id=uuid.uuid4().hex, agent_id=agent_id, list_channels=ListAgentChannels())


async def request(nc: NatsClient, agent_id: str, command: AgentCommand, timeout: float = 15.0) -> AgentReply:
    msg = await nc.request(subjects.agent_commands(agent_id), command.SerializeToString(), timeout=timeout)
    return AgentReply.FromString(msg.data)


class AgentProcess:
    """A decoder agent in a child process. ``settings`` become VAP_DECODER_* environment variables."""

    def __init__(
        self, nats_url: str, log_path: Path, *, agent_id: str | None = None, **settings: Any
    ) -> None:
        self.agent_id = agent_id or f"test-agent-{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        env = dict(os.environ)
        env.pop("VAP_CONFIG", None)
        env["NATS_URL"] = nats_url
        env["VAP_DECODER_AGENT_ID"] = self.agent_id
        env.setdefault("VAP_DECODER_LOG_LEVEL", "INFO")
        for name, value in settings.items():
            env[f"VAP_DECODER_{name.upper()}"] = str(value)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, ready_timeout: float = 20.0) -> AgentProcess:
        self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vap_decoder", "agent"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if any(r.get("event") == "decoder agent running" for r in self.log_records()):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"agent not ready within {ready_timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    @property
    def metrics_port(self) -> int:
        for record in self.log_records():
            if record.get("event") == "decoder agent running":
                return int(record["metrics_port"])
        raise RuntimeError("agent not running")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the agent stops its decoders), SIGKILL after ``timeout``; returns the exit status."""
        status = terminate(self.proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return status


class ChannelProcess:
    """One decoder process started directly (as the agent would), for tests of the process alone."""

    def __init__(self, start: StartChannel, nats_url: str, log_path: Path, **settings: Any) -> None:
        env = dict(os.environ)
        env.pop("VAP_CONFIG", None)
        env["NATS_URL"] = nats_url
        env["VAP_DECODER_AGENT_ID"] = settings.pop("agent_id", "test-direct")
        for name, value in settings.items():
            env[f"VAP_DECODER_{name.upper()}"] = str(value)
        self.channel_id = start.channel_id
        self.log_path = log_path
        self._log_file = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vap_decoder", "channel"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(start.SerializeToString())
        self.proc.stdin.close()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill the process if it still runs and remove its ring if it left one (as the agent would)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        cleanup_stale_rings(only=[ring_name(self.channel_id)])
        self._log_file.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class _Watch:
    def __init__(self, nc: NatsClient, subject: str) -> None:
        self.nc = nc
        self.subject = subject
        self.changed = asyncio.Event()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Any:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        self._record(msg)
        self.changed.set()

    def _record(self, msg: Msg) -> None:
        raise NotImplementedError

    async def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``condition()`` is truthy (re-checked on every message); returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} not seen within {timeout} s; {self.describe()}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.25))

    def describe(self) -> str:
        return ""


class HealthWatch(_Watch):
    """Every ChannelHealth of one channel, in arrival order."""

    def __init__(self, nc: NatsClient, channel_id: str) -> None:
        super().__init__(nc, subjects.channel_health(channel_id))
        self.reports: list[ChannelHealth] = []

    def _record(self, msg: Msg) -> None:
        self.reports.append(ChannelHealth.FromString(msg.data))

    @property
    def latest(self) -> ChannelHealth | None:
        return self.reports[-1] if self.reports else None

    def states(self) -> list[int]:
        """The sequence of distinct consecutive states reported."""
        out: list[int] = []
        for report in self.reports:
            if not out or out[-1] != report.state:
                out.append(report.state)
        return out

    async def wait_state(
        self,
        state: int,
        timeout: float,
        *,
        since: int = 0,
        where: Callable[[ChannelHealth], bool] | None = None,
    ) -> ChannelHealth:
        """The first report with ``state`` (and ``where``) among reports[since:]."""

        def found() -> ChannelHealth | None:
            for report in self.reports[since:]:
                if report.state == state and (where is None or where(report)):
                    return report
            return None

        result: ChannelHealth = await self.wait_until(found, timeout, f"state {state}")
        return result

    def describe(self) -> str:
        tail = self.reports[-3:]
        return "last reports: " + "; ".join(f"state={h.state} pid={h.pid} reason={h.reason!r}" for h in tail)


@dataclass
class ReceivedFrame:
    ref: FrameRef
    # The frame's Y plane (copied out of the ring on arrival), when FrameWatch(read_pixels=True).
    y: npt.NDArray[np.uint8] | None = None
    stale: bool = False


class FrameWatch(_Watch):
    """Every FrameRef of one channel; with ``read_pixels`` each frame's Y plane is copied from the ring as
    it arrives (a rewritten slot is marked ``stale``)."""

    def __init__(self, nc: NatsClient, channel_id: str, *, read_pixels: bool = False) -> None:
        super().__init__(nc, subjects.frames(channel_id))
        self.frames: list[ReceivedFrame] = []
        self.read_pixels = read_pixels
        self._pool = ReaderPool() if read_pixels else None

    def _record(self, msg: Msg) -> None:
        ref = FrameRef.FromString(msg.data)
        received = ReceivedFrame(ref)
        if self._pool is not None:
            try:
                y = np.array(self._pool.view(ref).planes[0])
                self._pool.check(ref)
                received.y = y
            except ShmRingError:
                received.stale = True
        self.frames.append(received)

    async def wait_count(
        self, count: int, timeout: float, where: Callable[[FrameRef], bool] | None = None
    ) -> None:
        def enough() -> bool:
            return sum(1 for f in self.frames if where is None or where(f.ref)) >= count

        await self.wait_until(enough, timeout, f"{count} frames")

    def describe(self) -> str:
        return f"{len(self.frames)} frames received"

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self._pool is not None:
            self._pool.close()


def redacted(text: str, secrets: Mapping[str, str] | list[str]) -> bool:
    """True when none of ``secrets`` appears in ``text``."""
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    return not any(secret in text for secret in values)


def make_clip(source: Path, target: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``source`` as a new file, by stream copy (no re-encoding)."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        video = src.streams.video[0]
        stream = out.add_stream_from_template(video)
        muxed = 0
        for packet in src.demux(video):
            if packet.dts is None:
                continue  # the demuxer's final flush packet
            packet.stream = stream
            out.mux(packet)
            muxed += 1
            if muxed == frames:
                break
    return target


def corrupt(source: Path, target: Path, *, bursts: int, seed: int = 1) -> Path:
    """A copy of ``source`` with ``bursts`` runs of 64 random bytes written over its middle 10-80 %
    (the coded frames of an mp4 whose index sits at its end), so the container still opens."""
    import random

    data = bytearray(source.read_bytes())
    rng = random.Random(seed)  # noqa: S311 - reproducible test damage, not cryptography
    for _ in range(bursts):
        pos = rng.randrange(len(data) // 10, len(data) * 8 // 10)
        data[pos : pos + 64] = bytes(rng.randrange(256) for _ in range(64))
    target.write_bytes(bytes(data))
    return target


def reference_luma(path: Path, count: int) -> list[npt.NDArray[np.uint8]]:
    """Y planes of the first ``count`` frames of a file, decoded with PyAV: what a ring must hold."""
    import av

    planes: list[npt.NDArray[np.uint8]] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            planes.append(np.asarray(frame.to_ndarray()[: frame.height], dtype=np.uint8))  # yuv420p: uint8
            if len(planes) == count:
                break
    return planes
