"""Ring slot -> BGR pixels: the whole frame (live view, dataset capture) or crops of boxes (ReID, attributes).

Every helper *copies* out of the slot and converts to BGR right away; callers that read a slot check its
generation afterwards (``ReaderPool.check``), so a frame the decoder overwrote meanwhile is dropped, never
used torn. Kept apart from the ring core so that importing the ring does not import OpenCV.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from vap_proto.v1 import frame_pb2
from vap_shmring.errors import ShmRingError
from vap_shmring.pool import ReaderPool
from vap_shmring.views import FrameView

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
PF = frame_pb2.PixelFormat
_YUV = (PF.PIXEL_FORMAT_I420, PF.PIXEL_FORMAT_NV12)


def _u8(image: npt.NDArray[np.generic]) -> U8:
    out: U8 = np.asarray(image, dtype=np.uint8)
    return out


def _yuv420_to_bgr(luma: U8, chroma: list[U8], i420: bool) -> U8:
    """BGR of a 4:2:0 picture given as its (h, w) luma and its chroma planes (U, V or interleaved UV)."""
    w = luma.shape[1]
    buf = np.concatenate([luma.reshape(-1), *(c.reshape(-1) for c in chroma)]).reshape(-1, w)
    return _u8(cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420 if i420 else cv2.COLOR_YUV2BGR_NV12))


def _packed_to_bgr(image: U8, fmt: int) -> U8:
    if fmt == PF.PIXEL_FORMAT_BGR24:
        return np.array(image, dtype=np.uint8)
    if fmt == PF.PIXEL_FORMAT_RGB24:
        return _u8(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if fmt == PF.PIXEL_FORMAT_GRAY8:
        return _u8(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    raise ValueError(f"unsupported pixel format {fmt}")


def frame_to_bgr(view: FrameView, ref: frame_pb2.FrameRef) -> U8:
    """A BGR copy of the whole frame in ``view`` (any ring pixel format, padded rows included)."""
    fmt, w, h = ref.pixel_format, ref.width, ref.height
    planes = view.planes
    if fmt not in _YUV:
        return _packed_to_bgr(planes[0][:h, :w], fmt)
    i420 = fmt == PF.PIXEL_FORMAT_I420
    if view.contiguous is not None:  # tight (H*3/2) x W layout already: no gather
        return _u8(cv2.cvtColor(view.contiguous, cv2.COLOR_YUV2BGR_I420 if i420 else cv2.COLOR_YUV2BGR_NV12))
    # NV12's UV plane is (H/2, W/2, 2): the same slice as I420's U and V planes.
    chroma = [p[: h // 2, : w // 2] for p in planes[1 : 3 if i420 else 2]]
    return _yuv420_to_bgr(planes[0][:h, :w], chroma, i420)


def clip_box(box: F64, width: int, height: int, even: bool) -> tuple[int, int, int, int] | None:
    """Integer (x1, y1, x2, y2) of ``box`` inside the image; None when less than 2x2 pixels remain. ``even``
    snaps to even coordinates (4:2:0 chroma is per 2x2 block)."""
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if even:
        x1, y1, x2, y2 = x1 & ~1, y1 & ~1, x2 & ~1, y2 & ~1
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return x1, y1, x2, y2


def crop_to_bgr(planes: tuple[U8, ...], fmt: int, width: int, height: int, box: F64) -> U8:
    """A BGR copy of ``box`` (stored-frame pixels) of a frame given by its planes; (0, 0, 3) when the box
    leaves less than 2x2 pixels of the frame."""
    yuv = fmt in _YUV
    r = clip_box(box, width, height, even=yuv)
    if r is None:
        return np.zeros((0, 0, 3), np.uint8)
    x1, y1, x2, y2 = r
    if not yuv:
        return _packed_to_bgr(planes[0][y1:y2, x1:x2], fmt)
    cw, ch = (x2 - x1) // 2, (y2 - y1) // 2
    cx, cy = x1 // 2, y1 // 2
    i420 = fmt == PF.PIXEL_FORMAT_I420
    chroma = [p[cy : cy + ch, cx : cx + cw] for p in planes[1 : 3 if i420 else 2]]
    return _yuv420_to_bgr(planes[0][y1:y2, x1:x2], chroma, i420)


class FrameImage(Protocol):
    def crops(self, boxes: F64) -> list[U8] | None:
        """BGR copies of the (K, 4) boxes (source-frame pixels); None when the frame is gone (stale)."""
        ...


class ArrayFrame:
    """A BGR (H, W, 3) image in memory (tests, tools)."""

    def __init__(self, bgr: U8) -> None:
        self.bgr = bgr

    def crops(self, boxes: F64) -> list[U8] | None:
        h, w = self.bgr.shape[:2]
        return [crop_to_bgr((self.bgr,), PF.PIXEL_FORMAT_BGR24, w, h, box) for box in boxes]


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
        """Copies of the boxes, or None when the slot was overwritten while copying (or the ring is gone)."""
        ref = self.ref
        try:
            view = self.pool.view(ref)
            out = [
                crop_to_bgr(view.planes, ref.pixel_format, ref.width, ref.height, box * self._scale)
                for box in boxes
            ]
            self.pool.check(ref)
        except ShmRingError:
            return None
        return out

    def whole(self) -> U8 | None:
        """A BGR copy of the whole stored frame, or None when the slot was overwritten meanwhile."""
        try:
            view = self.pool.view(self.ref)
            bgr = frame_to_bgr(view, self.ref)
            self.pool.check(self.ref)
        except ShmRingError:
            return None
        return bgr
