"""Dataset capture: sampled frames and their detections saved for retraining (`python -m vap_stack.dataset`).

A small consumer beside the pipeline, never in it: it subscribes to ``vap.scenario.*.config`` (which
scenarios capture: PipelineSettings.dataset) and ``vap.detections.*``; a frame due for capture (its scenario
captures, ``interval`` since the last saved frame of the channel, under ``max_frames`` and the byte quota)
is copied out of the decoder's ring through ``FrameDetections.frame_ref`` (the slot's generation is checked
after the copy: an overwritten slot is skipped, not saved wrong) and handed to one writer thread through a
queue of two. A full queue drops the frame: JPEG encoding and disk writes can never slow inference, the
tracker or the bus.

Layout under ``<dir>/<scenario id>/``:

- ``yolo``: ``images/<name>.jpg`` and ``labels/<name>.txt`` (``class x_center y_center width height``,
  normalised to [0, 1]) plus ``classes.txt`` (the class names, line = class id) and ``data.yaml``.
- ``coco``: ``images/<name>.jpg`` and ``annotations.json`` (COCO detection format, ``bbox`` = [x, y, w, h]
  in image pixels; categories = the model's class ids and names), rewritten after every frame (atomically).

The quota (``max_bytes``, all scenarios together) counts what is on disk already when the service starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import numpy.typing as npt
import yaml
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vap_common.logs import get_logger
from vap_common.settings import ServiceSettings
from vap_proto.v1 import detection_pb2, scenario_pb2

_log = get_logger("vap.dataset")
U8 = npt.NDArray[np.uint8]
Format = Literal["yolo", "coco"]
DEFAULT_INTERVAL_S = 10.0


class DatasetSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_DATASET_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "dataset"
    dir: Path = Path(".vap/datasets")
    format: Format = "yolo"
    max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    jpeg_quality: int = Field(default=90, ge=10, le=100)


@dataclass
class Box:
    class_id: int
    class_name: str
    # image pixels of the saved image
    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class DatasetWriter:
    """Writes frames and boxes of one scenario in one format; tracks its bytes for the shared quota."""

    def __init__(self, root: Path, fmt: Format, jpeg_quality: int = 90) -> None:
        self.root = root
        self.format = fmt
        self.quality = jpeg_quality
        (root / "images").mkdir(parents=True, exist_ok=True)
        if fmt == "yolo":
            (root / "labels").mkdir(exist_ok=True)
        self.classes: dict[int, str] = {}
        self._coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
        ann = root / "annotations.json"
        if fmt == "coco" and ann.is_file():
            with contextlib.suppress(ValueError):
                self._coco = json.loads(ann.read_text())
                self.classes = {int(c["id"]): str(c["name"]) for c in self._coco["categories"]}
        elif (root / "classes.txt").is_file():
            names = (root / "classes.txt").read_text().splitlines()
            self.classes = {i: n for i, n in enumerate(names) if n and not n.startswith("class_")}
        self.frames = len(list((root / "images").glob("*.jpg")))

    def write(self, name: str, image: U8, boxes: list[Box]) -> int:
        """Save one frame; returns the bytes written (image, labels, annotation growth)."""
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        h, w = image.shape[:2]
        data = jpeg.tobytes()
        _atomic_write(self.root / "images" / f"{name}.jpg", data)
        written = len(data)
        new_class = False
        for b in boxes:
            if self.classes.get(b.class_id) != b.class_name:
                self.classes[b.class_id] = b.class_name
                new_class = True
        if self.format == "yolo":
            lines = []
            for b in boxes:
                x1, y1 = max(0.0, b.x1), max(0.0, b.y1)
                x2, y2 = min(float(w), b.x2), min(float(h), b.y2)
                if x2 <= x1 or y2 <= y1:
                    continue
                lines.append(
                    f"{b.class_id} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                    f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                )
            text = ("\n".join(lines) + "\n" if lines else "").encode()
            _atomic_write(self.root / "labels" / f"{name}.txt", text)
            written += len(text)
            if new_class or not (self.root / "classes.txt").is_file():
                written += self._write_yolo_meta()
        else:
            written += self._add_coco(name, w, h, boxes)
        self.frames += 1
        return written

    def _write_yolo_meta(self) -> int:
        top = max(self.classes, default=-1)
        names = [self.classes.get(i, f"class_{i}") for i in range(top + 1)]
        classes = ("\n".join(names) + "\n").encode()
        _atomic_write(self.root / "classes.txt", classes)
        # Ultralytics' dataset file: integer class ids as keys.
        meta = {"path": str(self.root.resolve()), "train": "images", "val": "images"}
        data_yaml = yaml.safe_dump(meta | {"names": dict(enumerate(names))}, sort_keys=False).encode()
        _atomic_write(self.root / "data.yaml", data_yaml)
        return len(classes) + len(data_yaml)

    def _add_coco(self, name: str, w: int, h: int, boxes: list[Box]) -> int:
        coco = self._coco
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, "file_name": f"images/{name}.jpg", "width": w, "height": h})
        for b in boxes:
            x1, y1 = max(0.0, b.x1), max(0.0, b.y1)
            bw, bh = min(float(w), b.x2) - x1, min(float(h), b.y2) - y1
            if bw <= 0 or bh <= 0:
                continue
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": b.class_id,
                    "bbox": [round(x1, 2), round(y1, 2), round(bw, 2), round(bh, 2)],
                    "area": round(bw * bh, 2),
                    "iscrowd": 0,
                    "score": round(b.score, 4),
                }
            )
        coco["categories"] = [{"id": i, "name": n} for i, n in sorted(self.classes.items())]
        path = self.root / "annotations.json"
        before = path.stat().st_size if path.is_file() else 0
        data = json.dumps(coco).encode()
        _atomic_write(path, data)
        return max(0, len(data) - before)


def disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


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


async def run(settings: DatasetSettings) -> None:
    import nats

    from vap_common import subjects
    from vap_common.runtime import ServiceRuntime
    from vap_shmring import ReaderPool
    from vap_tracker.reid.frames import RingFrame

    async with ServiceRuntime("dataset", settings) as runtime:
        if settings.nats_url is None:
            raise SystemExit("vap_stack.dataset needs NATS_URL")
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
            # The whole frame as one "crop": a BGR copy taken before the slot can be reused, then checked.
            crops = RingFrame(pool, ref).crops(np.array([[0, 0, src_w, src_h]], dtype=np.float64))
            if crops is None:
                capture.stale += 1
                return
            capture.offer(fd, crops[0], frame_boxes(fd, ref.width / src_w, ref.height / src_h))

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


def main(argv: list[str] | None = None) -> int:
    from vap_common import aio
    from vap_common.settings import SettingsError

    try:
        settings = DatasetSettings.load()
    except SettingsError as exc:
        sys.stderr.write(f"vap_stack.dataset: {exc}\n")
        return 2
    aio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
