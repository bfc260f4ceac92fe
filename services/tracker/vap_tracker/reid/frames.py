"""Where ReID crops come from: a frame in a shared-memory ring slot (the service), or a plain BGR array
(tests, tools).

Crops are *copied* out of the slot and converted to BGR right away (a few tens of microseconds each), then
the slot's generation is checked: if the decoder overwrote the slot meanwhile, the crops are discarded and
counted as stale, never embedded. The embedding itself runs later on the copies, so it can take as long as
it needs without holding the slot.
"""

from __future__ import annotations

from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from vap_proto.v1 import frame_pb2
from vap_shmring import ReaderPool, ShmRingError

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]


class FrameImage(Protocol):
    def crops(self, boxes: F64) -> list[U8] | None:
        """BGR copies of the (K, 4) boxes (source-frame pixels); None when the frame is gone (stale)."""
        ...


class CropBudgetStats(Protocol):
    crops_stale: int
    batches_skipped_busy: int


def budgeted_crops(
    candidates: list[tuple[Any, int, int]],
    boxes: F64,
    frame: FrameImage,
    *,
    max_crops: int,
    busy: bool,
    stats: CropBudgetStats,
) -> tuple[list[int], list[U8]] | None:
    """One batch of a per-frame crop budget (ReID, attributes): the track ids and crops of the ``max_crops``
    candidates (priority, row in ``boxes``, track id) that sort first. None when nothing is to be submitted:
    no candidates, ``busy`` (the caller's batches in flight are at their limit; counted as skipped) or the
    frame was overwritten while copying (counted as stale crops)."""
    if not candidates:
        return None
    if busy:
        stats.batches_skipped_busy += 1
        return None
    chosen = sorted(candidates)[:max_crops]
    crops = frame.crops(boxes[[k for _, k, _ in chosen]])
    if crops is None:
        stats.crops_stale += len(chosen)
        return None
    return [tid for _, _, tid in chosen], crops


def _clip_box(box: F64, width: int, height: int, even: bool) -> tuple[int, int, int, int] | None:
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if even:  # 4:2:0 chroma is per 2x2 block: crop on even coordinates
        x1, y1, x2, y2 = x1 & ~1, y1 & ~1, x2 & ~1, y2 & ~1
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return x1, y1, x2, y2


def _u8(image: npt.NDArray[np.generic]) -> U8:
    out: U8 = np.asarray(image, dtype=np.uint8)
    return out


class ArrayFrame:
    """A BGR (H, W, 3) image in memory."""

    def __init__(self, bgr: U8) -> None:
        self.bgr = bgr

    def crops(self, boxes: F64) -> list[U8] | None:
        h, w = self.bgr.shape[:2]
        out = []
        for box in boxes:
            r = _clip_box(box, w, h, even=False)
            out.append(
                np.zeros((0, 0, 3), np.uint8) if r is None else self.bgr[r[1] : r[3], r[0] : r[2]].copy()
            )
        return out


class RingFrame:
    """The frame a FrameRef points to. Boxes are in source pixels (FrameInfo width/height) and are scaled
    to the stored size when the decoder resized the frame."""

    def __init__(self, pool: ReaderPool, ref: frame_pb2.FrameRef) -> None:
        self.pool = pool
        self.ref = ref
        src_w = ref.source_width or ref.width
        src_h = ref.source_height or ref.height
        self._scale = np.array(
            [ref.width / src_w, ref.height / src_h, ref.width / src_w, ref.height / src_h], dtype=np.float64
        )

    def crops(self, boxes: F64) -> list[U8] | None:
        ref = self.ref
        try:
            view = self.pool.view(ref)
            fmt = ref.pixel_format
            out = [self._crop(view.planes, fmt, box * self._scale) for box in boxes]
            self.pool.check(ref)  # raises when the slot was overwritten while we copied
        except ShmRingError:
            return None
        return out

    def _crop(self, planes: tuple[U8, ...], fmt: int, box: F64) -> U8:
        w, h = self.ref.width, self.ref.height
        yuv = fmt in (frame_pb2.PIXEL_FORMAT_I420, frame_pb2.PIXEL_FORMAT_NV12)
        r = _clip_box(box, w, h, even=yuv)
        if r is None:
            return np.zeros((0, 0, 3), np.uint8)
        x1, y1, x2, y2 = r
        if fmt == frame_pb2.PIXEL_FORMAT_BGR24:
            return planes[0][y1:y2, x1:x2].copy()
        if fmt == frame_pb2.PIXEL_FORMAT_RGB24:
            return _u8(cv2.cvtColor(planes[0][y1:y2, x1:x2], cv2.COLOR_RGB2BGR))
        if fmt == frame_pb2.PIXEL_FORMAT_GRAY8:
            return _u8(cv2.cvtColor(planes[0][y1:y2, x1:x2], cv2.COLOR_GRAY2BGR))
        cw, ch = (x2 - x1) // 2, (y2 - y1) // 2
        luma = planes[0][y1:y2, x1:x2]
        if fmt == frame_pb2.PIXEL_FORMAT_I420:
            u = planes[1][y1 // 2 : y1 // 2 + ch, x1 // 2 : x1 // 2 + cw]
            v = planes[2][y1 // 2 : y1 // 2 + ch, x1 // 2 : x1 // 2 + cw]
            buf = np.concatenate((luma.reshape(-1), u.reshape(-1), v.reshape(-1))).reshape(-1, x2 - x1)
            return _u8(cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420))
        uv = planes[1][y1 // 2 : y1 // 2 + ch, x1 // 2 : x1 // 2 + cw]
        buf = np.concatenate((luma.reshape(-1), uv.reshape(-1))).reshape(-1, x2 - x1)
        return _u8(cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_NV12))
