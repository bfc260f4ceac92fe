"""Which frames to save (cheap, on the event loop) and the one writer thread that saves them."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_dataset.settings import Format
from vap_dataset.writer import Box, DatasetWriter, disk_usage
from vap_proto.v1 import detection_pb2, scenario_pb2

_log = get_logger("vap.dataset")
U8 = npt.NDArray[np.uint8]
DEFAULT_INTERVAL_S = 10.0


@dataclass
class CapturePolicy:
    scenario_id: str
    interval_s: float
    only_with_detections: bool
    max_frames: int
    last_capture_ns: int = -(2**62)


@dataclass
class Capture:
    """Decides which frames to save (cheap, on the event loop) and saves them (writer thread)."""

    root: Path
    format: Format
    max_bytes: int
    jpeg_quality: int = 90
    queue_size: int = 2
    policies: dict[str, CapturePolicy] = field(default_factory=dict)  # by channel id
    writers: dict[str, DatasetWriter] = field(default_factory=dict)  # by scenario id
    used_bytes: int = 0
    saved: int = 0
    dropped: int = 0
    stale: int = 0

    def __post_init__(self) -> None:
        self.used_bytes = disk_usage(self.root)
        self._queue: queue.Queue[tuple[CapturePolicy, str, U8, list[Box]] | None] = queue.Queue(
            self.queue_size
        )
        self._thread = threading.Thread(target=self._run, name="dataset-writer", daemon=True)
        self._thread.start()

    def apply_config(self, config: scenario_pb2.ScenarioConfig) -> None:
        ds = config.pipeline.dataset
        if not config.active or not ds.enabled:
            self.policies.pop(config.channel_id, None)
            return
        interval = ds.interval.ToNanoseconds() / 1e9 if ds.HasField("interval") else DEFAULT_INTERVAL_S
        old = self.policies.get(config.channel_id)
        self.policies[config.channel_id] = CapturePolicy(
            config.scenario_id,
            interval,
            ds.only_with_detections,
            ds.max_frames,
            old.last_capture_ns if old else -(2**62),
        )

    def writer(self, scenario_id: str) -> DatasetWriter:
        if scenario_id not in self.writers:
            self.writers[scenario_id] = DatasetWriter(self.root / scenario_id, self.format, self.jpeg_quality)
        return self.writers[scenario_id]

    def due(self, fd: detection_pb2.FrameDetections) -> CapturePolicy | None:
        policy = self.policies.get(fd.frame.channel_id)
        if policy is None or self.used_bytes >= self.max_bytes:
            return None
        if policy.only_with_detections and not fd.detections:
            return None
        if fd.frame.capture_time_ns - policy.last_capture_ns < policy.interval_s * 1e9:
            return None
        if policy.max_frames and self.writer(policy.scenario_id).frames >= policy.max_frames:
            return None
        return policy

    def offer(self, fd: detection_pb2.FrameDetections, image: U8, boxes: list[Box]) -> bool:
        """Queue a frame for writing; False (and counted) when the writer is behind."""
        policy = self.policies.get(fd.frame.channel_id)
        if policy is None:
            return False
        name = f"{fd.frame.capture_time_ns}_{fd.frame.stream_epoch}_{fd.frame.sequence}"
        try:
            self._queue.put_nowait((policy, name, image, boxes))
        except queue.Full:
            self.dropped += 1
            return False
        policy.last_capture_ns = fd.frame.capture_time_ns
        return True

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            policy, name, image, boxes = item
            try:
                self.used_bytes += self.writer(policy.scenario_id).write(name, image, boxes)
                self.saved += 1
            except (OSError, ValueError) as exc:
                _log.warning("frame not saved", scenario=policy.scenario_id, error=str(exc))
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)


def frame_boxes(fd: detection_pb2.FrameDetections, sx: float = 1.0, sy: float = 1.0) -> list[Box]:
    return [
        Box(d.class_id, d.class_name, b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy, d.confidence)
        for d in fd.detections
        for b in (d.box,)
    ]
