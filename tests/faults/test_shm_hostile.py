"""Shared memory under hostile conditions: rings are private to their owner (0600, unreadable by another
uid), and forged FrameRefs sent to the real inference service over real NATS (wrong generation, slot out of
range, unknown ring, ring names that escape /dev/shm or name a directory, undecodable bytes) are rejected
and counted while the service keeps inferring real frames."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from vap_common import subjects
from vap_inference.manager import ModelManager
from vap_inference.service import InferenceService
from vap_inference.settings import InferenceSettings
from vap_inference.testing import missing_model_reason, model_path, video_frames, write_frame
from vap_models.catalogue import NANODET
from vap_proto.v1 import detection_pb2
from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import SHM_DIR, RingWriter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

I420 = PixelFormat.PIXEL_FORMAT_I420
NOBODY = 65534


@pytest.fixture
def ring() -> Any:
    writer = RingWriter.create(
        f"pytest-faults-{uuid.uuid4().hex[:8]}", width=64, height=48, pixel_format=I420, slots=2
    )
    try:
        yield writer
    finally:
        writer.close()


def test_rings_are_0600_and_unreadable_by_another_user(ring: RingWriter) -> None:
    path = Path(SHM_DIR, ring.name)
    mode = path.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600, oct(mode)
    assert path.stat().st_uid == os.getuid()
    if os.getuid() != 0:
        pytest.skip("reading as another uid needs root (no sudo here); the 0600 mode was checked above")
    # Root drops to nobody in the child (no sudo needed): the kernel, not our code, must refuse the read.
    # A world-readable file beside it is read fine, so a refusal is down to the ring's mode.
    control = Path(SHM_DIR, f"pytest-faults-readable-{uuid.uuid4().hex[:8]}")
    control.write_bytes(b"x" * 64)
    control.chmod(0o644)
    try:
        assert _read_as_nobody(control).returncode == 0
    finally:
        control.unlink()
    done = _read_as_nobody(path)
    assert done.returncode != 0 and "Permission denied" in done.stderr, done


def _read_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["head", "-c", "64", str(path)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Results:
    def __init__(self) -> None:
        self.sequences: dict[str, list[int]] = {}

    async def on_msg(self, msg: Any) -> None:
        fd = detection_pb2.FrameDetections.FromString(msg.data)
        self.sequences.setdefault(fd.frame.channel_id, []).append(fd.frame.sequence)


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture(loop_scope="session")
async def inference(nats_url: str) -> AsyncIterator[InferenceService]:
    if reason := missing_model_reason(NANODET):
        pytest.skip(reason)
    settings = InferenceSettings.load(
        None,
        default_model=NANODET.name,
        models_dir=model_path(NANODET).parent,
        backend="onnxruntime",
        threads=1,
        max_batch=1,
        queue_group=f"faults-{uuid.uuid4().hex[:8]}",
    )
    service = InferenceService(settings, ModelManager(settings))
    await service.start(nats_url)
    try:
        yield service
    finally:
        await service.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_forged_frame_refs_are_rejected_counted_and_the_service_keeps_working(
    inference: InferenceService, nats_client: NatsClient, tmp_path: Path
) -> None:
    channel = f"pytest-faults-{uuid.uuid4().hex[:8]}"
    image = video_frames((0,))[0]
    h, w = image.shape[:2]
    writer = RingWriter.create(channel, width=w, height=h, pixel_format=I420, slots=4)
    results = Results()
    sub = await nats_client.subscribe(subjects.all_detections(), cb=results.on_msg)
    fifo = Path(SHM_DIR, f"vap-ring-pytest-fifo-{uuid.uuid4().hex[:8]}")
    os.mkfifo(fifo, 0o600)
    try:
        good = write_frame(writer, image, sequence=1, capture_time_ns=time.time_ns())

        def forged(sequence: int, **fields: Any) -> FrameRef:
            ref = FrameRef()
            ref.CopyFrom(good)
            ref.sequence, ref.capture_time_ns = sequence, time.time_ns()
            for name, value in fields.items():
                setattr(ref, name, value)
            return ref

        not_a_ring = tmp_path / "not-a-ring"
        not_a_ring.write_bytes(os.urandom(4096))
        cases = {
            "wrong generation": forged(2, generation=good.generation + 1000),
            "slot out of range": forged(3, slot=4),
            "huge slot": forged(4, slot=2**31 - 1),
            "unknown ring": forged(5, ring=f"vap-ring-no-such-{uuid.uuid4().hex}"),
            "empty ring name": forged(6, ring=""),
            "ring outside /dev/shm": forged(7, ring="../../etc/passwd"),
            "random file": forged(8, ring=os.path.relpath(not_a_ring, SHM_DIR)),
            "directory": forged(9, ring="."),
            "fifo": forged(10, ring=fifo.name),
            "geometry lie": forged(11, width=w * 4, height=h * 4),
        }
        before = sum(inference.counters[k] for k in ("error", "overwritten"))
        for ref in cases.values():
            await nats_client.publish(subjects.frames(channel), ref.SerializeToString())
            await nats_client.flush()
            # One at a time: the batcher keeps only the newest frame per channel.
            await _until(
                lambda n=before + 1: sum(inference.counters[k] for k in ("error", "overwritten")) >= n,
                20,
                "the forged ref counted",
            )
            before += 1
        await nats_client.publish(subjects.frames(channel), b"\xff\x00 not a protobuf \x12\x34")
        await nats_client.flush()
        await _until(lambda: inference.counters["malformed"] >= 1, 20, "the undecodable message counted")
        assert channel not in results.sequences, f"a forged ref produced results: {results.sequences}"
        from prometheus_client import REGISTRY

        dropped = sum(
            REGISTRY.get_sample_value(
                "vap_inference_frames_dropped_total", {"model": NANODET.name, "reason": reason}
            )
            or 0
            for reason in ("error", "overwritten")
        )
        assert dropped >= len(cases)

        # Still serving: a genuine frame written after all that is inferred.
        real = write_frame(writer, image, sequence=100, capture_time_ns=time.time_ns())
        await nats_client.publish(subjects.frames(channel), real.SerializeToString())
        await _until(lambda: 100 in results.sequences.get(channel, []), 30, "the genuine frame's result")
        assert results.sequences[channel] == [100]
    finally:
        await sub.unsubscribe()
        writer.close()
        fifo.unlink(missing_ok=True)
