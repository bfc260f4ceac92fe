"""The capture service: scenario configs and detections from NATS, frames from the decoders' rings."""

from __future__ import annotations

import time
from typing import Any

import nats

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.runtime import ServiceRuntime
from vap_dataset.capture import Capture, frame_boxes
from vap_dataset.settings import DatasetSettings
from vap_proto.v1 import detection_pb2, scenario_pb2
from vap_shmring import ReaderPool
from vap_shmring.images import RingFrame

_log = get_logger("vap.dataset")


async def run(settings: DatasetSettings) -> None:
    async with ServiceRuntime("dataset", settings) as runtime:
        if settings.nats_url is None:
            raise SystemExit("vap_dataset needs NATS_URL")
        capture = Capture(settings.dir, settings.format, settings.max_bytes, settings.jpeg_quality)
        pool = ReaderPool()
        nc = await nats.connect(settings.nats_url, name="vap-dataset", max_reconnect_attempts=-1)

        async def on_config(msg: Any) -> None:
            config = scenario_pb2.ScenarioConfig()
            config.ParseFromString(msg.data)
            capture.apply_config(config)
            capturing = config.channel_id in capture.policies
            _log.info("capture policy", scenario=config.scenario_id, capture=capturing)

        async def on_detections(msg: Any) -> None:
            fd = detection_pb2.FrameDetections()
            fd.ParseFromString(msg.data)
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

        await nc.subscribe(subjects.all_scenario_configs(), cb=on_config)
        await nc.subscribe(subjects.all_detections(), cb=on_detections, pending_msgs_limit=64)
        await runtime.set_serving(True)
        _log.info("dataset capture running", dir=str(settings.dir), format=settings.format)
        started = time.monotonic()
        await runtime.stopped()
        await nc.drain()
        capture.flush()
        capture.close()
        _log.info(
            "dataset capture stopped",
            saved=capture.saved,
            dropped=capture.dropped,
            stale=capture.stale,
            bytes=capture.used_bytes,
            seconds=round(time.monotonic() - started),
        )
