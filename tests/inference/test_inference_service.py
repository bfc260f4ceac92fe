"""The inference service on the real bus: FrameRefs over NATS (real nats-server), pixels in real shared
memory rings, FrameDetections back over NATS. Batching across channels, staleness drops and
overwritten-slot drops, per-scenario settings."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from vap_common import subjects
from vap_inference.detector import Detector
from vap_inference.manager import ModelManager
from vap_inference.service import InferenceService
from vap_inference.settings import InferenceSettings
from vap_inference.testing import write_frame
from vap_models.catalogue import NANODET, SSDLITE
from vap_proto.v1 import detection_pb2, scenario_pb2
from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import RingWriter

I420 = PixelFormat.PIXEL_FORMAT_I420


class Collector:
    """FrameDetections received per channel (nats-py subscription on vap.detections.*)."""

    def __init__(self) -> None:
        self.by_channel: dict[str, list[detection_pb2.FrameDetections]] = {}
        self.event = asyncio.Event()

    async def handler(self, msg: Any) -> None:
        fd = detection_pb2.FrameDetections.FromString(msg.data)
        self.by_channel.setdefault(fd.frame.channel_id, []).append(fd)
        self.event.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; received {self.summary()}")
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), min(remaining, 0.1))

    def summary(self) -> dict[str, list[int]]:
        return {ch: [m.frame.sequence for m in msgs] for ch, msgs in self.by_channel.items()}


async def start_service(nats_url: str, models_dir: Path, model: str, **overrides: Any) -> InferenceService:
    options: dict[str, Any] = {"threads": 2} | overrides
    settings = InferenceSettings.load(
        None, default_model=model, models_dir=models_dir, backend="onnxruntime", **options
    )
    service = InferenceService(settings, ModelManager(settings))
    await service.start(nats_url)
    return service


@pytest_asyncio.fixture(loop_scope="session")
async def collector(nats_client: NatsClient) -> AsyncIterator[Collector]:
    c = Collector()
    sub = await nats_client.subscribe(subjects.all_detections(), cb=c.handler)
    await nats_client.flush()
    yield c
    await sub.unsubscribe()


async def publish(nats_client: NatsClient, ref: FrameRef) -> None:
    await nats_client.publish(subjects.frames(ref.channel_id), ref.SerializeToString())
    await nats_client.flush()


def person_count(fd: detection_pb2.FrameDetections) -> int:
    return sum(1 for d in fd.detections if d.class_name == "person")


async def test_one_batch_of_three_channels_lands_on_each_channel_and_frame(
    nats_url: str,
    nats_client: NatsClient,
    collector: Collector,
    models_dir: Path,
    channel_ids: list[str],
    frames: dict[int, np.ndarray],
) -> None:
    """SSDLite batches (probed); three channels' frames published together form one batch of 3, and each
    result is published on its own channel with its own frame's identity and content: channel 1 carries a
    blank frame, so it must come back empty while the others find people."""
    service = await start_service(nats_url, models_dir, SSDLITE.name, max_batch=4, max_wait_ms=300)
    blank = np.full_like(frames[200], 128)
    contents = {channel_ids[0]: frames[200], channel_ids[1]: blank, channel_ids[2]: frames[0]}
    rings = [RingWriter.create(ch, width=768, height=576, pixel_format=I420, slots=4) for ch in channel_ids]
    try:
        now = time.time_ns()
        refs = [
            write_frame(ring, contents[ch], sequence=10 + i, capture_time_ns=now)
            for i, (ring, ch) in enumerate(zip(rings, channel_ids, strict=True))
        ]
        for ref in refs:
            await publish(nats_client, ref)
        await collector.wait_for(lambda: all(ch in collector.by_channel for ch in channel_ids))
        results = {ch: collector.by_channel[ch][0] for ch in channel_ids}
        for i, ch in enumerate(channel_ids):
            fd = results[ch]
            assert fd.frame.channel_id == ch and fd.frame.sequence == 10 + i
            assert fd.stats.batch_size == 3, "the three frames must have been inferred as one batch"
            assert fd.stats.model_name == SSDLITE.name
            assert (fd.frame.width, fd.frame.height) == (768, 576)
            assert fd.frame_ref.ring == refs[i].ring and fd.frame_ref.generation == refs[i].generation
            assert fd.publish_time_ns >= fd.frame.capture_time_ns == now
            assert fd.stats.inference_us > 0 and fd.stats.preprocess_us > 0
        assert person_count(results[channel_ids[0]]) >= 3
        assert len(results[channel_ids[1]].detections) == 0
        assert person_count(results[channel_ids[2]]) >= 1
        assert service.counters["published"] >= 3
        # The Prometheus batch-size histogram saw a batch of 3 for this model.
        from prometheus_client import REGISTRY

        assert (
            REGISTRY.get_sample_value("vap_inference_batch_size_bucket", {"model": SSDLITE.name, "le": "3.0"})
            or 0
        ) >= 1
        wait = REGISTRY.get_sample_value(
            "vap_inference_stage_seconds_count", {"model": SSDLITE.name, "stage": "queue_wait"}
        )
        assert (wait or 0) >= 3
    finally:
        await service.stop()
        for ring in rings:
            ring.close()


async def test_stale_frames_are_dropped_and_counted(
    nats_url: str,
    nats_client: NatsClient,
    collector: Collector,
    models_dir: Path,
    channel_ids: list[str],
    frames: dict[int, np.ndarray],
) -> None:
    service = await start_service(nats_url, models_dir, NANODET.name, stale_after_ms=200)
    ch = channel_ids[0]
    ring = RingWriter.create(ch, width=768, height=576, pixel_format=I420, slots=4)
    try:
        old = write_frame(ring, frames[200], sequence=1, capture_time_ns=time.time_ns() - 5_000_000_000)
        await publish(nats_client, old)
        deadline = time.monotonic() + 5
        while service.counters["stale"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        first = service.batcher(NANODET.name)
        assert first is not None and len(first) == 0
        fresh = write_frame(ring, frames[200], sequence=2, capture_time_ns=time.time_ns())
        await publish(nats_client, fresh)
        await collector.wait_for(lambda: ch in collector.by_channel)
        assert [m.frame.sequence for m in collector.by_channel[ch]] == [2]
        assert service.counters["stale"] == 1
        assert service.batcher(NANODET.name) is first, (
            "one batcher and worker per model, even after it ran empty"
        )
        assert person_count(collector.by_channel[ch][0]) >= 4  # NanoDet, frame 200, through I420 and NATS
    finally:
        await service.stop()
        ring.close()


class OverwritingBackend:
    """The real backend, plus a live "decoder" that rewrites every slot of the ring while the model runs
    (what a camera does when inference is slower than the ring is long)."""

    def __init__(self, inner: Any, ring: RingWriter, image: np.ndarray) -> None:
        self._inner = inner
        self._ring = ring
        self._image = image
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, feed: dict[str, Any]) -> Any:
        out = self._inner.run(feed)
        if self.armed:
            self.armed = False
            for i in range(self._ring.slot_count):
                write_frame(self._ring, self._image, sequence=1000 + i)
        return out


async def test_overwritten_slots_are_dropped_and_counted(
    nats_url: str,
    nats_client: NatsClient,
    collector: Collector,
    models_dir: Path,
    channel_ids: list[str],
    frames: dict[int, np.ndarray],
) -> None:
    # One lane: the test swaps that lane's backend for one that overwrites the ring mid-inference.
    service = await start_service(nats_url, models_dir, NANODET.name, parallel_batches=1)
    ch_before, ch_during, ch_ok = channel_ids
    rings = {
        ch: RingWriter.create(ch, width=768, height=576, pixel_format=I420, slots=2) for ch in channel_ids
    }
    try:
        # 1. Overwritten before the service read it: the ref's slot was rewritten twice since.
        ref = write_frame(rings[ch_before], frames[200], sequence=1, capture_time_ns=time.time_ns())
        for i in range(2):
            write_frame(rings[ch_before], frames[0], sequence=2 + i)
        await publish(nats_client, ref)
        deadline = time.monotonic() + 10
        while service.counters["overwritten"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert service.counters["overwritten"] == 1

        # 2. Overwritten while the model ran: the result is dropped after inference.
        detector = service.manager.get(NANODET.name)
        real = detector.backend
        detector.backend = OverwritingBackend(real, rings[ch_during], frames[0])  # type: ignore[assignment]
        try:
            ref = write_frame(rings[ch_during], frames[200], sequence=1, capture_time_ns=time.time_ns())
            await publish(nats_client, ref)
            deadline = time.monotonic() + 10
            while service.counters["overwritten"] < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert service.counters["overwritten"] == 2
        finally:
            detector.backend = real

        # 3. A normal frame afterwards still comes through; nothing was published for the other two.
        ref = write_frame(rings[ch_ok], frames[200], sequence=5, capture_time_ns=time.time_ns())
        await publish(nats_client, ref)
        await collector.wait_for(lambda: ch_ok in collector.by_channel)
        assert ch_before not in collector.by_channel and ch_during not in collector.by_channel
    finally:
        await service.stop()
        for ring in rings.values():
            ring.close()


async def test_scenario_settings_apply_per_scenario(
    nats_url: str,
    nats_client: NatsClient,
    collector: Collector,
    models_dir: Path,
    channel_ids: list[str],
    frames: dict[int, np.ndarray],
) -> None:
    """Two scenarios on the same model: one keeps only cars, one raises the threshold to 0.99; a channel
    without a scenario gets the defaults."""
    service = await start_service(nats_url, models_dir, NANODET.name)
    cars, strict, plain = channel_ids
    configs = {
        "scn-cars-" + cars: scenario_pb2.PipelineSettings(class_names=["car"]),
        "scn-strict-" + strict: scenario_pb2.PipelineSettings(confidence_threshold=0.99),
    }
    rings = {
        ch: RingWriter.create(ch, width=768, height=576, pixel_format=I420, slots=2) for ch in channel_ids
    }
    try:
        for (scenario_id, pipeline), ch in zip(configs.items(), (cars, strict), strict=True):
            cfg = scenario_pb2.ScenarioConfig(
                scenario_id=scenario_id, channel_id=ch, revision=1, active=True, pipeline=pipeline
            )
            await nats_client.publish(subjects.scenario_config(scenario_id), cfg.SerializeToString())
        await nats_client.flush()
        deadline = time.monotonic() + 5
        while service.counters["configs"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        scenario_of = {cars: "scn-cars-" + cars, strict: "scn-strict-" + strict, plain: ""}
        for ch in channel_ids:
            ref = write_frame(
                rings[ch],
                frames[200],
                sequence=1,
                capture_time_ns=time.time_ns(),
                scenario_id=scenario_of[ch],
            )
            await publish(nats_client, ref)
        await collector.wait_for(lambda: all(ch in collector.by_channel for ch in channel_ids))
        assert person_count(collector.by_channel[cars][0]) == 0
        assert all(d.class_name == "car" for d in collector.by_channel[cars][0].detections)
        assert len(collector.by_channel[strict][0].detections) == 0
        assert person_count(collector.by_channel[plain][0]) >= 4
        assert collector.by_channel[cars][0].frame.scenario_id == scenario_of[cars]
    finally:
        await service.stop()
        for ring in rings.values():
            ring.close()


async def test_a_service_started_late_applies_the_stored_scenario_config(
    nats_url: str,
    nats_client: NatsClient,
    scenario_config_stream: JetStreamContext,
    collector: Collector,
    models_dir: Path,
    channel_ids: list[str],
    frames: dict[int, np.ndarray],
) -> None:
    """The scenario exists before the service starts (or restarts): its settings come from JetStream."""
    channel = channel_ids[0]
    scenario_id = "scn-late-" + channel
    cfg = scenario_pb2.ScenarioConfig(
        scenario_id=scenario_id,
        channel_id=channel,
        revision=3,
        active=True,
        pipeline=scenario_pb2.PipelineSettings(class_names=["car"]),
    )
    await scenario_config_stream.publish(subjects.scenario_config(scenario_id), cfg.SerializeToString())
    service = await start_service(nats_url, models_dir, NANODET.name)
    ring = RingWriter.create(channel, width=768, height=576, pixel_format=I420, slots=2)
    try:
        assert service.counters["configs"] >= 1  # applied during start, before any frame
        ref = write_frame(
            ring, frames[200], sequence=1, capture_time_ns=time.time_ns(), scenario_id=scenario_id
        )
        await publish(nats_client, ref)
        await collector.wait_for(lambda: channel in collector.by_channel)
        (fd,) = collector.by_channel[channel]
        assert person_count(fd) == 0 and all(d.class_name == "car" for d in fd.detections)
    finally:
        await service.stop()
        ring.close()


@pytest.mark.parametrize("unused", [None])
def test_detector_fixture_is_shared(nanodet: Detector, unused: None) -> None:
    # The service tests load their own detectors; this keeps the session fixture warm for the others.
    assert nanodet.max_batch == 1


async def test_parallel_lanes_publish_each_frame_once_with_its_own_result(
    nats_url: str,
    nats_client: NatsClient,
    collector: Collector,
    models_dir: Path,
    channel_ids: list[str],
    frames: dict[int, np.ndarray],
) -> None:
    """Two lanes on one model (parallel_batches=2, NanoDet runs frame by frame, so both lanes take
    frames): every published frame comes back once, on its channel, with its own content's result."""
    service = await start_service(nats_url, models_dir, NANODET.name, parallel_batches=2, threads=1)
    blank = np.full_like(frames[200], 128)
    contents = {channel_ids[0]: frames[200], channel_ids[1]: blank, channel_ids[2]: frames[0]}
    rings = {
        ch: RingWriter.create(ch, width=768, height=576, pixel_format=I420, slots=8) for ch in channel_ids
    }
    try:

        def round_done(seq: int) -> bool:
            return all(
                any(m.frame.sequence == seq for m in collector.by_channel.get(ch, [])) for ch in channel_ids
            )

        for seq in range(1, 4):
            for ch in channel_ids:
                ref = write_frame(rings[ch], contents[ch], sequence=seq, capture_time_ns=time.time_ns())
                await publish(nats_client, ref)
            # Each round is taken before the next supersedes it (one pending frame per channel).
            await collector.wait_for(functools.partial(round_done, seq))
        assert len(service._workers[NANODET.name]) == 2  # started with the first frame
        for ch in channel_ids:
            seqs = [m.frame.sequence for m in collector.by_channel[ch]]
            assert sorted(seqs) == [1, 2, 3], f"{ch}: {seqs}"
        assert all(person_count(m) >= 4 for m in collector.by_channel[channel_ids[0]])
        assert all(len(m.detections) == 0 for m in collector.by_channel[channel_ids[1]])
        assert all(person_count(m) >= 1 for m in collector.by_channel[channel_ids[2]])
    finally:
        await service.stop()
        for ring in rings.values():
            ring.close()
