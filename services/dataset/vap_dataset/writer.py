"""Saved frames on disk: JPEG images and their labels in YOLO or COCO layout (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import yaml

from vap_dataset.settings import Format

U8 = npt.NDArray[np.uint8]


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
