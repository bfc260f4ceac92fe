"""The measuring protocol shared by every handoff transport.

The writer (the benchmark's main process) produces frames: it writes the frame's pixels into wherever the
transport wants them (a ring slot, a local buffer, a loaned iceoryx2 sample), stamps the wall-clock time
``t0`` and hands the frame over. For the ring transports ``t0`` is the slot's commit time. The reader (a
spawned process) takes the time ``t1`` as soon as it holds a numpy view of the frame; ``t1 - t0`` is the
one-way handoff latency. Both clocks are CLOCK_REALTIME of one host.

Two phases per run, one after the other in the same processes:
- latency: one frame in flight at a time with a short idle gap, so the figure is the handoff itself and
  not queueing behind earlier frames;
- throughput: up to ``window`` frames in flight (credit returned by the reader's acknowledgements), the
  writer producing as fast as the transport accepts; fps = frames the reader held per second.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]
STOP_T0 = 0  # a message with t0 == 0 tells the reader that the run is over


@dataclass(frozen=True)
class Resolution:
    name: str
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


RESOLUTIONS = (
    Resolution("720p", 1280, 720),
    Resolution("1080p", 1920, 1080),
    Resolution("4k", 3840, 2160),
)


@dataclass(frozen=True)
class Phases:
    warmup_frames: int
    latency_frames: int
    latency_seconds: float
    latency_gap_s: float
    throughput_frames: int
    throughput_seconds: float
    window: int


QUICK = Phases(20, 300, 1.2, 0.002, 2000, 0.8, 4)
FULL = Phases(50, 3000, 15.0, 0.002, 20000, 8.0, 4)


@dataclass
class ReaderResult:
    """Per received frame, in arrival order: when the reader held it, its latency, whether it was valid."""

    held_at_ns: list[int] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)


class WriterSide(ABC):
    """The producing end; lives in the benchmark's main process."""

    async def open(self) -> None:  # noqa: B027 - most transports need no async set-up
        """Connect to whatever the transport needs."""

    @abstractmethod
    async def send(self, source: Frame, sequence: int) -> None:
        """Write ``source`` into the transport's frame memory, stamp t0, hand it over."""

    @abstractmethod
    async def send_stop(self) -> None:
        """Tell the reader that no more frames come."""

    async def close(self) -> None:  # noqa: B027
        """Release the transport's resources."""


class ReaderSide(ABC):
    """The consuming end; lives in a spawned process."""

    # Set by a reader that got its view before receive() returned (in a receive callback): when it did.
    # drive_reader takes it as t1 instead of its own clock, for the frame receive() just returned.
    held_ns: int | None = None

    async def open(self) -> None:  # noqa: B027
        """Connect and subscribe; returns once frames sent from now on will be received."""

    @abstractmethod
    async def receive(self) -> tuple[int, Frame | None]:
        """Block until a frame arrives; return (t0, numpy view). (STOP_T0, None) ends the run."""

    def release(self) -> bool:
        """Done with the last view; False when it turned out to be overwritten while held."""
        return True

    async def close(self) -> None:  # noqa: B027
        """Release the transport's resources."""


class AckWaiter:
    """Awaits the reader's one-byte acknowledgements without blocking the writer's event loop.

    The NATS client flushes from a task on the same loop, so a blocking recv() here would deadlock it.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._loop.add_reader(conn.fileno(), self._ready.set)
        self.acked = 0

    async def wait_until(self, acked: int) -> None:
        while self.acked < acked:
            while self._conn.poll():
                self._conn.recv_bytes()
                self.acked += 1
            if self.acked >= acked:
                return
            self._ready.clear()
            if not self._conn.poll():
                await self._ready.wait()

    def close(self) -> None:
        self._loop.remove_reader(self._conn.fileno())


@dataclass(frozen=True)
class PhaseMarks:
    """Where each phase starts in the reader's arrival-ordered records: latency frames are
    [warmup, hot), back-to-back frames [hot, throughput), throughput frames [throughput, end)."""

    warmup: int
    hot: int
    throughput: int
    end: int


async def _one_at_a_time(
    writer: WriterSide, source: Frame, acks: AckWaiter, start: int, frames: int, seconds: float, gap_s: float
) -> int:
    sequence, deadline = start, time.monotonic() + seconds
    while sequence - start < frames and time.monotonic() < deadline:
        await writer.send(source, sequence)
        sequence += 1
        await acks.wait_until(sequence)
        if gap_s:
            await asyncio.sleep(gap_s)
    return sequence


async def drive_writer(writer: WriterSide, source: Frame, acks: AckWaiter, phases: Phases) -> PhaseMarks:
    """Warm-up, then latency with an idle gap (a live camera's pace leaves the path cold), then latency
    back to back (the path stays hot), then throughput with a window of frames in flight."""
    warm = await _one_at_a_time(
        writer, source, acks, 0, phases.warmup_frames, float("inf"), phases.latency_gap_s
    )
    hot = await _one_at_a_time(
        writer, source, acks, warm, phases.latency_frames, phases.latency_seconds, phases.latency_gap_s
    )
    first = await _one_at_a_time(
        writer, source, acks, hot, phases.latency_frames, phases.latency_seconds / 2, 0.0
    )
    sequence = first
    deadline = time.monotonic() + phases.throughput_seconds
    while sequence - first < phases.throughput_frames and time.monotonic() < deadline:
        await acks.wait_until(sequence - phases.window + 1)
        await writer.send(source, sequence)
        sequence += 1
    await acks.wait_until(sequence)
    await writer.send_stop()
    return PhaseMarks(warm, hot, first, sequence)


async def drive_reader(reader: ReaderSide, ack: Connection) -> ReaderResult:
    result = ReaderResult()
    while True:
        t0, view = await reader.receive()
        if t0 == STOP_T0:
            return result
        held = reader.held_ns or time.time_ns()
        result.held_at_ns.append(held)
        result.latencies_ns.append(held - t0)
        del view
        result.valid.append(reader.release())
        ack.send_bytes(b"a")
