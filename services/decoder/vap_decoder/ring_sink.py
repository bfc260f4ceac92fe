"""Write decoded frames straight into shmring slots: the only write of the pixels between FFmpeg and readers.

FFmpeg decodes H.264 into its own frame pool (YUV 4:2:0 planes with padded line sizes). Every ring format is
produced from those planes by writing *into the slot's plane views*, never through a full-size intermediate:

========  ==============================================  ==============================================
ring      same size                                        resized
========  ==============================================  ==============================================
I420      one copy per plane (``copy_i420``)               ``cv2.resize`` of each plane into the slot
NV12      Y copied, U+V interleaved by ``cv2.merge``       planes resized, then merged into the slot
GRAY8     Y copied                                         Y resized into the slot
BGR/RGB   ``cv2.cvtColorTwoPlane`` into the slot, from     the same from resized planes
          Y and a small interleaved chroma buffer
========  ==============================================  ==============================================

I420 is the default: one memcpy per plane, ~4x cheaper than any RGB conversion at full size. Consumers
convert only the downscaled image they need (DESIGN.md). Sources that are not 4:2:0 (e.g. a 4:2:2 webcam)
are first converted to yuv420p by FFmpeg's swscale. Odd source sizes lose their last row/column in 4:2:0
rings (4:2:0 needs even sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import FrameView, RingWriter

Plane = npt.NDArray[np.uint8]
Planes = tuple[Plane, Plane, Plane]
Writer = Callable[[Planes, FrameView], None]

I420 = PixelFormat.PIXEL_FORMAT_I420
NV12 = PixelFormat.PIXEL_FORMAT_NV12
GRAY8 = PixelFormat.PIXEL_FORMAT_GRAY8
BGR24 = PixelFormat.PIXEL_FORMAT_BGR24
RGB24 = PixelFormat.PIXEL_FORMAT_RGB24
DEFAULT_FORMAT = I420
_I420_NAMES = frozenset({"yuv420p", "yuvj420p"})
_EVEN_FORMATS = frozenset({I420, NV12, BGR24, RGB24})  # formats built from 4:2:0 chroma


def _plane_array(plane: av.video.plane.VideoPlane) -> Plane:
    """A zero-copy view of one FFmpeg plane, cropped to its visible width."""
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def yuv420_planes(frame: av.VideoFrame) -> Planes:
    """Zero-copy Y, U, V views of a decoded frame (converted to yuv420p first only when it is not 4:2:0).

    The views keep FFmpeg's buffer alive; drop them before the next frame so the pool can reuse it.
    """
    if frame.format.name not in _I420_NAMES:
        frame = frame.reformat(format="yuv420p")
    y, u, v = frame.planes
    return _plane_array(y), _plane_array(u), _plane_array(v)


def copy_i420(frame: av.VideoFrame, slot: FrameView) -> None:
    """Write ``frame`` into an I420 slot of the same size (Y, U, V planes), converting only when FFmpeg
    gave another pixel format (e.g. a 4:2:2 camera)."""
    _copy_planes(yuv420_planes(frame), slot)


def _copy_planes(src: Planes, slot: FrameView) -> None:
    for s, dst in zip(src, slot.planes, strict=True):
        np.copyto(dst, s[: dst.shape[0], : dst.shape[1]])


def output_size(
    width: int, height: int, resize: tuple[int, int] | None, pixel_format: PixelFormat.ValueType
) -> tuple[int, int]:
    """Size of the frames in the ring for a ``width`` x ``height`` source.

    ``resize`` is (width, height) with 0 meaning "keep the aspect ratio"; None or (0, 0) keeps the size.
    4:2:0-based formats are rounded down to even sizes.
    """
    out_w, out_h = width, height
    if resize is not None and (resize[0] or resize[1]):
        rw, rh = resize
        out_w = rw or max(1, round(width * rh / height))
        out_h = rh or max(1, round(height * rw / width))
    if pixel_format in _EVEN_FORMATS:
        out_w, out_h = max(2, out_w & ~1), max(2, out_h & ~1)
    return out_w, out_h


class PlaneWriter:
    """Writes yuv420p planes of a ``src`` sized frame into slots of an ``out`` sized ring of one format."""

    def __init__(
        self, src_size: tuple[int, int], out_size: tuple[int, int], pixel_format: PixelFormat.ValueType
    ) -> None:
        self.src_size = src_size
        self.out_size = out_size
        self.pixel_format = pixel_format
        # Cropping an odd source to even is not a resize; anything else is.
        self.resized = (src_size[0] & ~1, src_size[1] & ~1) != out_size and src_size != out_size
        self._cv2: Any = None
        if self.resized or pixel_format in (NV12, BGR24, RGB24):
            import cv2  # only when needed: plain I420/GRAY8 copies do not pay for importing OpenCV

            self._cv2 = cv2
        w, h = out_size
        cw, ch = w // 2, h // 2
        # Small scratch buffers (chroma-sized, or output-sized luma for a resized RGB ring), allocated once.
        self._u = np.empty((ch, cw), np.uint8)
        self._v = np.empty((ch, cw), np.uint8)
        self._uv = np.empty((ch, cw, 2), np.uint8)
        self._y = np.empty((h, w), np.uint8) if self.resized and pixel_format in (BGR24, RGB24) else None
        if self._cv2 is not None:
            src_area = src_size[0] * src_size[1]
            shrink = w * h < src_area
            self._interp = self._cv2.INTER_AREA if shrink else self._cv2.INTER_LINEAR
        writers: dict[int, Writer] = {
            I420: self._write_i420,
            NV12: self._write_nv12,
            GRAY8: self._write_gray,
            BGR24: self._write_rgb,
            RGB24: self._write_rgb,
        }
        if pixel_format not in writers:
            raise ValueError(f"unsupported ring pixel format {PixelFormat.Name(pixel_format)}")
        self.write: Writer = writers[pixel_format]

    def _fit(self, src: Plane, dst: Plane) -> None:
        """``src`` into ``dst``: resized when the ring is, else copied (cropped to ``dst``)."""
        if self.resized:
            self._cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=self._interp)
        else:
            np.copyto(dst, src[: dst.shape[0], : dst.shape[1]])

    def _write_i420(self, src: Planes, slot: FrameView) -> None:
        if not self.resized:
            _copy_planes(src, slot)
            return
        for s, dst in zip(src, slot.planes, strict=True):
            self._fit(s, dst)

    def _write_gray(self, src: Planes, slot: FrameView) -> None:
        self._fit(src[0], slot.planes[0])

    def _chroma(self, src: Planes) -> tuple[Plane, Plane]:
        if not self.resized:
            ch, cw = self._u.shape
            return src[1][:ch, :cw], src[2][:ch, :cw]
        self._fit(src[1], self._u)
        self._fit(src[2], self._v)
        return self._u, self._v

    def _write_nv12(self, src: Planes, slot: FrameView) -> None:
        y_dst, uv_dst = slot.planes
        self._fit(src[0], y_dst)
        self._cv2.merge(self._chroma(src), dst=uv_dst)

    def _write_rgb(self, src: Planes, slot: FrameView) -> None:
        cv2 = self._cv2
        if self._y is not None:
            self._fit(src[0], self._y)
            y = self._y
        else:
            w, h = self.out_size
            y = src[0][:h, :w]
        cv2.merge(self._chroma(src), dst=self._uv)
        code = cv2.COLOR_YUV2BGR_NV12 if self.pixel_format == BGR24 else cv2.COLOR_YUV2RGB_NV12
        cv2.cvtColorTwoPlane(y, self._uv, code, dst=slot.planes[0])


class RingSink:
    """A channel's ring and the writer for its format; (re)creates the ring from the decoded frame size.

    The ring is created at the first frame (its size is not known before: fast RTSP opens skip probing) and
    re-created when the source size changes (a camera reconfigured between reconnects).
    """

    def __init__(
        self,
        channel_id: str,
        *,
        scenario_id: str = "",
        pixel_format: PixelFormat.ValueType = DEFAULT_FORMAT,
        resize: tuple[int, int] | None = None,
        slots: int = 8,
        name_prefix: str = "",
    ) -> None:
        self.channel_id = channel_id
        self.name_prefix = name_prefix
        self.scenario_id = scenario_id
        self.pixel_format = pixel_format if pixel_format != PixelFormat.PIXEL_FORMAT_UNSPECIFIED else I420
        self.resize = resize
        self.slots = slots
        self.ring: RingWriter | None = None
        self._writer: PlaneWriter | None = None
        self.rings_created = 0

    @property
    def ring_name(self) -> str | None:
        return self.ring.name if self.ring is not None else None

    def _configure(self, src_size: tuple[int, int]) -> PlaneWriter:
        out = output_size(src_size[0], src_size[1], self.resize, self.pixel_format)
        writer = PlaneWriter(src_size, out, self.pixel_format)
        if self.ring is None or (self.ring.geometry.width, self.ring.geometry.height) != out:
            self.close()  # our own writer lock must go before the name can be created again
            self.ring = RingWriter.create(
                self.channel_id,
                width=out[0],
                height=out[1],
                pixel_format=self.pixel_format,
                slots=self.slots,
                name_prefix=self.name_prefix,
            )
            self.rings_created += 1
        self._writer = writer
        return writer

    def write(
        self, frame: av.VideoFrame, *, sequence: int, pts_us: int, capture_time_ns: int, stream_epoch: int
    ) -> FrameRef:
        """Write ``frame`` into the next slot and commit it; returns the FrameRef to publish."""
        src_size = (frame.width, frame.height)
        writer = self._writer
        if writer is None or writer.src_size != src_size:
            writer = self._configure(src_size)
        ring = self.ring
        assert ring is not None
        planes = yuv420_planes(frame)
        slot = ring.begin()
        try:
            writer.write(planes, slot)
        except BaseException:
            ring.abort()
            raise
        ref = ring.commit(
            sequence=sequence,
            pts_us=pts_us,
            capture_time_ns=capture_time_ns,
            stream_epoch=stream_epoch,
            scenario_id=self.scenario_id,
        )
        if writer.resized:
            ref.source_width, ref.source_height = src_size
        return ref

    def close(self) -> None:
        """Unlink the ring (readers keep their mappings). Idempotent."""
        ring, self.ring = self.ring, None
        self._writer = None
        if ring is not None:
            ring.close()
