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

from vap_proto.v1 import frame_pb2
from vap_shmring import ReaderPool, ShmRingError
from vap_shmring.images import frame_to_bgr
from vap_web import metrics

U8 = npt.NDArray[np.uint8]


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
            bgr = frame_to_bgr(view, ref)
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
