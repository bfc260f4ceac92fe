"""The capture service: scenario configs and detections from NATS, frames from the decoders' rings."""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError

from vap_common import subjects
from vap_common.bus import Handler, NatsBus
from vap_common.embedded import service_endpoints
from vap_common.logs import get_logger
from vap_common.nats_auth import Role
from vap_common.runtime import ServiceRuntime
from vap_common.scenario_configs import ConfigRevisions, follow_scenario_configs
from vap_dataset.capture import Capture, frame_boxes
from vap_dataset.settings import DatasetSettings
from vap_proto.v1 import detection_pb2
from vap_shmring import ReaderPool
from vap_shmring.images import RingFrame

_log = get_logger("vap.dataset")


async def run(settings: DatasetSettings) -> None:
    async with ServiceRuntime("dataset", settings) as runtime:
        with service_endpoints(settings, role=Role.DATASET) as endpoints:
            assert endpoints.nats_url is not None
            bus = await NatsBus.connect(endpoints.nats_url, name="vap-dataset", auth=endpoints.nats_auth)
            try:
                await _capture(settings, runtime, bus)
            finally:
                await bus.close()


async def _capture(settings: DatasetSettings, runtime: ServiceRuntime, bus: NatsBus) -> None:
    capture = Capture(settings.dir, settings.format, settings.max_bytes, settings.jpeg_quality)
    pool = ReaderPool()
    revisions = ConfigRevisions()

    async def on_config(subject: str, payload: bytes) -> None:
        config = revisions.newer(payload)
        if config is None:
            return
        capture.apply_config(config)
        capturing = config.channel_id in capture.policies
        _log.info("capture policy", scenario=config.scenario_id, capture=capturing)

    async def on_detections(subject: str, payload: bytes) -> None:
        try:
            fd = detection_pb2.FrameDetections.FromString(payload)
        except DecodeError:
            return  # not ours to judge: the tracker counts malformed detections
        if capture.due(fd) is None or not fd.HasField("frame_ref"):
            return
        ref = fd.frame_ref
        src_w, src_h = ref.source_width or ref.width, ref.source_height or ref.height
        # A BGR copy taken before the slot can be reused, then checked against the slot's generation.
        image = RingFrame(pool, ref).whole()
        if image is None:
            capture.stale += 1
            return
        capture.offer(fd, image, frame_boxes(fd, ref.width / src_w, ref.height / src_h))

    async def subscribe_flushed(subject: str, handler: Handler) -> None:
        await bus.subscribe(subject, handler)
        await bus.flush()

    # Configs stored before we started count too: a capture turned on while we were down starts now.
    stored = await follow_scenario_configs(subscribe_flushed, bus.stored_scenario_configs, on_config)
    await bus.subscribe(subjects.all_detections(), on_detections, pending_msgs_limit=64)
    await runtime.set_serving(True)
    _log.info("dataset capture running", dir=str(settings.dir), format=settings.format, stored_configs=stored)
    started = time.monotonic()
    try:
        await runtime.stopped()
    finally:
        await bus.close()
        capture.flush()
        capture.close()
        pool.close()
    _log.info(
        "dataset capture stopped",
        saved=capture.saved,
        dropped=capture.dropped,
        stale=capture.stale,
        bytes=capture.used_bytes,
        seconds=round(time.monotonic() - started),
    )
