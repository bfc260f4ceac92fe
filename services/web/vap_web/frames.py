"""Ring slot -> JPEG, for the live view, off the event loop and off the pipeline's path.

Readers are invisible to the decoder (vap_shmring): the pixels are converted to BGR (a copy) straight from
the slot, then the slot's generation is checked; a frame overwritten meanwhile is dropped, never sent torn.
All encoding runs in one worker thread, so however many people watch, the gateway uses at most about one
core for it, and only for the frames it actually sends (the caller caps the rate).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import cv2
import numpy as np
import numpy.typing as npt

from vap_web import metrics
from vap_proto.v1 import frame_pb2
from vap_shmring import FrameView, ReaderPool, ShmRingError

U8 = npt.NDArray[np.uint8]
PF = frame_pb2.PixelFormat


def to_bgr(view: FrameView, ref: frame_pb2.FrameRef) -> U8:
    """A BGR copy of the frame in ``view`` (any ring pixel format, padded rows included)."""
    fmt, w, h = ref.pixel_format, ref.width, ref.height
    planes = view.planes
    if fmt == PF.PIXEL_FORMAT_BGR24:
        return np.array(planes[0][:h, :w], dtype=np.uint8)
    if fmt == PF.PIXEL_FORMAT_RGB24:
        return np.asarray(cv2.cvtColor(planes[0][:h, :w], cv2.COLOR_RGB2BGR), dtype=np.uint8)
    if fmt == PF.PIXEL_FORMAT_GRAY8:
        return np.asarray(cv2.cvtColor(planes[0][:h, :w], cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if fmt not in (PF.PIXEL_FORMAT_I420, PF.PIXEL_FORMAT_NV12):
        raise ValueError(f"unsupported pixel format {fmt}")
    i420 = fmt == PF.PIXEL_FORMAT_I420
    buf = view.contiguous
    if buf is None:  # padded rows: gather the planes into the tight (H*3/2) x W layout cv2 takes
        luma = planes[0][:h, :w].reshape(-1)
        if i420:
            chroma = [p[: h // 2, : w // 2].reshape(-1) for p in planes[1:3]]
        else:
            chroma = [planes[1][: h // 2, :w].reshape(-1)]
        buf = np.concatenate([luma, *chroma]).reshape(h * 3 // 2, w)
    code = cv2.COLOR_YUV2BGR_I420 if i420 else cv2.COLOR_YUV2BGR_NV12
    return np.asarray(cv2.cvtColor(buf, code), dtype=np.uint8)


def encode_jpeg(bgr: U8, quality: int, max_width: int) -> bytes:
    h, w = bgr.shape[:2]
    if max_width and w > max_width:
        bgr = np.asarray(
            cv2.resize(bgr, (max_width, round(h * max_width / w)), interpolation=cv2.INTER_AREA), np.uint8
        )
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(data)


class FrameEncoder:
    """Reads FrameRefs' slots and encodes them as JPEG in its one worker thread."""

    def __init__(self, quality: int = 75, max_width: int = 1280) -> None:
        self.quality = quality
        self.max_width = max_width
        self.encoded = 0
        self.stale = 0
        # The pool is used only from the worker thread (readers are not thread-safe to share).
        self._pool = ReaderPool()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vap-web-jpeg")

    def encode_now(self, ref: frame_pb2.FrameRef) -> bytes | None:
        """JPEG of the frame ``ref`` names; None when the slot was overwritten or the ring is gone."""
        started = time.perf_counter()
        try:
            view = self._pool.view(ref)
            bgr = to_bgr(view, ref)
            self._pool.check(ref)
        except ShmRingError:
            self.stale += 1
            metrics.FRAMES.labels("stale").inc()
            return None
        jpeg = encode_jpeg(bgr, self.quality, self.max_width)
        self.encoded += 1
        metrics.FRAMES.labels("sent").inc()
        metrics.ENCODE_SECONDS.observe(time.perf_counter() - started)
        return jpeg

    async def encode(self, ref: frame_pb2.FrameRef) -> bytes | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.encode_now, ref)

    def close(self) -> None:
        self._worker.submit(self._pool.close).result()
        self._worker.shutdown(wait=True)
