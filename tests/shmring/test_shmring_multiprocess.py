"""The ring across processes: several readers of one writer, torn-read detection under a writer that
laps slow readers, and a writer SIGKILLed mid-stream. Children run tests/shmring/shmring_workers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vap_proto.v1.frame_pb2 import FrameRef
from vap_shmring import (
    SHM_DIR,
    RingReader,
    RingWriter,
    StaleGenerationError,
    cleanup_stale_rings,
    find_stale_rings,
    ring_name,
    writer_alive,
)
from vap_shmring.geometry import BGR24, I420
from vap_shmring.testing import rich_planes, uniform_ok

WORKERS = Path(__file__).with_name("shmring_workers.py")
pytestmark = pytest.mark.timeout(60)


class Worker:
    """One shmring_workers.py child with line-oriented stdin/stdout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKERS), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def wait_ready(self) -> str:
        """Block until the child prints READY; returns the rest of that line (e.g. the ring name)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("READY"), f"worker said {line!r}, exit code {self.proc.poll()}"
        return line[len("READY") :].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 20.0) -> dict[str, int]:
        """Close stdin, wait for a clean exit, parse the JSON summary (the last stdout line)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        # Not communicate(): it reads the raw pipe and would miss lines wait_ready()'s readline buffered.
        out = self.proc.stdout.read()
        assert self.proc.wait(timeout) == 0, self.proc.returncode
        summary: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return summary


@pytest.fixture
def spawn() -> Iterator[list[Worker]]:
    """Children started by a test (append them); any still running at the end are killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait(5)


def test_two_reader_processes_get_every_frame_with_its_content(channel_id: str, spawn: list[Worker]) -> None:
    frames = 40
    with RingWriter.create(channel_id, width=96, height=64, pixel_format=I420, slots=frames) as writer:
        spawn.extend(Worker("ref-reader", "--ring", writer.name) for _ in range(2))
        for reader in spawn:
            reader.wait_ready()
        for sequence in range(frames):
            view = writer.begin()
            for dst, src in zip(view.planes, rich_planes(view, sequence), strict=True):
                dst[...] = src
            line = writer.commit(sequence=sequence).SerializeToString().hex()  # what NATS would carry
            for reader in spawn:
                reader.send(line)
        results = [reader.result() for reader in spawn]
    for result in results:
        assert result["ok"] == frames, result
        assert result["bad"] == 0 and result["stale"] == 0
        assert result["sequences"] == list(range(frames))  # type: ignore[comparison-overlap]


def test_fast_writer_slow_readers_never_accept_torn_frames(channel_id: str, spawn: list[Worker]) -> None:
    """A 3-slot ring, a writer in a tight loop, two readers that verify every byte and dawdle.

    Every read is classified by the reader: accepted (check passed) or stale; "torn" means its content
    was not one frame's pattern. The protocol is right iff no accepted read is torn. The test also
    demands stale reads and torn-but-caught reads, so it would fail if the check were a no-op or if
    the writer never actually overlapped a reader.
    """
    writer = Worker("fast-writer", "--channel", channel_id, "--slots", "3", "--seconds", "20")
    spawn.append(writer)
    name = writer.wait_ready()
    readers = [Worker("slow-reader", "--ring", name, "--seconds", "4", "--seed", str(i)) for i in range(2)]
    spawn.extend(readers)
    for reader in readers:
        reader.wait_ready()
    results = [reader.result() for reader in readers]
    writer.proc.send_signal(signal.SIGTERM)
    writer.proc.wait(5)
    total = {key: sum(r[key] for r in results) for key in results[0]}
    assert total["torn_accepted"] == 0, results
    assert total["accepted"] > 0, results
    assert total["stale_at_check"] > 0 and total["torn_caught"] > 0, results
    assert total["counted"] == total["stale_at_view"] + total["stale_at_check"], results


def test_writer_killed_mid_stream(channel_id: str, spawn: list[Worker]) -> None:
    writer = Worker("fast-writer", "--channel", channel_id, "--slots", "3", "--seconds", "30")
    spawn.append(writer)
    name = writer.wait_ready()
    assert name == ring_name(channel_id)
    reader = RingReader.attach(name)
    refs: list[FrameRef] = []
    deadline = time.monotonic() + 5
    while len(refs) < 20 and time.monotonic() < deadline:
        ref = reader.latest()
        if ref is not None and (not refs or ref.sequence != refs[-1].sequence):
            refs.append(ref)
    assert len(refs) == 20
    os.kill(writer.proc.pid, signal.SIGKILL)  # most likely in the middle of filling a slot
    writer.proc.wait(5)

    # Refs the reader already holds: each is either stale or still exactly its frame, and stays so.
    for ref in refs:
        try:
            with reader.read(ref) as frame:
                assert uniform_ok(frame, ref.sequence)
        except StaleGenerationError:
            assert not reader.is_current(ref)
    last = reader.latest()
    assert last is not None
    with reader.read(last) as frame:
        assert uniform_ok(frame, last.sequence)
    odd = [s for s in range(reader.slot_count) if reader.generation(s) % 2]
    assert len(odd) <= 1  # at most the slot the writer was filling when it died

    assert not reader.writer_closed  # a crash never marks the ring closed...
    assert not writer_alive(name)  # ...but the writer lock died with the process
    assert name in find_stale_rings()
    assert cleanup_stale_rings(only={name}) == [name]  # only ours: tests may run in parallel
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    with reader.read(last) as frame:  # the reader's mapping outlives the name
        assert uniform_ok(frame, last.sequence)

    with RingWriter.create(channel_id, width=320, height=240, pixel_format=BGR24, slots=3) as new:
        assert new.name == name and writer_alive(name)
        new.begin()
        fresh = new.commit(sequence=0)
        with RingReader.attach(name) as again:
            again.check(fresh)
        with pytest.raises(StaleGenerationError):
            reader.view(fresh)  # the old mapping can't mistake the new ring's frame for its own
    reader.close()
